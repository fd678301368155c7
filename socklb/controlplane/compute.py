"""What each node must program, from what the store holds. Pure.

The unit of work is one service for one node: `node_service`. A service with
traffic policy CLUSTER yields the same entry on every node, so callers compute
it once (`shared_entry`) and only LOCAL services are computed per node. That
keeps the cost of a change proportional to the service changed, not to the
number of services or nodes.

`node_state` is a node's whole state computed from scratch, policy included
(policy_compute.py, redirect_compute.py): the reference the incremental
snapshot cache is checked against.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from socklb.v1 import api_pb2, node_pb2, policy_pb2, types_pb2

from .labelindex import selects
from .policy_compute import policy_set, workload_state
from .redirect_compute import redirect_state

DEFAULT_AFFINITY_SECONDS = 10800  # Kubernetes' ClientIP default

_USABLE = (types_pb2.BACKEND_STATE_UNSPECIFIED, types_pb2.BACKEND_STATE_ACTIVE)


def is_local_policy(svc: api_pb2.Service) -> bool:
    return svc.traffic_policy == api_pb2.TRAFFIC_POLICY_LOCAL


def affinity_seconds(svc: api_pb2.Service) -> int:
    if svc.affinity.mode != api_pb2.AFFINITY_MODE_CLIENT:
        return 0
    return svc.affinity.timeout_seconds or DEFAULT_AFFINITY_SECONDS


def _node_backend(b: types_pb2.Backend) -> types_pb2.Backend:
    # The drain deadline is the control plane's business; leaving it out keeps
    # node entries (and their digests) unchanged when only a deadline moves.
    out = types_pb2.Backend()
    out.CopyFrom(b)
    out.ClearField("drain_deadline")
    return out


def node_service(svc: api_pb2.Service, node: str | None) -> node_pb2.ServiceState:
    """The entry of `svc` on `node` (node None: the cluster-wide entry)."""
    backends = list(svc.backends)
    if node is not None and is_local_policy(svc):
        local = [b for b in backends if b.node == node]
        # Prefer node-local backends, but never strand a node with none usable.
        if any(b.state in _USABLE for b in local):
            backends = local
    return node_pb2.ServiceState(
        name=svc.name,
        frontends=list(svc.frontends),
        backends=[_node_backend(b) for b in backends],
        selection=svc.selection,
        affinity_timeout_seconds=affinity_seconds(svc),
        keep_flows=[types_pb2.Backend(address=r.address, port=r.port) for r in svc.released],
    )


def shared_entry(svc: api_pb2.Service) -> node_pb2.ServiceState | None:
    """The entry every node gets, or None when it depends on the node."""
    return None if is_local_policy(svc) else node_service(svc, None)


def node_state(services: Iterable[api_pb2.Service], node: str, version: int,
               workloads: Iterable[policy_pb2.Workload] = (), policies: Iterable[policy_pb2.Policy] = (),
               redirects: Iterable[policy_pb2.LocalRedirect] = ()) -> node_pb2.NodeState:
    """Everything `node` must program, from scratch: its services, its
    workloads, the policy sets they use and the local redirects it serves.
    Every pair of workload and policy is tried: plain and slow, on purpose."""
    services = sorted(services, key=lambda s: s.name)
    by_name = {s.name: s for s in services}
    out = node_pb2.NodeState(version=version, services=[node_service(svc, node) for svc in services])
    policies = sorted(policies, key=lambda p: p.name)
    mine = sorted((w for w in workloads if w.node == node), key=lambda w: w.name)
    sets: dict[str, node_pb2.PolicySetState] = {}
    for w in mine:
        chosen = [p for p in policies if selects(p.selector, w.labels)]
        entry = policy_set(chosen, by_name) if chosen else None
        if entry is not None:
            sets[entry.name] = entry
        out.workloads.append(workload_state(w, entry.name if entry is not None else ""))
    out.policy_sets.extend(sets[name] for name in sorted(sets))
    for r in sorted(redirects, key=lambda r: r.name):
        entry = redirect_state(r, [w for w in mine if selects(r.selector, w.labels)], by_name)
        if entry is not None:
            out.redirects.append(entry)
    return out


def delta(old: Mapping[str, node_pb2.ServiceState], new: Mapping[str, node_pb2.ServiceState]
          ) -> tuple[list[node_pb2.ServiceState], list[str]]:
    """Upserts and removals that turn `old` into `new`."""
    upserts = [new[n] for n in sorted(new) if old.get(n) != new[n]]
    removals = sorted(n for n in old if n not in new)
    return upserts, removals
