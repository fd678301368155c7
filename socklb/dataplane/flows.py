"""Read the node's flow records (bpf/socklb.h, "The flow record": the
`conn_flows` slots connect() writes, the `flows` socket storage sendmsg
writes): user space cannot walk socket storage with get_next_key, nor tell
a slot's socket, so BPF iterators (bpf/flows.bpf.c) emit them.

    with FlowReader(pin_dir) as r:           # probes, builds + loads once
        dump = r.read()                      # FlowDump: records, method, timing
        counts = r.count()                   # FlowCounts: open flows per (frontend, backend)
        r.method                             # Method.MAP_ITER or Method.SOCKET_ITER
        r.map_iter_refused                   # the probe: None, or why it was refused

Two methods, one chosen at start:
  map-iter     iter/bpf_sk_storage_map over the flows map and
               iter/bpf_map_elem over the conn_flows slots: visits only the
               records, every network namespace in one pass; a slot's record
               has state and family 0 (its socket is not at hand). Some
               kernels refuse map-element iterators (EPERM at load: kernel
               6.18.44-fc under a BPF LSM policy, for one).
  socket-iter  iter/tcp + iter/udp in every network namespace (entered with
               setns, as termination and socket statistics do), looking up
               each socket's record. Visits every socket of the node, once
               per namespace for TCP (the established hash is shared), and
               misses namespaces that cannot be reached (listed in
               FlowDump.unreachable) and sockets in no hash table (e.g. a TCP
               socket closed by the peer that the process has not closed).
"auto" probes the map iterator (load, attach, one read) and takes it when
the kernel allows it: it visits strictly fewer sockets and enters no
namespace; else socket-iter. "socket-iter" forces the fallback (the
map-element probe still runs, for the report); "map-iter" forces the map
iterator and fails where it is refused.

Records with a cleared frontend id (a socket re-connected away from its VIP)
are not emitted; a socket shown twice (by the socket iterators, or with a
record in both places) is kept once (by cookie). count() runs the counting programs instead: the kernel adds each
record to the flow_counts map, so a statistics report costs one walk and a
map read rather than a record per socket; a socket the iterator shows twice
while the table changes under it is counted twice (a statistic, not a dump).
"""
from __future__ import annotations

import ctypes as ct
import enum
import logging
import time
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import bpfobj, kernel, layout
from .iterrun import NO_HOOKS, Hooks, IterRunner, first_seen
from .netns import Netns

log = logging.getLogger(__name__)

SOURCE = "flows.bpf.c"
# key -> program: "<x>" emits records, "count-<x>" counts into flow_counts.
MAP_PROGRAMS = {"map": "socklb_flows_map", "count-map": "socklb_counts_map",
                "slots": "socklb_flows_slots", "count-slots": "socklb_counts_slots"}
# The map each map-element program iterates.
MAP_OF = {"map": "flows", "count-map": "flows", "slots": "conn_flows", "count-slots": "conn_flows"}
SOCKET_PROGRAMS = {"tcp": "socklb_flows_tcp", "udp": "socklb_flows_udp",
                   "count-tcp": "socklb_counts_tcp", "count-udp": "socklb_counts_udp"}


class Method(str, enum.Enum):
    AUTO = "auto"
    MAP_ITER = "map-iter"
    SOCKET_ITER = "socket-iter"


class FlowReaderError(bpfobj.BpfObjError):
    """The flow records cannot be read with the method asked for."""

    map_iter_refused: str | None = None  # set when the map-element probe ran and said no


# One emitted record, field for field struct socklb_flow_rec (layout.FlowRecord):
# addresses as 16 raw bytes, ports in network order.
Flow = namedtuple("Flow", [name for name, _ in layout.FlowRecord._fields_])
_REC = layout.record_struct(layout.FlowRecord)


def parse(data: bytes) -> list[Flow]:
    usable = len(data) - len(data) % _REC.size
    return [Flow._make(t) for t in _REC.iter_unpack(memoryview(data)[:usable])]


@dataclass
class FlowCounts:
    # (frontend_id, backend address as 16 raw bytes, backend port in network order) -> open flows
    counts: dict[tuple[int, bytes, int], int] = field(default_factory=dict)
    method: str = ""
    duration: float = 0.0
    netns_scanned: int = 0
    errors: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)


@dataclass
class FlowDump:
    flows: list[Flow] = field(default_factory=list)
    method: str = ""
    duration: float = 0.0
    netns_scanned: int = 0                                # 0 for map-iter: no namespace entered
    errors: list[str] = field(default_factory=list)       # namespaces that could not be read
    unreachable: list[str] = field(default_factory=list)  # namespaces seen but not openable


