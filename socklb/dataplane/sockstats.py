"""Socket statistics of load-balanced flows, per service and backend: sockets
by state, bytes in and out, smoothed RTT and retransmits for TCP, receive
drops for UDP.

    with SocketStatsCollector(pin_dir) as c:        # builds + loads once
        samples = c.collect()                       # every network namespace
        stats = aggregate(samples, names)           # list[node_pb2.SocketStats]

where names maps (frontend_id, backend_id) -> (service, backend_address,
backend_port), e.g. from the agent's programmed frontends and backends.

Finding: the iter/tcp and iter/udp programs of bpf/sock_stats.bpf.c read the
agent's `flows` socket storage (the pinned map is reused, not copied) and
emit one 48-byte record (struct socklb_stat_rec of bpf/sock_stats.h,
layout.StatRec) per socket whose flow record is live and whose connected
peer is the record's backend: the same sockets socket termination would
match. Direct connections to a backend address, unconnected UDP sockets,
listeners, time-wait and request sockets are not counted. Building, loading
and the per-namespace runner are shared with termination (iterrun.py): each
collection enters every network namespace (the host's, every
/proc/*/ns/net, every /run/netns/*, deduplicated by the nsfs inode) with
setns() in a dedicated thread.

Values (per socket, from the kernel at the time of the walk):
  TCP  bytes_sent = payload acknowledged by the peer, bytes_received =
       payload received in order: tcp_sock.bytes_acked / bytes_received
       (what `ss -ti` shows) without the SYN and FIN they count as one byte
       each; srtt_us = tcp_sock.srtt_us >> 3 (0 before the first RTT
       sample); retransmits = tcp_sock.total_retrans
  UDP  drops = receive drops of the socket (sk_drops and, since 6.18, udp's
       per-NUMA drop counters); no byte counters (the kernel keeps none)
They are cumulative over each socket's life: a closed socket's counts leave
the sums with it (these are gauges of the open sockets, not counters).

Limits: namespaces as netns.py finds them (one held only by a bind mount
elsewhere or an open fd, or entered by a single thread, is missed; one whose
/proc entry is not readable is listed in Collection.unreachable). A socket
that opens or closes during the walk may be missed or seen once more by the
kernel's bucket-resuming iterator; records are deduplicated by socket cookie.
Each collection walks every namespace's TCP and UDP hash tables.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from socklb.lb import protocols
from socklb.v1 import node_pb2

from . import bpfobj, layout
from .iterrun import NO_HOOKS, Hooks, IterRunner, first_seen
from .netns import Netns

log = logging.getLogger(__name__)

SOURCE = "sock_stats.bpf.c"
PROGRAMS = {"tcp": "socklb_stats_tcp", "udp": "socklb_stats_udp"}

# layout.StatRec, field for field, for iter_unpack.
_REC = layout.record_struct(layout.StatRec)


class SocketStatsError(bpfobj.BpfObjError):
    """Building or loading the statistics programs failed."""


@dataclass(frozen=True)
class SocketSample:
    """One load-balanced socket as the iterator saw it."""

    netns: str           # "net:[<inode>]"
    cookie: int          # socket cookie (SO_COOKIE)
    frontend_id: int
    backend_id: int
    protocol: str        # "tcp" / "udp"
    family: int          # socket.AF_INET / AF_INET6
    state: int           # kernel skc_state
    bytes_sent: int      # TCP: bytes acked by the peer
    bytes_received: int  # TCP: bytes received in order
    srtt_us: int         # TCP: smoothed RTT, microseconds (0: no sample yet)
    retransmits: int     # TCP: total retransmitted segments
    drops: int           # UDP: receive drops

    @property
    def state_name(self) -> str:
        return protocols.state_name(self.protocol, self.state)


@dataclass
class Collection:
    """One collection over the node's namespaces."""

    samples: list[SocketSample] = field(default_factory=list)
    duration: float = 0.0                                  # seconds, all namespaces
    netns_scanned: int = 0
    per_netns: dict[str, int] = field(default_factory=dict)  # ident -> sockets counted
    errors: list[str] = field(default_factory=list)        # namespaces that could not be read
    unreachable: list[str] = field(default_factory=list)   # namespaces seen but not openable

    def summary(self) -> str:
        return (f"{len(self.samples)} sockets in {self.netns_scanned} netns, "
                f"{self.duration * 1000:.1f} ms" + (f", {len(self.errors)} errors" if self.errors else ""))


