"""The snapshot cache: every node's desired entries, kept current from the
store's changes. No I/O and no knowledge of streams (the stream server in
sync.py consumes its updates), as in go-control-plane's pkg/cache vs
pkg/server.

Entries of CLUSTER services are shared by all nodes and computed once per
change; entries of LOCAL services are computed per node that asked. The
workloads, policy sets and local redirects of every node are kept by the
policy part (policy_cache.py), which reads the services held here.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from socklb.v1 import api_pb2, node_pb2, policy_pb2, types_pb2

from . import compute, policy_compute
from .policy_cache import NodePolicy, PolicyCache, PolicyChanges


@dataclass
class Update:
    """What one batch of service changes means for the nodes."""

    revision: int
    # Entries every node gets (CLUSTER services), and services gone everywhere.
    shared_upserts: list[node_pb2.ServiceState] = field(default_factory=list)
    removals: list[str] = field(default_factory=list)
    # Entries for specific nodes (LOCAL services, and policy switches).
    per_node: dict[str, list[node_pb2.ServiceState]] = field(default_factory=dict)
    # Workloads, policy sets and redirects: always per node (a workload runs on one).
    policy: dict[str, PolicyChanges] = field(default_factory=dict)

    def for_node(self, node: str) -> tuple[list[node_pb2.ServiceState], list[str]]:
        return self.shared_upserts + self.per_node.get(node, []), self.removals

    def empty(self) -> bool:
        return not (self.shared_upserts or self.removals or self.per_node or self.policy)


class SnapshotCache:
    def __init__(self) -> None:
        self.revision = 0
        self.services: dict[str, api_pb2.Service] = {}
        self._shared: dict[str, node_pb2.ServiceState] = {}
        self._local: dict[str, dict[str, node_pb2.ServiceState]] = {}
        # Earliest drain deadline (seconds) of each service that has one: the
        # leader's drain duty looks only at these, not at every service.
        self.drain_deadlines: dict[str, float] = {}
        self.policy = PolicyCache(self.services)
        # Moves with every load and apply: the snapshot memo in sync.py keys on it.
        self.generation = 0

    def load(self, services: Iterable[api_pb2.Service], revision: int,
             workloads: Iterable[policy_pb2.Workload] = (), policies: Iterable[policy_pb2.Policy] = (),
             redirects: Iterable[policy_pb2.LocalRedirect] = ()) -> None:
        self.services.clear()
        self._shared.clear()
        self._local.clear()
        self.drain_deadlines.clear()
        for svc in services:
            self._set(svc)
        self.policy.load(workloads, policies, redirects)
        self.revision = revision
        self.generation += 1

    def _set(self, svc: api_pb2.Service) -> None:
        self.services[svc.name] = svc
        deadlines = [b.drain_deadline.ToNanoseconds() / 1e9 for b in svc.backends
                     if b.state == types_pb2.BACKEND_STATE_DRAINING and b.HasField("drain_deadline")]
        if deadlines:
            self.drain_deadlines[svc.name] = min(deadlines)
        else:
            self.drain_deadlines.pop(svc.name, None)
        shared = compute.shared_entry(svc)
        if shared is not None:
            self._shared[svc.name] = shared
        else:
            self._local[svc.name] = {}

    def _entry(self, name: str, node: str) -> node_pb2.ServiceState:
        if name in self._shared:
            return self._shared[name]
        per_node = self._local[name]
        if node not in per_node:
            per_node[node] = compute.node_service(self.services[name], node)
        return per_node[node]

    def node_specific(self, node: str) -> bool:
        """Whether `node`'s state may differ from another node's: some
        service's entry depends on the node (traffic policy LOCAL), or the
        node has workloads."""
        return bool(self._local) or self.policy.has_entries(node)

    def entries_for(self, node: str) -> dict[str, node_pb2.ServiceState]:
        return {name: self._entry(name, node) for name in self.services}

    def policy_for(self, node: str) -> NodePolicy:
        return self.policy.node(node)

    def state_for(self, node: str) -> node_pb2.NodeState:
        """`node`'s whole state at the cache's revision."""
        entries, policy = self.entries_for(node), self.policy_for(node)
        return node_pb2.NodeState(
            version=self.revision, services=[entries[n] for n in sorted(entries)],
            workloads=[policy.workloads[n] for n in sorted(policy.workloads)],
            policy_sets=[policy.policy_sets[n] for n in sorted(policy.policy_sets)],
            redirects=[policy.redirects[n] for n in sorted(policy.redirects)])

    def apply(self, services: Iterable[tuple[str, api_pb2.Service | None]], revision: int,
              nodes: Iterable[str], workloads: Iterable[tuple[str, policy_pb2.Workload | None]] = (),
              policies: Iterable[tuple[str, policy_pb2.Policy | None]] = (),
              redirects: Iterable[tuple[str, policy_pb2.LocalRedirect | None]] = ()) -> Update:
        """Apply changes (None = deleted) seen at `revision`; `nodes` are
        those that need per-node service entries now (connected ones).
        Workloads, policy sets and redirects are kept for every node."""
        nodes = list(nodes)
        # The feed (server.py) is one watch in revision order, so `revision`
        # includes every change before it. max(): a node's version must never
        # go back, whatever a caller passes.
        self.revision = max(self.revision, revision)
        self.generation += 1
        upd = Update(self.revision)
        shared: dict[str, node_pb2.ServiceState] = {}
        per_node: dict[str, dict[str, node_pb2.ServiceState]] = {}
        removed: list[str] = []
        # What policy sets and redirects see of a service: its frontends (a DNS service's backends too).
        frontends_changed: list[str] = []
        # Within a batch only the last write of a name matters: the nodes
        # have seen none of them yet.
        for name, svc in dict(services).items():
            if _frontends(self.services.get(name)) != _frontends(svc):
                frontends_changed.append(name)
            before = {n: self._entry(name, n) for n in nodes} if name in self.services else None
            old_shared = self._shared.pop(name, None)
            self._local.pop(name, None)
            if svc is None:
                self.drain_deadlines.pop(name, None)
                if self.services.pop(name, None) is not None:
                    removed.append(name)
                continue
            self._set(svc)
            new_shared = self._shared.get(name)
            if new_shared is not None and (before is None or old_shared is not None):
                # Shared before and after (or new): one comparison for all nodes.
                if new_shared != old_shared:
                    shared[name] = new_shared
                continue
            for n in nodes:
                entry = self._entry(name, n)
                if before is None or before[n] != entry:
                    per_node.setdefault(n, {})[name] = entry
        upd.shared_upserts = [shared[n] for n in sorted(shared)]
        upd.removals = sorted(removed)
        upd.per_node = {n: [e[k] for k in sorted(e)] for n, e in per_node.items() if e}
        upd.policy = self.policy.apply(workloads, policies, redirects, frontends_changed)
        return upd


def _frontends(svc: api_pb2.Service | None) -> list | None:
    return policy_compute.dns_relevant(svc)
