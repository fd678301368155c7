"""Prometheus metrics of both planes. Names are documented in
docs/operations.md ("Metrics"); keep the two in step.

Each plane calls `serve(address)` once; everything else is a module-level
metric updated where the event happens, or a collector read at scrape time
(BPF counters, node health) so a scrape never sees stale totals.
"""
from __future__ import annotations

import bisect
import logging

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from socklb.lb.addresses import split_host_port

log = logging.getLogger(__name__)

# Latency buckets from 1 ms to 10 s: sync and apply times live in there.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

# --- control plane ------------------------------------------------------------
api_requests = Counter("socklb_api_requests_total", "Public API calls by method and status code",
                       ["method", "code"])
termination_reports = Counter("socklb_termination_reports_total",
                              "Termination reports received from nodes, by trigger", ["trigger"])
terminated_sockets_cp = Counter("socklb_terminated_sockets_total",
                                "Sockets nodes reported destroyed, by trigger", ["trigger"])


class SyncTally:
    """The sync streams' counters, counted once per node per update: plain
    integers bumped on the event loop (no lock, no label lookup: a
    prometheus_client Counter takes a mutex per inc, a Histogram one per
    observe, which at a thousand nodes per write is a visible share of the
    control plane's CPU), exported at scrape time. A scrape from another
    thread reads each number whole; the histogram's count and sum may be a
    few observations apart mid-update, as any unlocked read would be."""

    UPDATE_KINDS = ("snapshot", "delta")

    def __init__(self) -> None:
        self.updates = dict.fromkeys(self.UPDATE_KINDS, 0)
        self.acks = 0
        self.nacks = 0
        self.latency_counts = [0] * (len(_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.latency_sum = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_counts[bisect.bisect_left(_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def collect(self):
        updates = CounterMetricFamily("socklb_sync_updates", "Updates sent to nodes by kind", labels=["kind"])
        for kind, n in self.updates.items():
            updates.add_metric([kind], n)
        counts = list(self.latency_counts)
        cumulative, total = [], 0
        for bound, n in zip([*(str(b) for b in _BUCKETS), "+Inf"], counts):
            total += n
            cumulative.append((bound, total))
        return [updates,
                CounterMetricFamily("socklb_sync_acks", "Updates nodes acknowledged", value=self.acks),
                CounterMetricFamily("socklb_sync_nacks", "Updates nodes refused (NACK)", value=self.nacks),
                HistogramMetricFamily("socklb_sync_latency_seconds", "From sending an update to a node until its ACK",
                                      buckets=cumulative, sum_value=self.latency_sum)]


sync = SyncTally()
REGISTRY.register(sync)

# --- dataplane ------------------------------------------------------------------
applies = Counter("socklb_dataplane_applies_total", "Desired states applied, by result (ok, invalid, error)",
                  ["result"])
apply_seconds = Histogram("socklb_dataplane_apply_seconds", "Time to validate, plan and write one state",
                          buckets=_BUCKETS)
terminations = Counter("socklb_dataplane_terminations_total", "Termination runs, by trigger and method",
                       ["trigger", "method"])
terminated_sockets = Counter("socklb_dataplane_terminated_sockets_total", "Sockets destroyed, by method",
                             ["method"])
termination_seconds = Histogram("socklb_dataplane_termination_seconds",
                                "Time of one termination run over every network namespace", buckets=_BUCKETS)
programmed = Gauge("socklb_dataplane_programmed", "Entries programmed in the BPF maps", ["kind"])


class CallbackCollector:
    """Metrics computed at scrape time by a callback returning metric families."""

    def __init__(self, fn):
        self.fn = fn

    def collect(self):
        try:
            yield from self.fn()
        except Exception:  # a scrape must not fail because one source did
            log.exception("metrics collector failed")


def bpf_counter_families(counters: dict) -> list:
    """The datapath's per-CPU counters, summed: {layout.Counter: int}."""
    fam = CounterMetricFamily("socklb_dataplane_bpf", "BPF datapath counters (summed over CPUs)",
                              labels=["counter"])
    for c, v in counters.items():
        fam.add_metric([c.name.lower()], v)
    return [fam]


def node_health_families(nodes, services: int, backends: int) -> list:
    g = GaugeMetricFamily("socklb_nodes", "Nodes by health", labels=["health"])
    counts: dict[str, int] = {}
    for n in nodes:
        counts[n] = counts.get(n, 0) + 1
    for health, c in sorted(counts.items()):
        g.add_metric([health], c)
    return [g, GaugeMetricFamily("socklb_services", "Services in the store", value=services),
            GaugeMetricFamily("socklb_backends", "Backends over all services", value=backends)]


def register(fn) -> None:
    REGISTRY.register(CallbackCollector(fn))


def serve(address: str) -> None:
    """Expose /metrics on HOST:PORT, [IPv6]:PORT or :PORT (every IPv4
    address); empty: do not serve. ValueError for another form (the
    host:port grammar is the model's, split_host_port)."""
    if not address:
        return
    host, port = split_host_port(address)
    if port is None or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError("expected HOST:PORT ([ADDR]:PORT for IPv6) with a port in 0..65535")
    start_http_server(int(port), addr=host or "0.0.0.0")
    log.info("metrics on http://%s/metrics", address)
