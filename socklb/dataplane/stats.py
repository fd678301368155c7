"""The node's statistics: the part of the agent that reads counters, flows,
socket statistics and per-workload denials (Statistics: KernelStatistics on a loaded datapath,
MemoryStatistics for a node whose maps are in memory), names them through
the agent's catalog, and the report built from them part by part: a part
that cannot be read is left out and named with its reason in the report;
the other parts still go out.

    reporter = StatsReporter(agent.statistics.report_parts(agent.catalog))
    report = reporter.report()     # sync_pb2.StatsReport
    report.unavailable             # part -> why it is missing this time

A part's failure is logged once, and again only when its reason changes (a
node reports every few seconds: a refused kernel feature must not flood the
log), and its recovery once.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from google.protobuf import timestamp_pb2

from socklb.v1 import node_pb2, sync_pb2

from . import layout
from .bpfobj import first_line
from .catalog import Catalog
from .features import Parts, Unavailable
from .flows import Flow, FlowDump
from .sockstats import SocketSample, aggregate

log = logging.getLogger(__name__)

# How each part's value goes into the report.
_PLACE: dict[str, Callable[[sync_pb2.StatsReport, object], None]] = {
    "counters": lambda r, v: r.counters.CopyFrom(v),
    "flows": lambda r, v: r.flows.extend(v),
    "socket_stats": lambda r, v: r.sockets.extend(v),
    "workloads": lambda r, v: r.workloads.extend(v),
}
PARTS = tuple(_PLACE)


class StatsReporter:
    """parts: part name (PARTS) -> a function that reads it (raises when it cannot)."""

    def __init__(self, parts: Mapping[str, Callable[[], object]]):
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown statistics parts {sorted(unknown)}; known: {PARTS}")
        self.parts = dict(parts)
        self._failing: dict[str, str] = {}

    def report(self) -> sync_pb2.StatsReport:
        at = timestamp_pb2.Timestamp()
        at.GetCurrentTime()
        out = sync_pb2.StatsReport(at=at)
        for name, read in self.parts.items():
            try:
                value = read()
            except Exception as e:  # noqa: BLE001 - any failure of one part leaves the others
                why = first_line(e)
                out.unavailable[name] = why
                if self._failing.get(name) != why:
                    log.warning("statistics: %s unavailable: %s", name, why)
                    log.debug("statistics: %s", name, exc_info=True)
                    self._failing[name] = why
                continue
            _PLACE[name](out, value)
            if self._failing.pop(name, None) is not None:
                log.info("statistics: %s available again", name)
        out.health = "ok" if not out.unavailable else "; ".join(
            f"{k} unavailable: {v}" for k, v in sorted(out.unavailable.items()))
        return out


def flow_counts(counts: Mapping[tuple[int, bytes, int], int], names: Mapping[int, str]) -> list[sync_pb2.FlowCount]:
    """Open flows per (service, backend address, port), sorted. counts:
    (frontend id, backend address as 16 raw bytes, backend port in network
    order) -> flows (flows.FlowReader.count); names: frontend id -> service.
    Flows of a frontend no longer programmed are left out."""
    per: Counter = Counter()
    for (frontend_id, addr, port), n in counts.items():
        name = names.get(frontend_id)
        if name:
            per[(name, layout.addr_text(addr), layout.port_host(port))] += n
    return [sync_pb2.FlowCount(service=name, backend_address=addr, backend_port=port, active=n)
            for (name, addr, port), n in sorted(per.items())]


FlowCountMap = Mapping[tuple[int, bytes, int], int]  # as flows.FlowCounts.counts


class Statistics(ABC):
    """A node's statistics part. A reading that cannot be made raises
    (features.Unavailable where the node has no way to make it)."""

    @abstractmethod
    def counter_values(self) -> dict[layout.Counter, int]:
        """The datapath's counters (summed over CPUs)."""

    @abstractmethod
    def flow_dump(self) -> FlowDump:
        """Every live flow record on the node."""

    @abstractmethod
    def count_flows(self) -> FlowCountMap:
        """Open flows per (frontend id, backend address, backend port), as flows.FlowCounts.counts."""

    @abstractmethod
    def socket_samples(self) -> list[SocketSample]:
        """Every load-balanced socket (sockstats.SocketStatsCollector.collect)."""

    @abstractmethod
    def workload_denied(self, ids: Iterable[int]) -> dict[int, int]:
        """connect()/sendmsg() calls refused by policy, per workload id."""

    def dns_counter_values(self) -> dict[str, int]:
        """The DNS learner's counters by name (dns.DnsLearner.counters); none without a learner."""
        return {}

    def counters(self) -> node_pb2.Counters:
        c = self.counter_values()
        C = layout.Counter
        d = self.dns_counter_values()
        return node_pb2.Counters(
            translations=c[C.TRANSLATED], affinity_hits=c[C.AFFINITY_HIT], affinity_misses=c[C.AFFINITY_MISS],
            no_backend=c[C.NO_BACKEND], policy_denies=c[C.POLICY_DENY], rev_nat_hits=c[C.RNAT_HIT],
            rev_nat_misses=c[C.RNAT_MISS], rev_nat_cleaned=c[C.RNAT_CLEANED],
            fqdn_denies=c[C.FQDN_DENY], fqdn_expired=c[C.FQDN_EXPIRED],
            **{f"dns_{k}": d.get(k, 0) for k in ("queries", "answers", "learned", "unsolicited", "malformed",
                                                  "truncated", "pruned")})

    def flow_counts(self, catalog: Catalog) -> list[sync_pb2.FlowCount]:
        """Open flows per service and backend."""
        counted = self.count_flows()
        return flow_counts(counted, catalog.current().frontend_services())

    def socket_stats(self, catalog: Catalog) -> list[node_pb2.SocketStats]:
        """Socket statistics of load-balanced flows, per service and backend."""
        samples = self.socket_samples()
        return aggregate(samples, catalog.backend_names())

    def workload_reports(self, catalog: Catalog) -> list[sync_pb2.WorkloadReport]:
        """Per workload, by name: whether its cgroup is on this node, and its denials."""
        workloads = catalog.workloads()
        denied = self.workload_denied(w.id for w in workloads.values() if w.id >= 0)
        return [sync_pb2.WorkloadReport(name=name, cgroup_found=bool(w.cgroup_id), denied=denied.get(w.id, 0))
                for name, w in sorted(workloads.items())]

    def report_parts(self, catalog: Catalog) -> dict[str, Callable[[], object]]:
        """The parts of the node's statistics report (StatsReporter)."""
        return {"counters": self.counters, "flows": lambda: self.flow_counts(catalog),
                "socket_stats": lambda: self.socket_stats(catalog),
                "workloads": lambda: self.workload_reports(catalog)}

    def close(self) -> None:
        pass