def parse(data: bytes, netns: str) -> list[SocketSample]:
    """The records of one iterator read."""
    out = []
    usable = len(data) - len(data) % _REC.size
    for (cookie, sent, received, fe, be, srtt, retrans, drops, family, proto,
         state) in _REC.iter_unpack(memoryview(data)[:usable]):
        out.append(SocketSample(netns, cookie, fe, be, protocols.name_of(proto), family, state,
                                sent, received, srtt, retrans, drops))
    return out


class SocketStatsCollector(IterRunner):
    """Collects per-socket statistics of load-balanced flows on this node.

    pin_dir: the agent's pin directory (its `flows` map is used).
    netns:   None = every namespace on the node at each collection; else
             only these namespace paths.
    cache:   build cache directory (default bpfobj.cache_dir()).

    Loads once (build is cached across processes); collect() may be called
    from any thread, calls are serialized. close() releases the programs.
    """

    error = SocketStatsError
    what = "collector"
    thread_name = "socklb-sockstats"
    # Nothing is destroyed here, so a record rolled back by the kernel is
    # simply shown again: read in larger chunks than termination does.
    read_size = 64 * 1024

    def __init__(self, pin_dir: str | Path, netns: Iterable[str | Path] | None = None,
                 cache: Path | None = None):
        super().__init__(pin_dir, netns, cache)
        self.last: Collection | None = None
        t0 = time.monotonic()
        self._obj = self.load(self.build(SOURCE), PROGRAMS)
        self.load_seconds = time.monotonic() - t0

    def collect(self) -> list[SocketSample]:
        """Every counted socket in every namespace (see collect_report() for
        timing and per-namespace errors, also kept in self.last)."""
        return self.collect_report().samples

    def collect_report(self, hooks: Hooks | None = None) -> Collection:
        """One collection; hooks (iterrun.Hooks) observe it."""
        hooks = hooks or NO_HOOKS
        with self.loaded() as obj:
            t0 = time.monotonic()

            def scan(ns: Netns) -> list[SocketSample]:
                return (self._parse(self.run_iter(obj, "tcp", hooks), ns, hooks)
                        + self._parse(self.run_iter(obj, "udp", hooks), ns, hooks))

            res = self.scan(scan, hooks)
            rep = Collection(errors=res.errors, unreachable=res.unreachable, netns_scanned=len(res.results))
            seen: set[int] = set()
            for ns, samples in res.results:
                kept = first_seen(samples, seen)
                rep.samples += kept
                rep.per_netns[ns.ident] = len(kept)
            rep.duration = time.monotonic() - t0
            for e in rep.errors:
                log.warning("socket statistics: %s", e)
            log.debug("socket statistics: %s", rep.summary())
            self.last = rep
            return rep

    @staticmethod
    def _parse(data: bytes, ns: Netns, hooks: Hooks) -> list[SocketSample]:
        t = time.perf_counter()
        out = parse(data, ns.ident)
        hooks.parsed(time.perf_counter() - t, len(out))
        return out


def aggregate(samples: Iterable[SocketSample],
              names: Mapping[tuple[int, int], tuple[str, str, int]],
              skipped: list[SocketSample] | None = None) -> list[node_pb2.SocketStats]:
    """Sum samples per (service, backend address, backend port, protocol).

    names maps (frontend_id, backend_id) -> (service, backend_address,
    backend_port). Samples of flows it does not name (a backend or frontend
    no longer programmed) are left out, appended to `skipped` if given.

    sockets, states (state name -> sockets), bytes_sent, bytes_received,
    retransmits and drops are sums; srtt_us is the mean over the TCP sockets
    that have an RTT sample (srtt > 0), rounded to the microsecond. Sorted by
    service, address, port, protocol."""
    groups: dict[tuple[str, str, int, str], node_pb2.SocketStats] = {}
    rtt: dict[tuple[str, str, int, str], list[int]] = {}
    for s in samples:
        name = names.get((s.frontend_id, s.backend_id))
        if name is None:
            if skipped is not None:
                skipped.append(s)
            continue
        service, address, port = name
        key = (service, address, int(port), s.protocol)
        st = groups.get(key)
        if st is None:
            st = groups[key] = node_pb2.SocketStats(
                service=service, backend_address=address, backend_port=int(port),
                protocol=protocols.pb_of_name(s.protocol))
            rtt[key] = [0, 0]
        st.sockets += 1
        st.states[s.state_name] += 1
        st.bytes_sent += s.bytes_sent
        st.bytes_received += s.bytes_received
        st.retransmits += s.retransmits
        st.drops += s.drops
        if s.protocol == "tcp" and s.srtt_us > 0:
            rtt[key][0] += s.srtt_us
            rtt[key][1] += 1
    out = []
    for key in sorted(groups):
        st = groups[key]
        total, n = rtt[key]
        if n:
            st.srtt_us = (total + n // 2) // n
        out.append(st)
    return out
