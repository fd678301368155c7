"""Simulated nodes for bench/convergence.py, run in worker processes.

Two kinds of node, both speaking the real NodeSync protocol over real gRPC
streams (one channel with its own subchannel pool, so one HTTP/2 connection,
per node, like real nodes):

- ``lean``: an asyncio node (grpc.aio): Hello -> snapshot chunks / deltas ->
  parse each message -> check the delta's from_version -> Ack(version, nonce).
  It applies to nothing and keeps only its version, so hundreds fit in one
  process. Optionally sends a minimal StatsReport every few seconds, as real
  nodes do.
- ``agent``: the real node code path: ``socklb.dataplane.agent.Agent`` on a
  ``MemoryMapWriter`` (validation, merge, planning, the plan written to
  dictionaries; no BPF) driven by the real ``SyncClient`` (one thread per
  node, plus its stats thread), timed through its ``SyncHooks``.

The driver talks to a worker over a multiprocessing pipe with small tuples:

  ("connect", target, [names], opts)  -> ("connected", [NodeReport...])
      opts: {"limits": (services, backends)} for Agent nodes' map capacities;
            {"digest": True}: a lean node computes the digest of its snapshot;
            {"resume": (version, digest)}: a lean node says Hello as a node that
            holds that state (a reconnect, e.g. after a control-plane restart).
  ("wait", token, target, version[, names])
                                     -> ("acked", token, [ack times], [receive times])
                                        (names: only these nodes; default every node on target)
                                         (per node connected to `target`: its first ACK of a
                                         version >= `version`, and when it had received that update)
  ("disconnect",)                     -> ("disconnected", n)
  ("stop",)                           -> ("stopped",)
and, unprompted, ("error", node, text) when a stream fails or a node NACKs.

Times are time.monotonic() (CLOCK_MONOTONIC: one clock for every process of
the machine): "ack" right after the node handed its Ack to gRPC, "receive"
when gRPC handed the node the message (the last chunk of a snapshot).
"""
from __future__ import annotations

import asyncio
import collections
import os
import random
import threading
import time
from dataclasses import dataclass

import grpc

from socklb.v1 import node_pb2, sync_pb2

SYNC_METHOD = "/socklb.v1.NodeSync/Sync"


@dataclass
class NodeReport:
    node: str
    t_hello: float  # Hello handed to gRPC
    t_ack: float  # Ack of the first full snapshot handed to gRPC
    snapshot_bytes: int  # serialized size of all its chunks
    chunks: int
    services: int
    version: int
    parse_s: float  # time spent parsing the snapshot chunks
    nacked: str = ""  # the node refused the snapshot (Agent limits)
    digest: bytes = b""  # opts["digest"]: socklb.lb.digest of the snapshot's services


class _Wait:
    def __init__(self, token: int, target: str, version: int, expected: int, names: set[str] | None = None):
        self.names = names  # None: any node on target
        self.token = token
        self.target = target
        self.version = version
        self.expected = expected
        self.times: dict[str, tuple[float, float]] = {}  # node -> (ack, receive)


class Worker:
    """Owns the nodes of one process and answers the driver."""

    def __init__(self, conn, kind: str, stats_interval: float):
        self.conn = conn
        self.kind = kind
        self.stats_interval = stats_interval
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nodes: dict[str, object] = {}
        self.waits: list[_Wait] = []
        self._send_lock = threading.Lock()
        self._stopped: asyncio.Event | None = None

    # --- pipe ---------------------------------------------------------------
    def send(self, msg) -> None:
        with self._send_lock:
            self.conn.send(msg)

    def _reader(self) -> None:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                msg = ("stop",)
            self.loop.call_soon_threadsafe(self._dispatch, msg)
            if msg[0] == "stop":
                return

    def _dispatch(self, msg) -> None:
        asyncio.ensure_future(self._command(msg))

    async def _command(self, msg) -> None:
        op = msg[0]
        try:
            if op == "connect":
                reports = await self.connect(msg[1], msg[2], msg[3])
                self.send(("connected", reports))
            elif op == "wait":
                self.add_wait(msg[1], msg[2], msg[3], msg[4] if len(msg) > 4 else None)
            elif op == "disconnect":
                n = await self.disconnect()
                self.send(("disconnected", n))
            elif op == "stop":
                await self.disconnect()
                self.send(("stopped",))
                self._stopped.set()
        except Exception as e:  # report, never hang the driver
            self.send(("error", "", f"{op}: {type(e).__name__}: {e}"))

    async def main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        threading.Thread(target=self._reader, daemon=True).start()
        self.send(("ready", os.getpid()))
        await self._stopped.wait()

    # --- acks ---------------------------------------------------------------
    def on_ack(self, node: str, target: str, version: int, t: float, t_recv: float) -> None:
        for w in self.waits:
            if (w.target == target and node not in w.times and version >= w.version
                    and (w.names is None or node in w.names)):
                w.times[node] = (t, t_recv)
        self._finish_waits()

    def add_wait(self, token: int, target: str, version: int, names: set[str] | None = None) -> None:
        mine = {name: n for name, n in self.nodes.items() if n.target == target and (names is None or name in names)}
        w = _Wait(token, target, version, len(mine), names)
        for name, n in mine.items():
            ts = n.first_ack_at_least(version)
            if ts is not None:
                w.times[name] = ts
        self.waits.append(w)
        self._finish_waits()

    def _finish_waits(self) -> None:
        keep = []
        for w in self.waits:
            if len(w.times) >= w.expected:
                self.send(("acked", w.token, [t[0] for t in w.times.values()],
                           [t[1] for t in w.times.values()]))
            else:
                keep.append(w)
        self.waits = keep

    def error(self, node: str, text: str) -> None:
        self.send(("error", node, text))

    # --- nodes --------------------------------------------------------------
    async def connect(self, target: str, names: list[str], opts) -> list[NodeReport]:
        cls = LeanNode if self.kind == "lean" else AgentNode
        new = [cls(self, name, target) for name in names]
        for n in new:
            self.nodes[n.name] = n
        for n in new:
            n.start(opts or {})
        reports = await asyncio.gather(*(n.snapshot_done for n in new))
        return list(reports)

    async def disconnect(self) -> int:
        nodes, self.nodes = list(self.nodes.values()), {}
        self.waits = []
        await asyncio.gather(*(n.close() for n in nodes), return_exceptions=True)
        return len(nodes)


