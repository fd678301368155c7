"""Node status and statistics: kept in memory by the replica a node is
connected to, written to the store in coalesced batches so that every
replica (and the leader) sees every node. A node's record is written when
its state changes; the versions its ACKs move are written as one record per
replica (NodeRegistry)."""
from __future__ import annotations

import asyncio
import logging
import time

from google.protobuf import timestamp_pb2

from socklb.v1 import api_pb2, node_pb2, sync_pb2

from . import keys
from .store import Compare, Store, StoreError

log = logging.getLogger(__name__)


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def health_of(node: api_pb2.Node, connected: bool) -> int:
    if not connected:
        return api_pb2.NODE_HEALTH_DISCONNECTED
    if node.last_error or node.applied_version < node.desired_version:
        return api_pb2.NODE_HEALTH_DEGRADED
    return api_pb2.NODE_HEALTH_READY


class NodeRegistry:
    """Per-node events cost O(1) and touch no clock or store. Two kinds of
    record are written, in coalesced batches:

    - a node's record (keys.node) when its state changes in kind: it came or
      went, a NACK or its clearing, statistics parts unavailable; within
      `flush_interval`, with the versions and time of the write;
    - this replica's versions record (keys.node_versions): the applied and
      desired versions of every node connected here, one value, within
      `progress_interval` of a version moving and every `heartbeat`
      otherwise. Its time is when the replica last vouched for those nodes
      being connected (their last_seen).

    An update ACKed by a thousand nodes costs one put, not a thousand. Reads
    (`list`, the leader's `mark_gone`) merge the two: the newer one's
    versions win. Nothing is dropped: the last state is written by the next
    flush, and everything (the versions record removed once no node is
    connected here) by flush_now() on shutdown."""

    def __init__(self, store: Store, replica: str, flush_interval: float = 0.2, heartbeat: float = 10.0,
                 progress_interval: float = 1.0):
        self.store = store
        self.replica = replica
        self.flush_interval = flush_interval
        self.progress_interval = progress_interval
        # The versions record is rewritten at least this often, so that a
        # replica that dies (and cannot write "disconnected") is noticed:
        # nodes not vouched for within `stale_after` read as DISCONNECTED.
        self.heartbeat = heartbeat
        self.stale_after = 3 * heartbeat
        self.records: dict[str, api_pb2.Node] = {}
        self.connected_nodes: set[str] = set()
        self.reports: dict[str, sync_pb2.StatsReport] = {}
        self._applied: dict[str, int] = {}
        self._desired: dict[str, int] = {}
        self._moved = False  # a version moved since the versions record was last written
        self._errored: set[str] = set()  # nodes whose record holds a NACK: an ACK clears it
        # The versions record's replica and node names, serialized: rebuilt
        # when a node comes or goes, not every time the versions move.
        self._names: tuple[list[str], bytes] | None = None
        self._versions_written = False  # the store holds a versions record of ours
        self._versions_at = 0.0  # monotonic time of its last write
        self._dirty: set[str] = set()  # records to write within flush_interval
        self._dirty_stats: set[str] = set()
        self._reports: list[node_pb2.TerminationReport] = []
        self._gone: set[str] = set()  # disconnected here, to be written if still ours
        self._wake = asyncio.Event()

    # --- events from streams (event loop thread) --------------------------
    def connected(self, hello: sync_pb2.Hello, peer: str, desired: int) -> None:
        n = api_pb2.Node(name=hello.node, kernel=hello.kernel, replica=self.replica)
        n.capabilities.update(hello.capabilities)
        self.records[hello.node] = n
        self._applied[hello.node] = hello.applied_version
        self._desired[hello.node] = desired
        self._moved = True
        self.connected_nodes.add(hello.node)
        self._names = None
        self._errored.discard(hello.node)
        self._gone.discard(hello.node)
        self._touch(hello.node)

    def disconnected(self, node: str) -> None:
        self.connected_nodes.discard(node)
        self._names = None
        if node in self.records:
            self._gone.add(node)
            self._moved = True  # the versions record leaves it out
            self._touch(node)

    def desired(self, node: str, version: int) -> None:
        self._desired[node] = version
        self._moved = True

    def acked(self, node: str, version: int) -> None:
        if version > self._applied.get(node, 0):
            self._applied[node] = version
            self._moved = True
        if node in self._errored:
            self._errored.discard(node)
            self.records[node].last_error = ""
            self._touch(node)

    def nacked(self, node: str, version: int, error: str) -> None:
        n = self.records.get(node)
        if n is not None:
            n.last_error = f"version {version}: {error}"
            self._errored.add(node)
            self._touch(node)

    def stats(self, node: str, report: sync_pb2.StatsReport) -> None:
        self.reports[node] = report
        self._dirty_stats.add(node)
        n = self.records.get(node)
        # Most reports have no unavailable parts: two lengths, not two dicts, per report.
        if n is not None and (len(report.unavailable) or len(n.stats_unavailable)) \
                and dict(n.stats_unavailable) != dict(report.unavailable):
            # Shown by `node list`: the record is rewritten only when the parts change.
            n.stats_unavailable.clear()
            n.stats_unavailable.update(report.unavailable)
            self._dirty.add(node)
        self._wake.set()

    def termination(self, report: node_pb2.TerminationReport) -> None:
        self._reports.append(report)
        self._wake.set()

    def applied_version(self, node: str) -> int:
        return self._applied.get(node, 0)

    def _touch(self, node: str) -> None:
        """A change to write soon (flush_interval)."""
        self._dirty.add(node)
        self._wake.set()

    # --- persistence ---------------------------------------------------------
    async def run(self) -> None:
        versions = asyncio.create_task(self._versions_loop())
        try:
            await self._flush_loop()
        finally:
            versions.cancel()

    async def _versions_loop(self) -> None:
        while True:
            await asyncio.sleep(self.progress_interval)
            if self._moved or time.monotonic() - self._versions_at >= self.heartbeat:
                try:
                    await self.write_versions()
                except StoreError as e:
                    log.warning("could not write node versions (will retry): %s", e)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush_now(everything=False)
            except StoreError as e:
                log.warning("could not write node status (will retry): %s", e)
                await asyncio.sleep(1.0)
                self._wake.set()
            await asyncio.sleep(self.flush_interval)

    async def flush_now(self, everything: bool = True) -> None:
        """Write the node records that changed (on shutdown, `everything`:
        the versions record too). A batch that fails is put back, to be
        written by the next flush."""
        taken = self._take()
        if any(taken):
            try:
                await asyncio.to_thread(self.flush_batch, *taken)
            except StoreError:
                self._put_back(*taken)
                raise
        if everything:
            await self.write_versions()

    async def write_versions(self) -> None:
        """This replica's versions record, as of now (removed when no node is
        connected here: the disconnected ones' records hold their last versions)."""
        self._moved = False
        self._versions_at = time.monotonic()
        if not self.connected_nodes:
            if self._versions_written:
                await asyncio.to_thread(self.store.txn, [], [], [keys.node_versions(self.replica)])
                self._versions_written = False
            return
        value = self._versions_record()
        try:
            await asyncio.to_thread(self.store.txn, [], [(keys.node_versions(self.replica), value)])
        except StoreError:
            self._moved = True
            raise
        self._versions_written = True

    def _versions_record(self) -> bytes:
        """A serialized NodeVersions: the names part (kept while no node comes
        or goes) joined to the versions and time (protobuf merges the two)."""
        if self._names is None:
            names = list(self.connected_nodes)
            self._names = names, api_pb2.NodeVersions(replica=self.replica, nodes=names).SerializeToString()
        names, head = self._names
        applied, desired = self._applied, self._desired
        rec = api_pb2.NodeVersions(applied_versions=[applied.get(n, 0) for n in names],
                                   desired_versions=[desired.get(n, 0) for n in names])
        rec.written.GetCurrentTime()
        return head + rec.SerializeToString()

    def _put_back(self, live, down, puts) -> None:
        self._dirty |= {n for n in live if n in self.records} | {n for n in down if n in self.records}
        self._gone |= {n for n in down if n not in self.connected_nodes}

    def _take(self):
        dirty, self._dirty = self._dirty, set()
        stats, self._dirty_stats = self._dirty_stats, set()
        gone = dirty & self._gone
        self._gone -= gone
        now = _now() if dirty else None
        for name in dirty:
            n = self.records.get(name)
            if n is None:
                continue
            n.last_seen.CopyFrom(now)
            n.applied_version = self._applied.get(name, 0)
            n.desired_version = self._desired.get(name, 0)
            n.health = health_of(n, name in self.connected_nodes)
        live = {n: self.records[n].SerializeToString() for n in dirty - gone if n in self.records}
        down = {n: self.records[n] for n in gone if n in self.records}
        puts = [(keys.stats(n), self.reports[n].SerializeToString()) for n in stats if n in self.reports]
        terminations, self._reports = self._reports, []
        puts += [(keys.termination_report(t.id, t.node), t.SerializeToString()) for t in terminations]
        return live, down, puts

    def flush_batch(self, live: dict[str, bytes], down: dict[str, api_pb2.Node],
                    other: list[tuple[str, bytes]]) -> None:
        """Node records, plus other puts (statistics, termination reports)."""
        puts = [(keys.node(n), v) for n, v in live.items()] + other
        for batch in _batches(puts):
            self.store.txn([], batch)
        for name, record in down.items():
            # Only if no other replica took the node over in the meantime.
            kv = self.store.get(keys.node(name))
            if kv is not None and api_pb2.Node.FromString(kv.value).replica != self.replica:
                continue
            self.store.txn([Compare(keys.node(name), kv.mod_revision if kv else 0)],
                           [(keys.node(name), record.SerializeToString())])

    # --- reads (any replica) ---------------------------------------------------
    def list(self, now: float | None = None) -> list[api_pb2.Node]:
        out = [n for _, n in read_nodes(self.store)]
        for n in out:
            if is_stale(n, self.stale_after, now):
                n.health = api_pb2.NODE_HEALTH_DISCONNECTED
        return out

    def list_stats(self) -> dict[str, sync_pb2.StatsReport]:
        kvs, _ = self.store.range(keys.STATS)
        return {kv.key[len(keys.STATS):]: sync_pb2.StatsReport.FromString(kv.value) for kv in kvs}


