"""The stream server: one NodeSync stream per node, fed by the snapshot cache.

Protocol (versions are store revisions):
  node -> Hello(node, applied_version, state_digest, capabilities)
  cp   -> nothing (digest matches and versions equal), an empty delta (digest
          matches, older version), or a snapshot in chunks
  cp   -> Delta(from_version = node's version, version = revision) per change
          that affects the node
  node -> Ack(version, nonce) / Nack(version, nonce, error)
A NACKed delta is followed by one snapshot; a NACKed snapshot leaves the node
on its last good state until the next change. Messages are serialized once
per update and shared by every node; the per-node part (nonce, from_version,
and when tracing the W3C context of that node's push span) is a few bytes
joined to the shared bytes (protobuf merges repeated occurrences of a message
field). Workloads and redirects are a node's own; a policy set is serialized
once per update and joined to the delta of every node that uses it.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from socklb.lb.digest import entries_digest
from socklb.observability import metrics, tracing
from socklb.v1 import node_pb2, sync_pb2

from .auth import check_node_name
from .cache import SnapshotCache, Update
from .nodes import NodeRegistry
from .policy_cache import PolicyChanges

log = logging.getLogger(__name__)
tally = metrics.sync  # counted per node per update: no lock, no label lookup

SNAPSHOT_CHUNK_BYTES = 1 << 20  # well under gRPC's default 4 MiB receive limit
MAX_OPEN_PUSHES = 64  # push spans of a node awaiting its answer; older ones end unanswered
# Per-node push spans of one traced update, at most: each costs the loop tens
# of microseconds and the exporter a span. Beyond it the other nodes' applies
# are children of the update's dispatch span (the trace stays whole).
PUSH_SPANS = 100


@dataclass
class NodeSession:
    node: str
    peer: str
    version: int  # what the node holds once it applied everything sent
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    pushes: dict = field(default_factory=dict)  # version -> push span awaiting the node's ACK/NACK
    diverged: bool = False  # last update refused: the next one is a snapshot
    snapshot_nonce: str = ""  # nonce of the last snapshot's last chunk: what the node answers it with
    # Versions sent and not yet acknowledged -> when they were sent (sync latency).
    in_flight: dict = field(default_factory=dict)
    capabilities: dict = field(default_factory=dict)  # as the node's Hello said


class SyncService:
    def __init__(self, cache: SnapshotCache, registry: NodeRegistry, replica: str, push_spans: int = PUSH_SPANS):
        self.cache = cache
        self.push_spans = push_spans
        self.registry = registry
        self.replica = replica
        self.sessions: dict[str, NodeSession] = {}
        self._nonce = itertools.count(1)
        self._ack_waiters: list = []
        self._snap_memo: tuple[int, bytes, list[bytes]] | None = None  # cache generation, digest, chunks

    # --- gRPC plumbing ------------------------------------------------------
    def handler(self) -> grpc.GenericRpcHandler:
        # Responses are pre-serialized bytes: no response_serializer.
        return grpc.method_handlers_generic_handler("socklb.v1.NodeSync", {
            "Sync": grpc.stream_stream_rpc_method_handler(
                self.sync, request_deserializer=sync_pb2.NodeMessage.FromString),
        })

    def nodes(self) -> list[str]:
        return list(self.sessions)

    def end_streams(self) -> None:
        """End every node stream normally (shutdown): the nodes reconnect,
        to another replica if there is one, instead of seeing the stream
        cancelled mid-write."""
        for session in list(self.sessions.values()):
            session.queue.put_nowait(None)

    def _next_nonce(self) -> str:
        return f"{self.replica}-{next(self._nonce)}"

    async def sync(self, requests: AsyncIterator[sync_pb2.NodeMessage], context) -> AsyncIterator[bytes]:
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("msg") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello: the first message must be a Hello")
        hello = first.hello
        if not hello.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello.node: must not be empty")
        denied = check_node_name(hello.node)
        if denied:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, denied)
        session = self._open(hello, context.peer())
        reader = asyncio.create_task(self._read(session, requests))
        # When the node's side ends, wake the writer loop below with None.
        reader.add_done_callback(lambda _: session.queue.put_nowait(None))
        try:
            while True:
                msg = await session.queue.get()
                if msg is None:  # the node hung up, or a newer stream replaced this one
                    break
                yield msg
        finally:
            reader.cancel()
            self._close(session)

    # --- sessions -----------------------------------------------------------
    def _open(self, hello: sync_pb2.Hello, peer: str) -> NodeSession:
        old = self.sessions.get(hello.node)
        if old is not None:
            log.info("node %s reconnected from %s; closing its older stream", hello.node, peer)
            old.queue.put_nowait(None)
        session = NodeSession(hello.node, peer, hello.applied_version, capabilities=dict(hello.capabilities))
        self.sessions[hello.node] = session
        self.registry.connected(hello, peer, desired=self.cache.revision)
        digest, _ = self._snapshot(hello.node)
        if hello.state_digest and hello.state_digest == digest:
            if hello.applied_version != self.cache.revision:
                # Same content, older label: an empty delta moves the version.
                self._send_delta(session, self.cache.revision, b"", [], [])
            log.info("node %s resumed at version %d without a snapshot", hello.node, hello.applied_version)
        else:
            self._send_snapshot(session)
        return session

    def _close(self, session: NodeSession) -> None:
        for span in session.pushes.values():
            span.set_status(Status(StatusCode.ERROR, "the stream closed before the node answered"))
            span.end()
        session.pushes.clear()
        if self.sessions.get(session.node) is session:
            del self.sessions[session.node]
            self.registry.disconnected(session.node)

    async def _read(self, session: NodeSession, requests) -> None:
        async for msg in requests:
            kind = msg.WhichOneof("msg")
            if session.pushes and kind in ("ack", "nack"):
                self._answered(session, kind, getattr(msg, kind))
            if kind == "ack":
                version = msg.ack.version
                self.registry.acked(session.node, version)
                tally.acks += 1
                in_flight = session.in_flight
                if in_flight:
                    now = time.monotonic()
                    for v in [v for v in in_flight if v <= version]:
                        tally.observe_latency(now - in_flight.pop(v))
                if self._ack_waiters:
                    self._notify_acks()
            elif kind == "nack":
                tally.nacks += 1
                session.in_flight.pop(msg.nack.version, None)
                log.warning("node %s refused version %d: %s", session.node, msg.nack.version, msg.nack.error)
                self.registry.nacked(session.node, msg.nack.version, msg.nack.error)
                if msg.nack.nonce and msg.nack.nonce == session.snapshot_nonce:
                    # A refused snapshot: the node applied what it could take of it (or kept its
                    # last good state). The same snapshot again would be refused again, for ever:
                    # the next change goes as a snapshot instead.
                    session.diverged = True
                elif not session.diverged:
                    session.diverged = True
                    self._send_snapshot(session)
                self._notify_acks()
            elif kind == "stats":
                self.registry.stats(session.node, msg.stats)
            elif kind == "termination":
                report = msg.termination
                report.node = session.node  # a node reports for itself only
                self.registry.termination(report)
                metrics.termination_reports.labels(report.trigger).inc()
                metrics.terminated_sockets_cp.labels(report.trigger).inc(report.destroyed)
            elif kind == "hello":
                log.warning("node %s sent a second Hello; ignored", session.node)

    # --- tracing --------------------------------------------------------------
    def _push_span(self, session: NodeSession, version: int, kind: str) -> bytes:
        """A "push" span for one node's copy of an update, ended by the node's
        answer; returns the trace context bytes that make its apply a child."""
        span = tracing.TRACER.start_span("push", kind=SpanKind.PRODUCER, attributes={
            "socklb.node": session.node, "socklb.version": version, "socklb.update": kind})
        old = session.pushes.pop(version, None)
        if old is not None:
            old.end()
        session.pushes[version] = span
        while len(session.pushes) > MAX_OPEN_PUSHES:
            oldest = session.pushes.pop(next(iter(session.pushes)))
            oldest.set_status(Status(StatusCode.ERROR, "no answer from the node"))
            oldest.end()
        return _trace_bytes(tracing.inject(trace.set_span_in_context(span)))

    def _answered(self, session: NodeSession, kind: str, answer) -> None:
        """End the push spans a node's ACK/NACK answers (all versions up to its own)."""
        for version in [v for v in session.pushes if v <= answer.version]:
            span = session.pushes.pop(version)
            span.set_attribute("socklb.answer", kind)
            if kind == "nack" and version == answer.version:
                span.set_status(Status(StatusCode.ERROR, f"refused: {answer.error}"))
            span.end()

    # --- sending ------------------------------------------------------------
    def _snapshot(self, node: str) -> tuple[bytes, list[bytes]]:
        """Digest and serialized chunks (without nonce) of a node's state at the
        cache's revision. While no service is node-specific (traffic policy
        LOCAL) every node without workloads has the same state: built once per
        change, not once per node, so a thousand nodes reconnecting cost one
        build."""
        rev, generation = self.cache.revision, self.cache.generation
        shared = not self.cache.node_specific(node)
        if shared and self._snap_memo is not None and self._snap_memo[0] == generation:
            return self._snap_memo[1], self._snap_memo[2]
        entries, policy = self.cache.entries_for(node), self.cache.policy_for(node)
        # Chunks of at most SNAPSHOT_CHUNK_BYTES (or one entry, if larger),
        # services first, then workloads, policy sets and redirects.
        chunks = [sync_pb2.SnapshotChunk(version=rev)]
        size = 0
        for kind, table in (("services", entries), ("workloads", policy.workloads),
                            ("policy_sets", policy.policy_sets), ("redirects", policy.redirects)):
            for name in sorted(table):
                e = table[name]
                n = e.ByteSize()
                if size and size + n > SNAPSHOT_CHUNK_BYTES:
                    chunks.append(sync_pb2.SnapshotChunk(version=rev))
                    size = 0
                getattr(chunks[-1], kind).append(e)
                size += n
        chunks[-1].last = True
        data = [sync_pb2.ControlMessage(snapshot=chunk).SerializeToString() for chunk in chunks]
        digest = entries_digest(entries, policy.workloads, policy.policy_sets, policy.redirects)
        if shared:
            self._snap_memo = (generation, digest, data)
        return digest, data

    def _send_snapshot(self, session: NodeSession, trace: bytes = b"") -> None:
        version = self.cache.revision
        _, chunks = self._snapshot(session.node)
        for chunk in chunks:
            # The nonce is merged into the shared bytes (a later field wins).
            session.snapshot_nonce = self._next_nonce()
            own = sync_pb2.ControlMessage(nonce=session.snapshot_nonce).SerializeToString()
            session.queue.put_nowait(trace + chunk + own)
        session.version = version
        session.diverged = False
        session.in_flight[version] = time.monotonic()
        tally.updates["snapshot"] += 1
        self.registry.desired(session.node, version)

    def _send_delta(self, session: NodeSession, version: int, shared: bytes,
                    upserts: list[node_pb2.ServiceState], removals: list[str],
                    policy: PolicyChanges | None = None, versions: dict[int, bytes] | None = None) -> None:
        """`shared`: serialized parts of the delta shared with other nodes
        (services, policy sets); the rest is this node's own. `versions`
        memoizes, over one update, the (from_version, version) part by
        from_version: every node that was at the same version shares it, so
        a node with nothing of its own costs a nonce and a join."""
        head = versions.get(session.version) if versions is not None else None
        if head is None:
            head = sync_pb2.ControlMessage(delta=node_pb2.NodeStateDelta(
                from_version=session.version, version=version)).SerializeToString()
            if versions is not None:
                versions[session.version] = head
        own = b""
        if upserts or removals or policy is not None:
            msg = sync_pb2.ControlMessage(delta=node_pb2.NodeStateDelta(upserts=upserts, removals=removals))
            if policy is not None:
                d = msg.delta
                d.workload_upserts.extend(policy.workload_upserts)
                d.workload_removals.extend(policy.workload_removals)
                d.policy_set_removals.extend(policy.policy_set_removals)
                d.redirect_upserts.extend(policy.redirect_upserts)
                d.redirect_removals.extend(policy.redirect_removals)
            own = msg.SerializeToString()
        session.queue.put_nowait(b"".join((shared, head, own, _nonce_bytes(self._next_nonce()))))
        session.version = version
        session.in_flight[version] = time.monotonic()
        tally.updates["delta"] += 1
        self.registry.desired(session.node, version)

    def publish(self, update: Update, trace_context: dict[str, str] | None = None) -> int:
        """Send an update to the nodes it affects; returns how many.

        Trace context: when the current span records, the copies of the
        first `push_spans` nodes (in connection order: the same nodes every
        update) get a "push" span of their own (child of the current span),
        the others the current context; otherwise every node gets
        `trace_context`, default the current context (nothing when tracing
        is off)."""
        if update.empty():
            return 0
        current = trace.get_current_span()
        spans_left = self.push_spans if trace_context is None and current.is_recording() else 0
        if spans_left and len(self.sessions) > spans_left:
            current.set_attribute("socklb.push_spans", spans_left)  # sampled: the rest are the dispatch's
        shared_trace = _trace_bytes(trace_context if trace_context is not None else tracing.inject())
        body = b""
        if update.shared_upserts or update.removals:
            body = sync_pb2.ControlMessage(delta=node_pb2.NodeStateDelta(
                upserts=update.shared_upserts, removals=update.removals)).SerializeToString()
        # A policy set goes to every node using it: serialized once.
        set_bytes: dict[str, bytes] = {}
        versions: dict[int, bytes] = {}
        sent = 0
        for node, session in list(self.sessions.items()):
            own = update.per_node.get(node, [])
            policy = update.policy.get(node)
            if not own and policy is None and not body:
                continue
            trace_bytes = shared_trace
            if spans_left:
                spans_left -= 1
                trace_bytes = self._push_span(session, update.revision, "snapshot" if session.diverged else "delta")
            if session.diverged:
                self._send_snapshot(session, trace_bytes)
            else:
                sets = b"".join(_set_bytes(set_bytes, ps) for ps in policy.policy_set_upserts) if policy else b""
                self._send_delta(session, update.revision, trace_bytes + body + sets, own, [], policy, versions)
            sent += 1
        return sent

    def send_command(self, cmd: sync_pb2.TerminateCommand, nodes: list[str] | None = None) -> list[str]:
        """Send a command to connected nodes (all, or those named); returns who got it."""
        sent = []
        trace_bytes = _trace_bytes(tracing.inject())
        for node, session in list(self.sessions.items()):
            if nodes is not None and node not in nodes:
                continue
            msg = sync_pb2.ControlMessage(nonce=self._next_nonce(), terminate=cmd)
            session.queue.put_nowait(trace_bytes + msg.SerializeToString())
            sent.append(node)
        return sent

    def resync_all(self) -> None:
        """After the cache was reloaded (e.g. the store watch was compacted)."""
        for node, session in list(self.sessions.items()):
            self._send_snapshot(session)

    # --- waiting for acks (benchmarks, tests) --------------------------------
    async def wait_acked(self, version: int, nodes: list[str] | None = None) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._ack_waiters.append((version, fut, nodes))
        self._notify_acks()
        await fut

    def _notify_acks(self) -> None:
        keep = []
        for version, fut, nodes in self._ack_waiters:
            names = nodes if nodes is not None else list(self.sessions)
            if fut.done():
                continue
            if all(self.registry.applied_version(n) >= version for n in names):
                fut.set_result(None)
            else:
                keep.append((version, fut, nodes))
        self._ack_waiters = keep


def _set_bytes(memo: dict[str, bytes], entry: node_pb2.PolicySetState) -> bytes:
    """A ControlMessage holding only one policy set upsert, to join to a delta's bytes."""
    data = memo.get(entry.name)
    if data is None:
        data = memo[entry.name] = sync_pb2.ControlMessage(delta=node_pb2.NodeStateDelta(
            policy_set_upserts=[entry])).SerializeToString()
    return data


def _trace_bytes(carrier: dict[str, str]) -> bytes:
    """A ControlMessage holding only trace_context, to join to a message's bytes."""
    return sync_pb2.ControlMessage(trace_context=carrier).SerializeToString() if carrier else b""


_NONCE_TAG = bytes([(1 << 3) | 2])  # ControlMessage.nonce: field 1, length-delimited


def _nonce_bytes(nonce: str) -> bytes:
    """ControlMessage(nonce=nonce).SerializeToString(), without building a
    message: one of these goes to every node with every update."""
    data = nonce.encode()
    if not data:
        return b""  # proto3 leaves an empty string out
    n, length = len(data), bytearray()
    while n > 0x7F:
        length.append((n & 0x7F) | 0x80)
        n >>= 7
    length.append(n)
    return _NONCE_TAG + bytes(length) + data
