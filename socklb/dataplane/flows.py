"""Read the node's flow records (the `flows` socket storage the connect and
sendmsg hooks write): user space cannot walk socket storage with
get_next_key, so a BPF iterator (bpf/flows.bpf.c) emits them.

    with FlowReader(pin_dir) as r:           # probes, builds + loads once
        dump = r.read()                      # FlowDump: records, method, timing
        counts = r.count()                   # FlowCounts: open flows per (frontend, backend)
        r.method                             # Method.MAP_ITER or Method.SOCKET_ITER
        r.map_iter_refused                   # the probe: None, or why it was refused

Two methods, one chosen at start:
  map-iter     iter/bpf_sk_storage_map over the flows map: visits only the
               sockets that have a record, every network namespace in one
               pass. Some kernels refuse map-element iterators (EPERM at
               load: kernel 6.18.44-fc under a BPF LSM policy, for one).
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
are not emitted; a socket the socket iterators show twice is kept once (by
cookie). count() runs the counting programs instead: the kernel adds each
record to the flow_counts map, so a statistics report costs one walk and a
map read rather than a record per socket; a socket the iterator shows twice
while the table changes under it is counted twice (a statistic, not a dump).
"""
from __future__ import annotations

import ctypes as ct
import enum
import logging
import struct
import threading
import time
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from . import bpfobj, kernel, layout

log = logging.getLogger(__name__)

SOURCE = "flows.bpf.c"
# key -> program: "<x>" emits records, "count-<x>" counts into flow_counts.
MAP_PROGRAMS = {"map": "socklb_flows_map", "count-map": "socklb_counts_map"}
SOCKET_PROGRAMS = {"tcp": "socklb_flows_tcp", "udp": "socklb_flows_udp",
                   "count-tcp": "socklb_counts_tcp", "count-udp": "socklb_counts_udp"}
# Nothing is destroyed while reading, so a record rolled back by the kernel is
# simply shown again: read in large chunks.
_READ_SIZE = 64 * 1024


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
_REC = struct.Struct("=QII16s16sHHBBH")
assert _REC.size == ct.sizeof(layout.FlowRecord), "flows.h changed: update _REC"


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


class _Object(bpfobj.IterObject):
    error = FlowReaderError


class FlowReader:
    """Reads every live flow record of the agent whose pins are in pin_dir.

    method: "auto" | "map-iter" | "socket-iter" (see the module doc).
    netns:  socket-iter only: None = every namespace on the node, else only
            these namespace paths.
    """

    def __init__(self, pin_dir: str | Path, method: str | Method = Method.AUTO,
                 netns: Iterable[str | Path] | None = None, cache: Path | None = None):
        self.pin_dir = Path(pin_dir)
        self.requested = Method(method)
        self.netns_paths = None if netns is None else [str(p) for p in netns]
        self._lock = threading.Lock()
        self._obj: _Object | None = None
        if not (self.pin_dir / "flows").exists():
            raise FlowReaderError(f"{self.pin_dir}/flows does not exist: is the dataplane agent loaded there?")
        t0 = time.monotonic()
        try:
            path = bpfobj.build(SOURCE, cache=cache)
        except bpfobj.BpfObjError as e:
            raise FlowReaderError(str(e)) from e
        self.map_iter_refused = self._probe_map_iter(path)
        if self.requested is Method.MAP_ITER and self._obj is None:
            e = FlowReaderError(f"map-element iterators are refused by this kernel: {self.map_iter_refused}")
            e.map_iter_refused = self.map_iter_refused
            raise e
        if self._obj is None:
            self._obj = _Object(path, self.pin_dir, SOCKET_PROGRAMS)
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
            obj = _Object(path, self.pin_dir, MAP_PROGRAMS, map_keys=MAP_PROGRAMS)
            self._check_counts(obj)
        except FlowReaderError as e:
            log.debug("map-element iterator refused: %s", e)
            return bpfobj.first_line(e)
        try:
            obj.read_iter("map", _READ_SIZE)
        except FlowReaderError as e:
            obj.close()
            return bpfobj.first_line(e)
        if self.requested is Method.SOCKET_ITER:
            obj.close()
        else:
            self._obj = obj
        return None

    def close(self) -> None:
        with self._lock:
            if self._obj is not None:
                self._obj.close()
                self._obj = None

    def __enter__(self) -> "FlowReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self) -> FlowDump:
        with self._lock:
            obj = self._live()
            if self.method is Method.MAP_ITER:
                t0 = time.monotonic()
                flows = parse(obj.read_iter("map", _READ_SIZE))
                return FlowDump(flows, self.method.value, time.monotonic() - t0)

            def scan(ns: bpfobj.Netns) -> list[Flow]:
                return parse(obj.read_iter("tcp", _READ_SIZE)) + parse(obj.read_iter("udp", _READ_SIZE))

            res = bpfobj.scan_netns(scan, self.netns_paths, thread_name="socklb-flows")
        dump = FlowDump(method=self.method.value, duration=res.duration, netns_scanned=len(res.results),
                        errors=res.errors, unreachable=res.unreachable)
        seen: set[int] = set()
        for _ns, flows in res.results:
            for f in flows:
                if f.cookie not in seen:
                    seen.add(f.cookie)
                    dump.flows.append(f)
        for e in dump.errors:
            log.warning("flows: %s", e)
        return dump

    def count(self) -> FlowCounts:
        """Open flows per (frontend, backend address, backend port), counted
        in the kernel."""
        with self._lock:
            obj = self._live()
            counts = self._counts_map(obj)
            _clear(counts)
            if self.method is Method.MAP_ITER:
                t0 = time.monotonic()
                obj.read_iter("count-map", _READ_SIZE)
                out = FlowCounts(method=self.method.value)
            else:
                def scan(ns: bpfobj.Netns) -> None:
                    obj.read_iter("count-tcp", _READ_SIZE)
                    obj.read_iter("count-udp", _READ_SIZE)

                t0 = time.monotonic()
                res = bpfobj.scan_netns(scan, self.netns_paths, thread_name="socklb-flows")
                out = FlowCounts(method=self.method.value, netns_scanned=len(res.results), errors=res.errors,
                                 unreachable=res.unreachable)
            for k, v in counts.items():
                out.counts[(k.frontend_id, bytes(k.backend_addr), k.backend_port)] = v.value
            _clear(counts)
            out.duration = time.monotonic() - t0
        for e in out.errors:
            log.warning("flows: %s", e)
        return out

    def _live(self) -> "_Object":
        if self._obj is None:
            raise FlowReaderError("flow reader is closed")
        return self._obj

    @staticmethod
    def _counts_map(obj: "_Object") -> kernel.BpfMap:
        # The fd belongs to the object: this BpfMap is never closed.
        return kernel.BpfMap(obj.map_fd("flow_counts"), layout.FlowCountKey, ct.c_uint64, "flow_counts")

    def _check_counts(self, obj: "_Object") -> None:
        info = kernel.map_info(obj.map_fd("flow_counts"))
        if info.key_size != ct.sizeof(layout.FlowCountKey) or info.max_entries != layout.FLOW_COUNTS_MAX:
            raise FlowReaderError(f"flow_counts has key size {info.key_size}, {info.max_entries} entries: "
                                  f"flows.h and layout.py disagree")


def _clear(m: kernel.BpfMap) -> None:
    for k in list(m.keys()):
        m.delete(k)
