"""The node's statistics report, built part by part: a part that cannot be
read (flows, socket statistics, counters) is left out and named with its
reason in the report; the other parts still go out.

    reporter = StatsReporter({"counters": agent.counters, "flows": agent.flow_counts,
                              "socket_stats": agent.socket_stats})
    report = reporter.report()     # sync_pb2.StatsReport
    report.unavailable             # part -> why it is missing this time

A part's failure is logged once, and again only when its reason changes (a
node reports every few seconds: a refused kernel feature must not flood the
log), and its recovery once.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping

from google.protobuf import timestamp_pb2

from socklb.v1 import sync_pb2

from . import layout
from .bpfobj import first_line

log = logging.getLogger(__name__)

# How each part's value goes into the report.
_PLACE: dict[str, Callable[[sync_pb2.StatsReport, object], None]] = {
    "counters": lambda r, v: r.counters.CopyFrom(v),
    "flows": lambda r, v: r.flows.extend(v),
    "socket_stats": lambda r, v: r.sockets.extend(v),
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