class KernelStatistics(Statistics):
    """Reads a loaded datapath: its counters map (`counters`, e.g.
    maps.BpfMapWriter.counter_values) and the iterator parts probed at start
    (features.Parts: the flow reader and the socket statistics collector,
    closed with this part)."""

    def __init__(self, counters: Callable[[], dict[layout.Counter, int]], parts: Parts,
                 workload_denied: Callable[[Iterable[int]], dict[int, int]] = lambda ids: {},
                 dns_counters: Callable[[], dict[str, int]] = dict):
        self._counters = counters
        self._parts = parts
        self._workload_denied = workload_denied
        self._dns_counters = dns_counters

    def _way(self, duty: str):
        part = getattr(self._parts, duty)
        if part is None:
            raise Unavailable(self._parts.errors.get(duty, "not loaded").removeprefix("none: "))
        return part

    def counter_values(self) -> dict[layout.Counter, int]:
        return self._counters()

    def dns_counter_values(self) -> dict[str, int]:
        return self._dns_counters()

    def flow_dump(self) -> FlowDump:
        return self._way("flows").read()

    def count_flows(self) -> FlowCountMap:
        return self._way("flows").count().counts

    def socket_samples(self) -> list[SocketSample]:
        return self._way("socket_stats").collect()

    def workload_denied(self, ids: Iterable[int]) -> dict[int, int]:
        return self._workload_denied(ids)

    def close(self) -> None:
        for part in (self._parts.flows, self._parts.socket_stats):
            if part is not None:
                part.close()


class MemoryStatistics(Statistics):
    """The statistics of a node whose maps are in memory: no program runs,
    so they are what was put here (tests set them): `values` (counters, all
    zero at first), `counts` (open flows, as flows.FlowCounts.counts),
    `samples` (sockstats.SocketSample), `flows` (flows.Flow records) and
    `denied` (workload id -> denials); none at first."""

    def __init__(self):
        self.values: dict[layout.Counter, int] = dict.fromkeys(layout.Counter, 0)
        self.counts: dict[tuple[int, bytes, int], int] = {}
        self.samples: list[SocketSample] = []
        self.flows: list[Flow] = []
        self.denied: dict[int, int] = {}

    def counter_values(self) -> dict[layout.Counter, int]:
        return dict(self.values)

    def flow_dump(self) -> FlowDump:
        return FlowDump(list(self.flows), "memory")

    def count_flows(self) -> FlowCountMap:
        return dict(self.counts)

    def socket_samples(self) -> list[SocketSample]:
        return list(self.samples)

    def workload_denied(self, ids: Iterable[int]) -> dict[int, int]:
        return {i: self.denied.get(i, 0) for i in ids}