class _AckLog:
    def __init__(self):
        self.acks: collections.deque = collections.deque(maxlen=256)  # (version, t_ack, t_recv)

    def first_ack_at_least(self, version: int) -> tuple[float, float] | None:
        for v, t, t_recv in self.acks:
            if v >= version:
                return t, t_recv
        return None


class LeanNode(_AckLog):
    def __init__(self, worker: Worker, name: str, target: str):
        super().__init__()
        self.worker = worker
        self.name = name
        self.target = target
        self.version = 0
        self.snapshot_done: asyncio.Future = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task | None = None
        self.channel: grpc.aio.Channel | None = None
        self.closing = False
        # grpc.aio allows one write at a time per call: the Ack path and the
        # stats task take turns (SyncClient funnels both through one queue).
        self.write_lock = asyncio.Lock()

    async def write(self, call, data: bytes) -> None:
        async with self.write_lock:
            await call.write(data)

    def start(self, opts: dict) -> None:
        self.task = asyncio.ensure_future(self.run(opts))

    async def close(self) -> None:
        self.closing = True
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
        if self.channel is not None:
            await self.channel.close()

    async def run(self, opts: dict) -> None:
        from socklb.dataplane.sync_client import CLIENT_OPTIONS
        from socklb.lb.digest import entries_digest

        # A local subchannel pool: a connection of the node's own, as a node on
        # its own host has (channels of one process with the same target and
        # options otherwise share one connection, and SO_REUSEPORT spreads
        # connections, not streams, over --workers).
        self.channel = grpc.aio.insecure_channel(self.target,
                                                 options=[*CLIENT_OPTIONS, ("grpc.use_local_subchannel_pool", 1)])
        # Raw bytes both ways: the node parses (and times) what it receives.
        call = self.channel.stream_stream(SYNC_METHOD)()
        stats_task = None
        try:
            hello = sync_pb2.NodeMessage(hello=sync_pb2.Hello(node=self.name, kernel="bench-lean"))
            kept: dict | None = {} if opts.get("digest") else None
            if opts.get("resume"):
                self.version, hello.hello.state_digest = opts["resume"]
                hello.hello.applied_version = self.version
            await self.write(call, hello.SerializeToString())
            t_hello = time.monotonic()
            if self.worker.stats_interval > 0:
                stats_task = asyncio.ensure_future(self._stats(call))
            chunk_bytes = chunks = services = 0
            parse_s = 0.0
            while True:
                raw = await call.read()
                if raw is grpc.aio.EOF:
                    break
                t_recv = time.monotonic()
                t0 = time.perf_counter()
                msg = sync_pb2.ControlMessage.FromString(raw)
                kind = msg.WhichOneof("msg")
                if kind == "snapshot":
                    snap = msg.snapshot
                    chunk_bytes += len(raw)
                    chunks += 1
                    services += len(snap.services)
                    parse_s += time.perf_counter() - t0
                    if kept is not None:
                        kept.update((e.name, e) for e in snap.services)
                    if not snap.last:
                        continue
                    version = snap.version
                elif kind == "delta":
                    version = msg.delta.version
                    if msg.delta.from_version != self.version:
                        err = (f"from_version: delta applies to version {msg.delta.from_version}, "
                               f"the node is at {self.version}")
                        await self.write(call, sync_pb2.NodeMessage(nack=sync_pb2.Nack(
                            version=version, nonce=msg.nonce, error=err)).SerializeToString())
                        self.worker.error(self.name, "NACK " + err)
                        continue
                else:
                    continue
                await self.write(call, sync_pb2.NodeMessage(ack=sync_pb2.Ack(
                    version=version, nonce=msg.nonce)).SerializeToString())
                t = time.monotonic()
                self.version = version
                self.acks.append((version, t, t_recv))
                if not self.snapshot_done.done():
                    self.snapshot_done.set_result(NodeReport(
                        self.name, t_hello, t, chunk_bytes, chunks, services, version, parse_s,
                        digest=entries_digest(kept) if kept is not None else b""))
                    kept = None
                self.worker.on_ack(self.name, self.target, version, t, t_recv)
            if not self.closing:
                self.worker.error(self.name, "stream ended by the control plane")
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.RpcError as e:
            if not self.closing:
                self.worker.error(self.name, f"stream failed: {e.code().name} {e.details()}")
        finally:
            if stats_task is not None:
                stats_task.cancel()
            if not self.snapshot_done.done():
                self.snapshot_done.set_exception(RuntimeError(f"{self.name}: no snapshot"))

    async def _stats(self, call) -> None:
        """What SyncClient sends from in-memory maps: a timestamp, zero counters and "ok"."""
        await asyncio.sleep(random.uniform(0, self.worker.stats_interval))
        while True:
            rep = sync_pb2.StatsReport(health="ok", counters=node_pb2.Counters())
            rep.at.GetCurrentTime()
            await self.write(call, sync_pb2.NodeMessage(stats=rep).SerializeToString())
            await asyncio.sleep(self.worker.stats_interval)