def read_versions(store: Store) -> list[tuple]:
    """Every replica's versions record: [(kv, NodeVersions)]."""
    kvs, _ = store.range(keys.NODE_VERSIONS)
    return [(kv, api_pb2.NodeVersions.FromString(kv.value)) for kv in kvs]


def merge_versions(nodes: list[api_pb2.Node], versions: list[api_pb2.NodeVersions]) -> None:
    """A node's record takes the versions (and last_seen) of its replica's
    versions record when that is newer and lists it (the replica vouched
    for the node being connected then); its health follows."""
    by_replica = {v.replica: v for v in versions}
    index: dict[str, dict[str, int]] = {}
    for n in nodes:
        rec = by_replica.get(n.replica)
        if rec is None or _ns(rec.written) <= _ns(n.last_seen):
            continue
        at = index.get(rec.replica)
        if at is None:
            at = index[rec.replica] = {name: i for i, name in enumerate(rec.nodes)}
        i = at.get(n.name)
        if i is None:
            continue
        n.applied_version = rec.applied_versions[i]
        n.desired_version = rec.desired_versions[i]
        n.last_seen.CopyFrom(rec.written)
        # Listed by its replica after the record was written: connected, even
        # if the leader marked it DISCONNECTED while that replica was paused.
        n.health = health_of(n, True)