class FlowReader(IterRunner):
    """Reads every live flow record of the agent whose pins are in pin_dir.

    method: "auto" | "map-iter" | "socket-iter" (see the module doc).
    netns:  socket-iter only: None = every namespace on the node, else only
            these namespace paths.
    """

    error = FlowReaderError
    what = "flow reader"
    thread_name = "socklb-flows"
    # Nothing is destroyed while reading, so a record rolled back by the
    # kernel is simply shown again: read in large chunks.
    read_size = 64 * 1024

    def __init__(self, pin_dir: str | Path, method: str | Method = Method.AUTO,
                 netns: Iterable[str | Path] | None = None, cache: Path | None = None):
        super().__init__(pin_dir, netns, cache)
        self.requested = Method(method)
        t0 = time.monotonic()
        path = self.build(SOURCE)
        self.map_iter_refused = self._probe_map_iter(path)
        if self.requested is Method.MAP_ITER and self._obj is None:
            e = FlowReaderError(f"map-element iterators are refused by this kernel: {self.map_iter_refused}")
            e.map_iter_refused = self.map_iter_refused
            raise e
        if self._obj is None:
            self._obj = self.load(path, SOCKET_PROGRAMS)
            self._check_counts(self._obj)
            self.method = Method.SOCKET_ITER
        else:
            self.method = Method.MAP_ITER
        self.load_seconds = time.monotonic() - t0

    @property
    def map_iter(self) -> str:
        """The probe's answer: "yes", or "no: <why>"."""
        return "yes" if self.map_iter_refused is None else f"no: {self.map_iter_refused}"

    def _probe_map_iter(self, path: Path) -> str | None:
        """Load, attach and read the map iterator once; keep it when auto or
        map-iter was asked for. None, or why it was refused."""
        try:
            obj = self.load(path, MAP_PROGRAMS, map_keys=MAP_OF)
        except FlowReaderError as e:
            log.debug("map-element iterator refused: %s", e)
            return bpfobj.first_line(e)
        try:
            self._check_counts(obj)
            self.run_iter(obj, "map")
            self.run_iter(obj, "slots")
        except FlowReaderError as e:
            obj.close()
            return bpfobj.first_line(e)
        if self.requested is Method.SOCKET_ITER:
            obj.close()
        else:
            self._obj = obj
        return None

    def read(self, hooks: Hooks | None = None) -> FlowDump:
        """Every live flow record (see the module doc)."""
        hooks = hooks or NO_HOOKS
        with self.loaded() as obj:
            if self.method is Method.MAP_ITER:
                t0 = time.monotonic()
                # Slots first: a record there is the socket's connect()'s.
                flows = first_seen(parse(self.run_iter(obj, "slots", hooks)) +
                                   parse(self.run_iter(obj, "map", hooks)), set())
                return FlowDump(flows, self.method.value, time.monotonic() - t0)

            def scan(ns: Netns) -> list[Flow]:
                return parse(self.run_iter(obj, "tcp", hooks)) + parse(self.run_iter(obj, "udp", hooks))

            res = self.scan(scan, hooks)
        dump = FlowDump(method=self.method.value, duration=res.duration, netns_scanned=len(res.results),
                        errors=res.errors, unreachable=res.unreachable)
        seen: set[int] = set()
        for _ns, flows in res.results:
            dump.flows += first_seen(flows, seen)
        for e in dump.errors:
            log.warning("flows: %s", e)
        return dump

    def count(self, hooks: Hooks | None = None) -> FlowCounts:
        """Open flows per (frontend, backend address, backend port), counted
        in the kernel."""
        hooks = hooks or NO_HOOKS
        with self.loaded() as obj:
            counts = self._counts_map(obj)
            _clear(counts)
            if self.method is Method.MAP_ITER:
                t0 = time.monotonic()
                self.run_iter(obj, "count-slots", hooks)
                self.run_iter(obj, "count-map", hooks)
                out = FlowCounts(method=self.method.value)
            else:
                def scan(ns: Netns) -> None:
                    self.run_iter(obj, "count-tcp", hooks)
                    self.run_iter(obj, "count-udp", hooks)

                t0 = time.monotonic()
                res = self.scan(scan, hooks)
                out = FlowCounts(method=self.method.value, netns_scanned=len(res.results), errors=res.errors,
                                 unreachable=res.unreachable)
            for k, v in counts.items():
                out.counts[(k.frontend_id, bytes(k.backend_addr), k.backend_port)] = v.value
            _clear(counts)
            out.duration = time.monotonic() - t0
        for e in out.errors:
            log.warning("flows: %s", e)
        return out

    @staticmethod
    def _counts_map(obj: bpfobj.IterObject) -> kernel.BpfMap:
        # The fd belongs to the object: this BpfMap is never closed.
        return kernel.BpfMap(obj.map_fd("flow_counts"), layout.FlowCountKey, ct.c_uint64, "flow_counts")

    def _check_counts(self, obj: bpfobj.IterObject) -> None:
        info = kernel.map_info(obj.map_fd("flow_counts"))
        if info.key_size != ct.sizeof(layout.FlowCountKey) or info.max_entries != layout.FLOW_COUNTS_MAX:
            raise FlowReaderError(f"flow_counts has key size {info.key_size}, {info.max_entries} entries: "
                                  f"flows.h and layout.py disagree")


def _clear(m: kernel.BpfMap) -> None:
    for k in list(m.keys()):
        m.delete(k)