class AgentNode(_AckLog):
    """The real dataplane code path (Agent on in-memory maps + SyncClient)."""

    def __init__(self, worker: Worker, name: str, target: str):
        super().__init__()
        self.worker = worker
        self.name = name
        self.target = target
        self.loop = asyncio.get_running_loop()
        self.snapshot_done: asyncio.Future = self.loop.create_future()
        self.client = None
        self.t_hello = 0.0
        self.snapshot_parse = 0.0

    def start(self, opts: dict) -> None:
        from socklb.dataplane.agent import Agent
        from socklb.dataplane.desired import Limits
        from socklb.dataplane.sync_client import SyncClient, SyncHooks
        from socklb.dataplane.writer import MemoryMapWriter

        limits = opts.get("limits")  # (services, backends) map capacities
        writer = MemoryMapWriter(Limits(services=limits[0], backends=limits[1]) if limits else Limits())
        agent = Agent(writer, self.name)

        def hello() -> None:
            self.t_hello = time.monotonic()

        def replied(reply: sync_pb2.NodeMessage, t_recv: float) -> None:
            self.loop.call_soon_threadsafe(self._on_reply, reply, time.monotonic(), t_recv)

        stats = self.worker.stats_interval if self.worker.stats_interval > 0 else 1e9
        self.client = SyncClient(agent, [self.target], stats_interval=stats, hooks=SyncHooks(hello, replied))
        self.client.start()

    def _on_reply(self, reply: sync_pb2.NodeMessage, t: float, t_recv: float) -> None:
        kind = reply.WhichOneof("msg")
        if kind == "nack":
            if not self.snapshot_done.done():
                self.snapshot_done.set_result(NodeReport(self.name, self.t_hello, t, 0, 0, 0,
                                                         reply.nack.version, 0.0, nacked=reply.nack.error))
            else:
                self.worker.error(self.name, f"NACK {reply.nack.version}: {reply.nack.error}")
            return
        version = reply.ack.version
        self.acks.append((version, t, t_recv))
        if not self.snapshot_done.done():
            applied = self.client.agent.applied
            self.snapshot_done.set_result(NodeReport(self.name, self.t_hello, t, 0, 0,
                                                     len(applied.services) if applied else 0, version, 0.0))
        self.worker.on_ack(self.name, self.target, version, t, t_recv)

    async def close(self) -> None:
        if self.client is not None:
            await asyncio.to_thread(self.client.stop)


def worker_main(conn, kind: str, stats_interval: float) -> None:
    """multiprocessing entry point (spawn)."""
    import logging
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver stops us
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("socklb.dataplane.agent").setLevel(logging.WARNING)
    logging.getLogger("socklb.dataplane.sync_client").setLevel(logging.ERROR)
    asyncio.run(Worker(conn, kind, stats_interval).main())
