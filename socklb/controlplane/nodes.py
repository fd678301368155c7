"""Node status and statistics: kept in memory by the replica a node is
connected to, written to the store in coalesced batches so that every
replica (and the leader) sees every node."""
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
    """Per-node events cost O(1) and touch no clock or store: a node's record
    is completed (health, last_seen) and serialized when it is flushed.
    Changes that alter what `node list` shows in kind (a node came or went,
    a NACK or its clearing, statistics parts unavailable) are flushed within
    `flush_interval`; version progress alone (desired/applied moved, the
    node answered) within `progress_interval`: with a write every 100 ms a
    thousand nodes' records are rewritten once per progress_interval, not
    once per write. Nothing is dropped: the last state of every dirty node is
    written by the next flush, and by flush_now() on shutdown."""

    def __init__(self, store: Store, replica: str, flush_interval: float = 0.2, heartbeat: float = 10.0,
                 progress_interval: float = 1.0):
        self.store = store
        self.replica = replica
        self.flush_interval = flush_interval
        self.progress_interval = progress_interval
        # Records of connected nodes are rewritten this often, so that a
        # replica that dies (and cannot write "disconnected") is noticed:
        # a record not refreshed for `stale_after` is read as DISCONNECTED.
        self.heartbeat = heartbeat
        self.stale_after = 3 * heartbeat
        self.records: dict[str, api_pb2.Node] = {}
        self.connected_nodes: set[str] = set()
        self.reports: dict[str, sync_pb2.StatsReport] = {}
        self._dirty: set[str] = set()  # to write within flush_interval
        self._progressed: set[str] = set()  # to write within progress_interval
        self._progress_due = False
        self._heard: set[str] = set()  # dirty nodes that spoke: last_seen is the flush's time
        self._dirty_stats: set[str] = set()
        self._reports: list[node_pb2.TerminationReport] = []
        self._gone: set[str] = set()  # disconnected here, to be written if still ours
        self._wake = asyncio.Event()
        self._progress_timer: asyncio.TimerHandle | None = None

    # --- events from streams (event loop thread) --------------------------
    def connected(self, hello: sync_pb2.Hello, peer: str, desired: int) -> None:
        n = api_pb2.Node(name=hello.node, applied_version=hello.applied_version, desired_version=desired,
                         kernel=hello.kernel, replica=self.replica)
        n.capabilities.update(hello.capabilities)
        self.records[hello.node] = n
        self.connected_nodes.add(hello.node)
        self._gone.discard(hello.node)
        self._heard.add(hello.node)
        self._touch(hello.node)

    def disconnected(self, node: str) -> None:
        self.connected_nodes.discard(node)
        if node in self.records:
            self._heard.add(node)
            self._gone.add(node)
            self._touch(node)

    def desired(self, node: str, version: int) -> None:
        n = self.records.get(node)
        if n is not None:
            n.desired_version = version
            self._progress(node)

    def acked(self, node: str, version: int) -> None:
        n = self.records.get(node)
        if n is not None:
            if version > n.applied_version:
                n.applied_version = version
            self._heard.add(node)
            if n.last_error:
                n.last_error = ""
                self._touch(node)
            else:
                self._progress(node)

    def nacked(self, node: str, version: int, error: str) -> None:
        n = self.records.get(node)
        if n is not None:
            n.last_error = f"version {version}: {error}"
            self._heard.add(node)
            self._touch(node)

    def stats(self, node: str, report: sync_pb2.StatsReport) -> None:
        self.reports[node] = report
        self._dirty_stats.add(node)
        n = self.records.get(node)
        if n is not None:
            self._heard.add(node)  # last_seen moves with the record's next write (heartbeat at the latest)
            if dict(n.stats_unavailable) != dict(report.unavailable):
                # Shown by `node list`: the record is rewritten only when the parts change.
                n.stats_unavailable.clear()
                n.stats_unavailable.update(report.unavailable)
                self._dirty.add(node)
        self._wake.set()

    def termination(self, report: node_pb2.TerminationReport) -> None:
        self._reports.append(report)
        self._wake.set()

    def applied_version(self, node: str) -> int:
        n = self.records.get(node)
        return n.applied_version if n is not None else 0

    def _touch(self, node: str) -> None:
        """A change to write soon (flush_interval)."""
        self._dirty.add(node)
        self._wake.set()

    def _progress(self, node: str) -> None:
        """Version progress: written within progress_interval (flushes that
        other changes cause in between leave it for then)."""
        self._progressed.add(node)
        if self._progress_timer is None:
            self._progress_timer = asyncio.get_running_loop().call_later(self.progress_interval, self._due)

    def _due(self) -> None:
        self._progress_due = True
        self._wake.set()

    # --- persistence ---------------------------------------------------------
    async def run(self) -> None:
        beat = asyncio.create_task(self._heartbeat())
        try:
            await self._flush_loop()
        finally:
            beat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            for name in self.connected_nodes:
                if name in self.records:
                    self._heard.add(name)
                    self._dirty.add(name)
            self._wake.set()

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
        """Write what is pending (on shutdown: everything; the flush loop
        leaves version progress for its own timer). A batch that fails is put
        back, to be written by the next flush."""
        taken = self._take(everything)
        if not any(taken):
            return
        try:
            await asyncio.to_thread(self.flush_batch, *taken)
        except StoreError:
            self._put_back(*taken)
            raise

    def _put_back(self, live, down, puts) -> None:
        self._dirty |= {n for n in live if n in self.records} | {n for n in down if n in self.records}
        self._gone |= {n for n in down if n not in self.connected_nodes}

    def _take(self, everything: bool = False):
        dirty, self._dirty = self._dirty, set()
        if everything or self._progress_due:
            dirty |= self._progressed
            self._progressed = set()
            self._progress_due = False
            if self._progress_timer is not None:
                self._progress_timer.cancel()
                self._progress_timer = None
        else:
            self._progressed -= dirty  # written now
        heard = self._heard & dirty
        self._heard -= heard
        stats, self._dirty_stats = self._dirty_stats, set()
        gone = dirty & self._gone
        self._gone -= gone
        now = _now() if heard else None
        for name in dirty:
            n = self.records.get(name)
            if n is None:
                continue
            if name in heard:
                n.last_seen.CopyFrom(now)
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
        kvs, _ = self.store.range(keys.NODES)
        out = [api_pb2.Node.FromString(kv.value) for kv in kvs]
        for n in out:
            if is_stale(n, self.stale_after, now):
                n.health = api_pb2.NODE_HEALTH_DISCONNECTED
        return out

    def list_stats(self) -> dict[str, sync_pb2.StatsReport]:
        kvs, _ = self.store.range(keys.STATS)
        return {kv.key[len(keys.STATS):]: sync_pb2.StatsReport.FromString(kv.value) for kv in kvs}


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
    """Leader duty: stale records become DISCONNECTED; nodes disconnected for
    longer than `timeout` become GONE, and their last statistics report goes
    with it (a node that left must not count in GetStats' totals; a
    DISCONNECTED one still forwards with its last state, so its report stays).
    Nodes with a live stream to this replica are left alone: their record is
    stale only because this replica was paused (SIGSTOP, a long GC), and its
    registry rewrites it next."""
    now = now if now is not None else time.time()
    out = []
    kvs, _ = store.range(keys.NODES)
    gone = set()
    for kv in kvs:
        n = api_pb2.Node.FromString(kv.value)
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
    # Reports of nodes already GONE (or whose record was removed): written
    # by a replica that outlived its node's GONE mark, or before this duty existed.
    known = {api_pb2.Node.FromString(kv.value).name for kv in kvs}
    orphans = [kv.key for kv in store.range(keys.STATS)[0]
               if (name := kv.key[len(keys.STATS):]) in gone or name not in known]
    if orphans:
        store.txn([fence], [], orphans)
    return out
