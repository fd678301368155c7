"""The node's side of the NodeSync stream: Hello, apply what comes, Ack or
Nack, report statistics; reconnect with backoff to any replica. While no
control plane is reachable the node keeps its last state (the BPF maps do
not depend on this process at all)."""
from __future__ import annotations

import logging
import platform
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from socklb.grpcauth import token_metadata
from socklb.lb.digest import state_digest
from socklb.lb.errors import InvalidState
from socklb.observability import tracing
from socklb.v1 import node_pb2, sync_pb2, sync_pb2_grpc

from .agent import Agent, StateUnknown
from .stats import StatsReporter

log = logging.getLogger(__name__)

# Must match the server's permitted ping interval (controlplane/server.py).
CLIENT_OPTIONS = [
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5000),
]


# A node that answers previews (TerminateCommand.preview) says so in its
# Hello: the control plane answers for one that does not (an older agent).
PREVIEW_CAPABILITY = "policy_preview"


@dataclass(frozen=True)
class SyncHooks:
    """Where a measurement (bench/convergence_nodes.py) observes the stream,
    called on the session's thread: `hello()` as the Hello is built, right
    before it goes to gRPC; `replied(reply, received)` after a control
    message was handled, right before its reply (Ack / Nack) goes to gRPC,
    with the time.monotonic() at which the message had arrived."""

    hello: Callable[[], None] = lambda: None
    replied: Callable[[sync_pb2.NodeMessage, float], None] = lambda reply, received: None


NO_HOOKS = SyncHooks()