def read_nodes(store: Store) -> list[tuple]:
    """Every node's record merged with its replica's versions: [(kv, Node)]."""
    kvs, _ = store.range(keys.NODES)
    out = [(kv, api_pb2.Node.FromString(kv.value)) for kv in kvs]
    merge_versions([n for _, n in out], [v for _, v in read_versions(store)])
    return out


def _ns(ts: timestamp_pb2.Timestamp) -> int:
    return ts.seconds * 1_000_000_000 + ts.nanos


# etcd refuses a txn of more than 128 operations or ~1.5 MiB.
_TXN_OPS = 100
_TXN_BYTES = 1 << 20


def _batches(puts):
    batch, size = [], 0
    for k, v in puts:
        if batch and (len(batch) >= _TXN_OPS or size + len(v) > _TXN_BYTES):
            yield batch
            batch, size = [], 0
        batch.append((k, v))
        size += len(k) + len(v)
    if batch:
        yield batch


def is_stale(n: api_pb2.Node, stale_after: float, now: float | None = None) -> bool:
    """A connected-looking record its replica stopped refreshing (it died)."""
    now = now if now is not None else time.time()
    return (n.health in (api_pb2.NODE_HEALTH_READY, api_pb2.NODE_HEALTH_DEGRADED)
            and now - n.last_seen.ToSeconds() > stale_after)


def mark_gone(store: Store, fence: Compare, timeout: float, stale_after: float,
              now: float | None = None, connected_here: frozenset[str] = frozenset()) -> list[str]:
    """Leader duty: stale records become DISCONNECTED (with the last versions
    their replica wrote); nodes disconnected for longer than `timeout`
    become GONE, and their last statistics report goes with it (a node that
    left must not count in GetStats' totals; a DISCONNECTED one still
    forwards with its last state, so its report stays). Versions records no
    replica refreshed for `stale_after` are removed once their nodes'
    records hold what they said. Nodes with a live stream to this replica
    are left alone: their record is stale only because this replica was
    paused (SIGSTOP, a long GC), and its registry rewrites it next."""
    now = now if now is not None else time.time()
    out = []
    rows = read_nodes(store)
    gone = set()
    for kv, n in rows:
        if n.health == api_pb2.NODE_HEALTH_GONE:
            gone.add(n.name)
        if n.name in connected_here:
            continue
        if is_stale(n, stale_after, now):
            n.health = api_pb2.NODE_HEALTH_DISCONNECTED
        elif n.health == api_pb2.NODE_HEALTH_DISCONNECTED and now - n.last_seen.ToSeconds() > timeout:
            n.health = api_pb2.NODE_HEALTH_GONE
        else:
            continue
        deletes = [keys.stats(n.name)] if n.health == api_pb2.NODE_HEALTH_GONE else []
        if store.txn([fence, Compare(kv.key, kv.mod_revision)], [(kv.key, n.SerializeToString())],
                     deletes) is not None:
            out.append(n.name)
    dead = [kv.key for kv, v in read_versions(store) if now - v.written.ToSeconds() > stale_after]
    # Reports of nodes already GONE (or whose record was removed): written
    # by a replica that outlived its node's GONE mark, or before this duty existed.
    known = {n.name for _, n in rows}
    orphans = [kv.key for kv in store.range(keys.STATS)[0]
               if (name := kv.key[len(keys.STATS):]) in gone or name not in known]
    if orphans or dead:
        store.txn([fence], [], orphans + dead)
    return out
