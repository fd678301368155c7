"""What the nodes last said about their workloads (StatsReport.workloads, as
the node registry stored it under keys.stats(node)), as the API shows it:
one WorkloadStatus per registered workload (ListWorkloads, GetStats)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from socklb.v1 import api_pb2, policy_pb2, sync_pb2

from . import keys
from .nodes import NodeRegistry
from .store import Store


def read_reports(store: Store, registry: NodeRegistry, node: str = "") -> dict[str, sync_pb2.StatsReport]:
    """The last statistics report of `node` (empty: of every node), by node name."""
    if not node:
        return registry.list_stats()
    kv = store.get(keys.stats(node))
    return {node: sync_pb2.StatsReport.FromString(kv.value)} if kv is not None else {}


def workload_statuses(workloads: Iterable[policy_pb2.Workload],
                      reports: Mapping[str, sync_pb2.StatsReport]) -> list[api_pb2.WorkloadStatus]:
    """One status per workload, in the same order: reported=False while its
    node has not reported on it (no report yet, or a report from before the
    workload reached the node)."""
    by_node: dict[str, dict[str, sync_pb2.WorkloadReport]] = {}
    out = []
    for w in workloads:
        if w.node not in by_node:
            report = reports.get(w.node)
            by_node[w.node] = {r.name: r for r in report.workloads} if report is not None else {}
        seen = by_node[w.node].get(w.name)
        if seen is None:
            out.append(api_pb2.WorkloadStatus(name=w.name))
        else:
            out.append(api_pb2.WorkloadStatus(name=w.name, reported=True, cgroup_found=seen.cgroup_found,
                                              denied=seen.denied))
    return out