class SyncClient:
    def __init__(self, agent: Agent, servers: list[str], stats_interval: float = 5.0,
                 capabilities: dict[str, str] | None = None, max_backoff: float = 5.0,
                 connect_timeout: float = 3.0, credentials: grpc.ChannelCredentials | None = None,
                 token: str = "", hooks: SyncHooks = NO_HOOKS):
        if not servers:
            raise ValueError("at least one control-plane address is needed")
        self.agent = agent
        self.servers = servers
        self.stats_interval = stats_interval
        self.capabilities = capabilities or {}
        self.max_backoff = max_backoff
        self.connect_timeout = connect_timeout
        self.credentials = credentials
        self.metadata = token_metadata(token)
        self.hooks = hooks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self.connected_to: str | None = None
        # Termination reports wait here while no stream is up.
        self._pending = deque(maxlen=256)
        self._out: queue.Queue | None = None
        self._out_lock = threading.Lock()
        self.reporter = StatsReporter(agent.stats_parts())
        agent.terminations.listen(self._report)

    def _report(self, report: node_pb2.TerminationReport) -> None:
        msg = sync_pb2.NodeMessage(termination=report)
        with self._out_lock:
            if self._out is not None:
                self._out.put(msg)
            else:
                self._pending.append(msg)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sync-client", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._channel is not None:
            self._channel.close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.1
        i = random.randrange(len(self.servers))
        while not self._stop.is_set():
            target = self.servers[i % len(self.servers)]
            i += 1
            started = time.monotonic()
            try:
                self._session(target)
            except grpc.RpcError as e:
                if self._stop.is_set():
                    return
                log.warning("control plane %s: %s %s", target, e.code().name, e.details())
                if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    backoff = self.max_backoff  # retrying fast will not fix credentials
            except Exception:  # keep the node agent alive whatever the stream did
                log.exception("sync session with %s failed", target)
            finally:
                self.connected_to = None
            if time.monotonic() - started > 10:
                backoff = 0.1  # the session was healthy for a while: reconnect fast
            self._stop.wait(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, self.max_backoff)

    def _hello(self) -> sync_pb2.NodeMessage:
        self.hooks.hello()
        state = self.agent.state() if self.agent.applied is not None else None
        hello = sync_pb2.Hello(
            node=self.agent.node, applied_version=self.agent.applied_version,
            state_digest=state_digest(state) if state is not None else b"",
            kernel=platform.release())
        hello.capabilities.update(self.capabilities)
        hello.capabilities.update(self.agent.capabilities())
        hello.capabilities[PREVIEW_CAPABILITY] = "yes"  # this client answers TerminateCommand.preview
        return sync_pb2.NodeMessage(hello=hello)

    def _session(self, target: str) -> None:
        out: queue.Queue = queue.Queue()
        done = threading.Event()

        def requests():
            yield self._hello()
            while not done.is_set():
                try:
                    msg = out.get(timeout=0.5)
                except queue.Empty:
                    continue
                if msg is None:
                    return
                yield msg

        def report_stats():
            while not done.wait(self.stats_interval):
                try:
                    out.put(sync_pb2.NodeMessage(stats=self.stats_report()))
                except Exception:  # the reporter catches each part's failure: this is a bug
                    log.exception("building the statistics report failed")

        self._channel = (grpc.secure_channel(target, self.credentials, options=CLIENT_OPTIONS)
                         if self.credentials is not None else grpc.insecure_channel(target, options=CLIENT_OPTIONS))
        stats_thread = threading.Thread(target=report_stats, name="stats", daemon=True)
        try:
            ready = grpc.channel_ready_future(self._channel)
            try:
                ready.result(timeout=self.connect_timeout)
            except grpc.FutureTimeoutError:
                log.warning("control plane %s: not reachable within %.0fs", target, self.connect_timeout)
                return
            finally:
                ready.cancel()  # else it keeps polling the channel we close below
            stub = sync_pb2_grpc.NodeSyncStub(self._channel)
            responses = stub.Sync(requests(), metadata=self.metadata)
            with self._out_lock:
                self._out = out
                while self._pending:
                    out.put(self._pending.popleft())
            self.connected_to = target
            stats_thread.start()
            log.info("connected to control plane %s", target)
            chunks: list[sync_pb2.SnapshotChunk] = []  # a snapshot's chunks so far
            for msg in responses:
                received = time.monotonic()
                reply = self._handle(msg, chunks)
                if reply is not None:
                    self.hooks.replied(reply, received)
                    out.put(reply)
        finally:
            with self._out_lock:
                self._out = None
            done.set()
            out.put(None)
            self._channel.close()
            self._channel = None

    def _handle(self, msg: sync_pb2.ControlMessage, chunks: list) -> sync_pb2.NodeMessage | None:
        """Handle one message; an update is applied in an "apply" span, child
        of the control plane's push span whose W3C context the message carries."""
        kind = msg.WhichOneof("msg")
        if kind == "terminate":  # the termination job's span becomes the CP span's child
            with tracing.attached(tracing.extract(msg.trace_context)):
                return self._apply(msg, chunks)
        if kind not in ("snapshot", "delta") or (kind == "snapshot" and not msg.snapshot.last):
            return self._apply(msg, chunks)
        version = msg.snapshot.version if kind == "snapshot" else msg.delta.version
        with tracing.TRACER.start_as_current_span(
                "apply", context=tracing.extract(msg.trace_context), kind=SpanKind.CONSUMER,
                attributes={"socklb.node": self.agent.node, "socklb.version": version, "socklb.update": kind}) as span:
            reply = self._apply(msg, chunks)
            if reply is not None and reply.HasField("nack"):
                span.set_status(Status(StatusCode.ERROR, reply.nack.error))
            return reply

    def _apply(self, msg: sync_pb2.ControlMessage, chunks: list) -> sync_pb2.NodeMessage | None:
        kind = msg.WhichOneof("msg")
        try:
            if kind == "snapshot":
                chunks.append(msg.snapshot)
                if not msg.snapshot.last:
                    return None
                state = snapshot_state(chunks)
                chunks.clear()
                version = msg.snapshot.version
                result = self.agent.apply(state, isolate=True)
                _annotate(result)
                if result.rejected:  # applied without them: the control plane must still see the node behind
                    why = "; ".join(result.rejected.values())
                    return sync_pb2.NodeMessage(nack=sync_pb2.Nack(
                        version=version, nonce=msg.nonce,
                        error=f"applied without {len(result.rejected)} service(s) it cannot take: {why}"))
            elif kind == "delta":
                version = msg.delta.version
                _annotate(self.agent.apply_delta(msg.delta))
            elif kind == "terminate":
                cmd = msg.terminate  # its report goes out through the terminations' listener
                if cmd.HasField("preview"):  # a preview of a policy or redirect write: a dry run, always answered
                    self.agent.preview(cmd.id, cmd.preview)
                else:
                    self.agent.terminate(cmd.service, cmd.backends, cmd.dry_run, cmd.id, wait=False)
                return None
            else:
                return None
        except (InvalidState, StateUnknown, OSError) as e:
            log.error("refusing version %d: %s", version, e)
            return sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=version, nonce=msg.nonce, error=str(e)))
        except Exception as e:  # a bug must cost one NACK, not the session: the node keeps taking changes
            log.exception("refusing version %d: unexpected error", version)
            return sync_pb2.NodeMessage(nack=sync_pb2.Nack(version=version, nonce=msg.nonce,
                                                           error=f"internal error: {e!r}"))
        return sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=version, nonce=msg.nonce))

    def stats_report(self) -> sync_pb2.StatsReport:
        return self.reporter.report()


def snapshot_state(chunks: list[sync_pb2.SnapshotChunk]) -> node_pb2.NodeState:
    """The state a snapshot's chunks make, at the version of its last one."""
    state = node_pb2.NodeState(version=chunks[-1].version)
    for chunk in chunks:
        state.services.extend(chunk.services)
        state.workloads.extend(chunk.workloads)
        state.policy_sets.extend(chunk.policy_sets)
        state.redirects.extend(chunk.redirects)
    return state


def _annotate(result) -> None:
    """What an apply changed, on the current (apply) span."""
    span = trace.get_current_span()
    if result is not None and span.is_recording():
        span.set_attributes({"socklb.frontends_written": result.frontends_written,
                             "socklb.frontends_removed": result.frontends_removed,
                             "socklb.backends_written": result.backends_written,
                             "socklb.backends_removed": result.backends_removed})
