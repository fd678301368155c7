"""Socket termination: find the load-balanced sockets whose flow record points
at a target (a backend, or a whole frontend) in every network namespace of the
node, and destroy them so their clients get an error and reconnect through
the load balancer.

    with Terminator(pin_dir) as t:                       # method="auto"
        rep = t.run([Target.backend(7)])                 # destroy
        rep = t.run([Target.backend(7)],                 # destroy, prefiltered
                    dsts=[("10.0.0.7", 8080)])           #   on the backends' address
        rep = t.run([Target.frontend(3)], dry_run=True)  # list only
        rep = t.count([Target.backend(7)])               # counters only
        found = t.list_cgroups({cgroup_id, ...})         # policy: the sockets of these cgroups
        rep = t.destroy_cookies(condemned)               #   and destroy some of them by cookie
        denied, rep = t.judge_cgroups({cgroup_id: set_id})  # policy judged in the kernel, one walk

Finding: the iter/tcp and iter/udp programs of bpf/sock_destroy.bpf.c, which
read the agent's `flows` socket storage (the pinned map is reused, not copied)
and match records against the `targets` map. Iterators see the sockets of the
network namespace the iterator fd is created in, so a run enters each
namespace (the host's, every /proc/*/ns/net, every /run/netns/*, deduplicated
by the nsfs inode) with setns() in dedicated threads: one per CPU (at most
netns.MAX_WORKERS), each taking the next namespace not yet walked, so the
kernel walks of several namespaces overlap (the iterator read releases the
GIL); workers=1 or $SOCKLB_NETNS_WORKERS=1 forces one thread walking them in
turn. The report lists the namespaces in the order they were found either way.
A namespace whose sockstat counts no hashed TCP (UDP) socket is not walked
with that protocol's iterators (netns.sockets_in_use): with a shared hash
such a walk costs the whole node's table and finds nothing.

Destroying, by method:
  kfunc    bpf_sock_destroy() from the iterator itself (kernel >= 6.5)
  netlink  the same iterators in dry-run mode (built without the kfunc, so they
           load on older kernels) give 5-tuple + cookie; each socket is then
           destroyed with inet_diag SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)
           from a netlink socket opened inside its namespace (sockdiag.py).
  auto     kfunc when the kernel's BTF has FUNC bpf_sock_destroy and the
           program loads, else netlink when its probe passes, else
           TerminationUnavailable naming both reasons.

Targets: Target(frontend_id=0, backend_id=B) = every flow to backend B;
Target(F, 0) = every flow of frontend F; Target(F, B) = exact. A socket counts
for the most specific key present: (F, B), then (0, B), then (F, 0).

What matches: a socket whose flow record is live and whose connected peer is
the record's backend. Connections made directly to a backend address have no
live record and are never touched; unconnected UDP sockets are skipped (each
datagram is balanced anew, there is nothing to reset).

Prefilter (`dsts`): run(targets, dsts=[(address, port), ...]) writes the
backends the targets point at into the `dsts` map; a socket whose connected
peer is not one of them is skipped before its flow record (socket storage)
is looked up, which is most of the per-socket cost of the walk. Addresses
are strings, ipaddress objects or 4 or 16 raw bytes, encoded by the model's
socklb.lb.addresses.addr16 (IPv4 v4-mapped: an IPv4 backend matches IPv4
sockets and v4-mapped IPv6 ones); ports in host order. The
hint must cover every backend of the targets: a matching socket whose peer is
not listed is not touched. Without dsts (None) every socket is looked up.

Further passes: on kernels whose TCP (UDP) iterator resumes a bucket by socket
cookie (bpf_iter_tcp_resume / bpf_iter_udp_resume, Linux 6.17 / 6.16; probed
in the kernel's BTF and /proc/kallsyms), destroying sockets under the
iterator skips nothing and each namespace is walked once. On older kernels
the iterator resumes a bucket by offset, so removing sockets under it can
skip a neighbour: a namespace is then scanned again while a pass destroyed
something (at most MAX_PASSES). Sockets that keep arriving (the backend
still in the service) are not chased: remove or drain the backend first,
then terminate.

Policy (list_cgroups, destroy_cookies): the socket programs of the same
object list the TCP sockets (every state but LISTEN) and connected UDP
sockets whose cgroup v2 (the creator's) is one of the given ids, whatever
they are connected to, with their flow when they carry a live one; user
space judges them (termjobs / policyjobs.py) and destroys the condemned by
cookie: kfunc, the iterators again with the cookies in the `cookies` map
(passes as above); netlink, SOCK_DESTROY by 5-tuple and cookie in each
socket's namespace. A socket closed since the listing is just not found;
cookies are never reused, so no other socket is hit.

Policy judged in the kernel (judge_cgroups): the judge programs of the same
object take the socket programs' walk, select the sockets of the given
cgroups (`judge_sets`: cgroup id -> the kernel id of its workload's set in
the applied state) and decide each as the connect hook does
(bpf/policy_verdict.h, one body with bpf/sock_lb.c) against the agent's
pinned `services`, `policy_frontends` and `policy_prefixes` (reused like
`flows`), and, for a destination neither decides, what the cgroup's
workload (`judge_workloads`: cgroup id -> workload id, for sets with FQDN
rules) learned in the pinned `dns_learned` against the set's rules in
`policy_fqdns` (docs/fqdn.md, "Terminations"); only the denied emit a record, after bpf_sock_destroy() (kfunc;
netlink: listed, then destroy_cookies()). They load with the object when
they can (judge_unavailable: why not, the policy_kernel_judge probe); a
Terminator whose policy_judge is "user" ($SOCKLB_POLICY_JUDGE, the agent's
--policy-judge) keeps them but tells policy jobs to judge in user space
(kernel_judge False). Passes as above; judge_stats (listing.judged) counts
the sockets each pass judged.

Records: Report.sockets is built lazily: the raw 64-byte records are kept
and a SocketRecord (addresses formatted) is made only for the items read, so
rep.sockets[:100] costs 100 of them whatever the count; run(max_records=N)
keeps at most N records at all (the counters still count everything).

The object is compiled at run time with clang against a vmlinux.h that
bpftool generates from /sys/kernel/btf/vmlinux; both are cached (keyed by a
hash of the sources, the compiler and the kernel build) in $SOCKLB_CACHE_DIR,
else $XDG_CACHE_HOME/socklb, else /var/cache/socklb (root) or ~/.cache/socklb.
Building, loading and the namespace runner are shared with socket statistics
and the flow reader (iterrun.py); their errors surface here as
TerminationError.

Where things are: the records, maps, limits and modes shared with the BPF
programs in bpf/sock_destroy.h, mirrored by layout.py (TermRec, TermKey,
TermMode, TERM_DSTS_MAX, ...); the typed API (Target, Report, ...) in
termtypes.py, re-exported here; the netlink client and its probe in
sockdiag.py.

Limits: namespaces are found through processes and /run/netns only (one held
only by a bind mount elsewhere or an open fd, or entered by a single thread,
is missed; one whose /proc entry is not readable is listed in
Report.unreachable). Each TCP iterator pass walks the kernel's established
hash (shared by every namespace unless net.ipv4.tcp_child_ehash_entries was
set before the namespace was created: netns.shared_ehash, the
tcp_ehash_per_netns capability), so a run costs about one walk of the node's
whole TCP table per namespace even where nothing matches; the threads divide
that by the CPUs at best.
"""
from __future__ import annotations

import ctypes as ct
import enum
import errno
import logging
import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Mapping

from socklb.lb.addresses import addr16, check_port, parse_ip

from . import bpfobj, kernel, layout, sockdiag
from .iterrun import NO_HOOKS, Hooks, IterRunner, first_seen, raising
from .layout import JudgeStats, TermCfg, TermDst, TermKey, TermMode, TermRec, TermSockRec, TermVal
from .netns import Netns, netns_workers, sockets_in_use
# The typed API, imported from here by the rest of socklb.
from .termtypes import (CookieReport, ListedSocket, NetnsCount, Report, SocketListing, SocketRecord,  # noqa: F401
                        SocketRecords, Target, TargetCount)

log = logging.getLogger(__name__)

SOURCE = "sock_destroy.bpf.c"
# "tcp"/"udp": the flow programs (targets); "sock_*": the socket programs (cgroups, cookies).
PROGRAMS = {"tcp": "socklb_term_tcp", "udp": "socklb_term_udp",
            "sock_tcp": "socklb_term_sock_tcp", "sock_udp": "socklb_term_sock_udp"}
SOCK_KEYS = {socket.IPPROTO_TCP: "sock_tcp", socket.IPPROTO_UDP: "sock_udp"}
# The judge programs (judge_cgroups): the socket programs' walk with the policy decided in the kernel.
JUDGE_PROGRAMS = {"judge_tcp": "socklb_term_judge_tcp", "judge_udp": "socklb_term_judge_udp"}
# The agent's pinned maps they read, with the key and value sizes this build expects.
JUDGE_REUSE = {"services": (ct.sizeof(layout.SvcKey), ct.sizeof(layout.SvcVal)),
               "policy_frontends": (ct.sizeof(layout.PolicyFeKey), ct.sizeof(layout.PolicyVerdict)),
               "policy_prefixes": (ct.sizeof(layout.PolicyPrefixKey), ct.sizeof(layout.PolicyRules)),
               "policy_fqdns": (ct.sizeof(layout.PolicyFqdnKey), ct.sizeof(layout.PolicyRules)),
               "dns_learned": (ct.sizeof(layout.DnsLearnedKey), ct.sizeof(layout.DnsLearnedVal))}
# Who judges a policy job's sockets: "auto" (the kernel when the judge
# programs load, else user space) or "user" (always user space).
POLICY_JUDGE_ENV = "SOCKLB_POLICY_JUDGE"
POLICY_JUDGES = ("auto", "user")
CGROUPS_MAX = layout.TERM_CGROUPS_MAX  # most cgroups a listing may name
COOKIES_MAX = layout.TERM_COOKIES_MAX  # cookies per iterator run (destroy_cookies runs more for more)
KFUNC = "bpf_sock_destroy"
MAX_PASSES = 4  # iterator passes per namespace when destroying, on kernels without the resume fix
DSTS_MAX = layout.TERM_DSTS_MAX  # most destinations a run's dsts may list
# Functions the kernels with bpf_iter_{tcp,udp} resume-by-cookie introduced.
RESUME_FUNCS = {"tcp": "bpf_iter_tcp_resume", "udp": "bpf_iter_udp_resume"}


class TerminationError(bpfobj.BpfObjError):
    """Building, loading or running the termination programs failed."""


class TerminationUnavailable(TerminationError):
    """Neither bpf_sock_destroy() nor netlink SOCK_DESTROY can be used here."""

    probes: dict = {}  # method -> why it cannot be used


class Method(str, enum.Enum):
    AUTO = "auto"
    KFUNC = "kfunc"
    NETLINK = "netlink"


# --- the loaded object -------------------------------------------------------------------------

def build_object(kfunc: bool = True, cache: Path | None = None) -> Path:
    """Compile bpf/sock_destroy.bpf.c, with bpf_sock_destroy() or (kfunc
    False) without it, or reuse the cached object."""
    with raising(TerminationError):
        return bpfobj.build(SOURCE, () if kfunc else ("SOCKLB_NO_KFUNC",), cache,
                            suffix="" if kfunc else "-nokfunc")


class _Object(bpfobj.IterObject):
    """The loaded termination object: programs attached as iterators, the
    agent's flows map reused, targets/term_cfg/dsts maps of its own."""

    def __init__(self, path: Path, pin_dir: Path, programs=PROGRAMS, map_keys=(), error=TerminationError,
                 reuse=None):
        super().__init__(path, pin_dir, programs, map_keys, error, reuse)
        try:
            self.judge_sets = kernel.BpfMap(self.map_fd("judge_sets"), ct.c_uint64, ct.c_uint32, "judge_sets")
            self.judge_workloads = kernel.BpfMap(self.map_fd("judge_workloads"), ct.c_uint64, ct.c_uint32,
                                                 "judge_workloads")
            self.judge_stats = kernel.BpfMap(self.map_fd("judge_stats"), ct.c_uint32, JudgeStats, "judge_stats")
            self.targets = kernel.BpfMap(self.map_fd("targets"), TermKey, TermVal, "targets")
            self.cfg = kernel.BpfMap(self.map_fd("term_cfg"), ct.c_uint32, TermCfg, "term_cfg")
            self.dsts = kernel.BpfMap(self.map_fd("dsts"), TermDst, ct.c_uint8, "dsts")
            self.cgroups = kernel.BpfMap(self.map_fd("cgroups"), ct.c_uint64, ct.c_uint8, "cgroups")
            self.cookies = kernel.BpfMap(self.map_fd("cookies"), ct.c_uint64, ct.c_uint8, "cookies")
            self._selected: list[tuple[kernel.BpfMap, ct.c_uint64]] = []  # keys select_sockets wrote
        except Exception:
            self.close()
            raise

    def set_targets(self, targets: Iterable[Target], mode: TermMode,
                    dsts: Iterable[TermDst] | None = None) -> None:
        """Targets, mode and the prefilter (None: off) of the next passes."""
        for k in list(self.targets.keys()):
            self.targets.delete(k)
        for t in targets:
            self.targets.update(TermKey(t.frontend_id, t.backend_id), TermVal())
        for k in list(self.dsts.keys()):
            self.dsts.delete(k)
        if dsts is not None:
            for d in dsts:
                self.dsts.update(d, ct.c_uint8(1))
        self.cfg.update(ct.c_uint32(0), TermCfg(int(mode), 0 if dsts is None else layout.TERM_F_DSTS))

    def select_sockets(self, mode: TermMode, cgroups: Iterable[int] | None = (),
                       cookies: Iterable[int] | None = None) -> None:
        """What the socket programs select next: the sockets of `cgroups`
        (None: of every cgroup), or, cookies given, those sockets (the only
        ones they destroy, in DESTROY mode). Undone by clear_sockets()."""
        self.clear_sockets()
        one = ct.c_uint8(1)
        if cookies is not None:
            flags, keys, m = layout.TERM_F_COOKIES, cookies, self.cookies
        elif cgroups is None:
            flags, keys, m = layout.TERM_F_ALL_CGROUPS, (), self.cgroups
        else:
            flags, keys, m = 0, cgroups, self.cgroups
        for k in keys:
            key = ct.c_uint64(k)
            m.update(key, one)
            self._selected.append((m, key))
        self.cfg.update(ct.c_uint32(0), TermCfg(int(mode), flags))

    def select_judged(self, mode: TermMode, cgroup_sets: dict[int, int],
                      cgroup_workloads: Mapping[int, int] | None = None) -> None:
        """What the judge programs judge next: the sockets of these cgroups,
        each by the kernel policy set id given, and for FQDN rules by what
        the workload id given learned; counters zeroed. Undone by
        clear_sockets()."""
        self.clear_sockets()
        for cg, sid in cgroup_sets.items():
            key = ct.c_uint64(cg)
            self.judge_sets.update(key, ct.c_uint32(sid))
            self._selected.append((self.judge_sets, key))
        for cg, wid in (cgroup_workloads or {}).items():
            key = ct.c_uint64(cg)
            self.judge_workloads.update(key, ct.c_uint32(wid))
            self._selected.append((self.judge_workloads, key))
        self.judge_stats.update(ct.c_uint32(0), JudgeStats())
        self.cfg.update(ct.c_uint32(0), TermCfg(int(mode), 0))

    def judged(self) -> JudgeStats:
        return self.judge_stats.lookup(ct.c_uint32(0)) or JudgeStats()

    def clear_sockets(self) -> None:
        for m, key in self._selected:
            m.delete(key)
        self._selected.clear()

    def target_counts(self) -> dict[Target, TermVal]:
        return {Target(k.frontend_id, k.backend_id): v for k, v in self.targets.items()}


# --- helpers -------------------------------------------------------------------------------------

def dst_key(addr, port: int) -> TermDst:
    """The `dsts` key of a backend: addr an address literal (IPv6 with or
    without brackets), an ipaddress object, or 4 or 16 packed bytes (network
    order, IPv4 as such or v4-mapped); port in host order. ValueError for
    anything else."""
    if isinstance(addr, str):
        addr = parse_ip(addr, "dsts address")
    raw = addr16(bytes(addr) if isinstance(addr, bytearray) else addr)
    k = TermDst()
    ct.memmove(k.addr, raw, 16)
    k.port = socket.htons(check_port(int(port), "dsts port", allow_zero=False))
    return k


_resume_cache: dict[str, bool] = {}


def resume_fixed(proto: str) -> bool:
    """Whether this kernel's bpf_iter_<proto> resumes a bucket by socket
    cookie (so destroying sockets under it skips none): the function the fix
    introduced is in the kernel's BTF or /proc/kallsyms. Not found (e.g. an
    inlined bpf_iter_udp_resume) only costs further passes of that iterator
    after a pass that destroyed something."""
    if proto in _resume_cache:
        return _resume_cache[proto]
    name = RESUME_FUNCS[proto]
    found = False
    try:
        found = bpfobj.btf_has_func(name)
    except bpfobj.BpfObjError:
        pass
    if not found:
        try:
            with open("/proc/kallsyms") as f:
                found = any(line.rstrip().split(" ")[-1] == name for line in f if name in line)
        except OSError:
            pass
    _resume_cache[proto] = found
    return found


def parse(data: bytes) -> list[TermRec]:
    """The records of one iterator read."""
    size = ct.sizeof(TermRec)
    return [TermRec.from_buffer_copy(data, i) for i in range(0, len(data) - size + 1, size)]


def _sockdiag_socket(r: TermRec) -> sockdiag.Socket:
    return sockdiag.Socket(r.family, r.proto, socket.ntohs(r.sport), socket.ntohs(r.dport),
                           bytes(r.src), bytes(r.dst), r.cookie)


_SOCK_REC = layout.record_struct(TermSockRec)


def _read_sockets(netns: str, hooks: Hooks, data: bytes) -> tuple[list[ListedSocket], list[int]]:
    t = time.perf_counter()
    found = parse_sockets(data, netns)
    hooks.parsed(time.perf_counter() - t, len(found))
    return [s for s, _ in found], [r for _, r in found]


def parse_sockets(data: bytes, netns: str) -> list[tuple[ListedSocket, int]]:
    """The records of one socket-program read, each with its result; a torn
    tail is ignored."""
    size = _SOCK_REC.size
    ntohs = socket.ntohs
    return [(ListedSocket(netns, cookie, cgroup_id, family, proto, state, src, ntohs(sport), dst, ntohs(dport),
                          frontend_id, backend_id, vip, ntohs(vip_port)), result)
            for (cookie, cgroup_id, src, dst, vip, sport, dport, vip_port, family, proto, state, _pad, frontend_id,
                 backend_id, result) in _SOCK_REC.iter_unpack(data[:len(data) // size * size])]


# --- the terminator ------------------------------------------------------------------------------

class Terminator(IterRunner):
    """Finds and destroys the sockets of load-balanced flows on this node
    (run, count), and for policy the sockets of cgroups (list_cgroups,
    destroy_cookies).

    pin_dir: the agent's pin directory (its `flows` map is used).
    method:  "auto" | "kfunc" | "netlink" (see the module doc).
    netns:   None = every namespace on the node; else only these ns paths
             (plus nothing else: the host's is not added).
    workers: threads the namespaces are walked in (None: $SOCKLB_NETNS_WORKERS,
             else one per CPU, see netns.netns_workers; 1: one after another).

    Benchmarks observe a run through iterrun.Hooks (run(..., hooks=)), and
    measure the floor under run() with one_pass().
    """

    error = TerminationError
    what = "terminator"
    thread_name = "socklb-terminate"

    def __init__(self, pin_dir: str | Path, method: str | Method = Method.AUTO,
                 netns: Iterable[str | Path] | None = None, cache: Path | None = None,
                 policy_judge: str | None = None, workers: int | None = None):
        super().__init__(pin_dir, netns, cache, workers=netns_workers(workers))
        self.requested = Method(method)
        self.method: Method | None = None
        self.policy_judge = policy_judge or os.environ.get(POLICY_JUDGE_ENV) or "auto"
        if self.policy_judge not in POLICY_JUDGES:
            raise ValueError(f"policy_judge {self.policy_judge!r}: one of {', '.join(POLICY_JUDGES)}")
        # None: the judge programs loaded (judge_cgroups works; the probe); else why not
        self.judge_unavailable: str | None = "not loaded"
        self.load_seconds = 0.0
        self.unavailable: dict[str, str] = {}
        self.probes: dict[str, str | None] = {}  # method -> None (works) or why not, for every method
        t0 = time.monotonic()
        with raising(TerminationError):
            self._load()
        self.load_seconds = time.monotonic() - t0

    # -- loading: the method

    def _object(self, path: Path, judge: bool) -> _Object:
        """The object at path; judge: with the judge programs if they load
        (self.judge_unavailable says whether they did), else without."""
        if not judge:
            return self.load(path, PROGRAMS, cls=_Object)
        try:
            obj = self.load(path, {**PROGRAMS, **JUDGE_PROGRAMS}, cls=_Object, reuse=JUDGE_REUSE)
        except TerminationError as e:
            self.judge_unavailable = f"the judge programs do not load: {bpfobj.first_line(e)}"
            log.info("policy judge: %s; policy jobs judge in user space", self.judge_unavailable)
            log.debug("policy judge load failure: %s", e)
            return self.load(path, PROGRAMS, cls=_Object)
        self.judge_unavailable = None
        return obj

    def _kfunc_object(self, judge: bool = True) -> tuple[_Object | None, str | None]:
        """The object with bpf_sock_destroy(), or None and why it cannot load."""
        if not bpfobj.btf_has_func(KFUNC):
            return None, f"the kernel's BTF has no FUNC {KFUNC} (needs Linux >= 6.5)"
        try:
            return self._object(build_object(kfunc=True, cache=self.cache), judge), None
        except TerminationError as e:
            return None, f"the {KFUNC} program does not load: {e}"

    def _netlink_object(self) -> tuple[_Object | None, str | None]:
        """The object without the kfunc (finds, destroys nothing), or None
        and why netlink SOCK_DESTROY cannot be used."""
        why = sockdiag.probe()
        if why:
            return None, why
        return self._object(build_object(kfunc=False, cache=self.cache), True), None

    def _load(self) -> None:
        order = {Method.AUTO: (Method.KFUNC, Method.NETLINK), Method.KFUNC: (Method.KFUNC,),
                 Method.NETLINK: (Method.NETLINK,)}[self.requested]
        for m in order:
            self._obj, why = self._kfunc_object() if m is Method.KFUNC else self._netlink_object()
            self.probes[m.value] = why
            if why is None:
                self.method = m
                log.info("socket termination: method %s", m.value)
                break
            self.unavailable[m.value] = why
            log.info("socket termination: %s unavailable: %s", m.value, why)
        # The methods not tried are probed too, so that the node reports
        # every feature it has, whichever it uses.
        if Method.NETLINK.value not in self.probes:
            self.probes[Method.NETLINK.value] = sockdiag.probe()
        if Method.KFUNC.value not in self.probes:
            obj, why = self._kfunc_object(judge=False)
            if obj is not None:
                obj.close()
            self.probes[Method.KFUNC.value] = why if why is None else bpfobj.first_line(why)
        if self.method is None:
            e = TerminationUnavailable(
                "cannot destroy sockets on this node: "
                + "; ".join(f"{k}: {v}" for k, v in self.unavailable.items()))
            e.probes = dict(self.probes)
            raise e

    # -- running

    def run(self, targets: Iterable[Target], dry_run: bool = False,
            dsts: Iterable[tuple] | None = None, max_records: int | None = None,
            hooks: Hooks | None = None) -> Report:
        """Destroy (or with dry_run only list) the sockets of flows matching
        any target, in every network namespace.

        dsts:        None, or the backends the targets point at, as (address,
                     port) pairs (see dst_key): sockets connected elsewhere
                     are skipped before their flow record is read. Must cover
                     every backend of the targets.
        max_records: keep at most this many socket records in the report
                     (None: all); found/destroyed/failed/per_target count all.
        hooks:       iterrun.Hooks told of the run's steps (benchmarks).
        """
        return self._run(list(targets), TermMode.DRY_RUN if dry_run else TermMode.DESTROY, dsts, max_records,
                         hooks or NO_HOOKS)

    def count(self, targets: Iterable[Target], dsts: Iterable[tuple] | None = None,
              hooks: Hooks | None = None) -> Report:
        """Stats mode: per-target counts of matching sockets, no records, nothing destroyed."""
        return self._run(list(targets), TermMode.STATS, dsts, None, hooks or NO_HOOKS)

    def one_pass(self, targets: Iterable[Target], protos: Iterable[str] = ("tcp", "udp")) -> list[TermRec]:
        """The floor under run(), for benchmarks: the iterators of `protos`
        read once each in DESTROY mode in the calling thread's namespace,
        records parsed; no further pass, no netlink, no report. Destroys
        (with the kfunc method) what it finds."""
        if self.method is not Method.KFUNC:
            raise TerminationError("one_pass() destroys with the kfunc method only")
        targets = list(targets)
        with self.loaded() as obj:
            obj.set_targets(targets, TermMode.DESTROY)
            return parse(b"".join(obj.read_iter(p, self.read_size) for p in protos))

    def _passes(self, mode: TermMode) -> dict[str, int]:
        """Iterator passes per namespace and protocol: 1, or MAX_PASSES when
        destroying on a kernel whose iterator can skip a socket after one
        was destroyed under it (further passes stop once one destroys nothing)."""
        if mode is not TermMode.DESTROY:
            return {"tcp": 1, "udp": 1}
        return {p: 1 if resume_fixed(p) else MAX_PASSES for p in ("tcp", "udp")}

    @staticmethod
    def _dst_keys(dsts: Iterable[tuple] | None) -> list[TermDst] | None:
        if dsts is None:
            return None
        keys = list({bytes(k): k for k in (dst_key(a, p) for a, p in dsts)}.values())
        if len(keys) > DSTS_MAX:
            raise ValueError(f"{len(keys)} destinations, at most {DSTS_MAX}")
        return keys

    def _run(self, targets: list[Target], mode: TermMode, dsts: Iterable[tuple] | None,
             max_records: int | None, hooks: Hooks) -> Report:
        if not targets:
            raise ValueError("no targets")
        dst_keys = self._dst_keys(dsts)
        if max_records is not None and max_records < 0:
            raise ValueError("max_records < 0")
        with self.loaded() as obj:
            via_netlink = mode is TermMode.DESTROY and self.method is Method.NETLINK
            rep = Report(method="none" if mode is not TermMode.DESTROY else self.method.value,
                         dry_run=mode is not TermMode.DESTROY)
            t0 = time.monotonic()
            # The netlink object cannot destroy: it always runs as a dry run.
            obj.set_targets(targets, TermMode.DRY_RUN if via_netlink else mode, dst_keys)
            walk = partial(self._walk_netns, obj, self._passes(mode), via_netlink, hooks)
            res = self.scan(walk, hooks)
            rep.duration = time.monotonic() - t0
            rep.errors, rep.unreachable = res.errors, res.unreachable
            _tally(rep, res.results, targets, max_records,
                   obj.target_counts() if mode is TermMode.STATS else None)
            log.info("socket termination: %s", rep.summary())
            return rep

    # -- one namespace (in the namespace thread)

    def _walk_netns(self, obj: _Object, passes: dict[str, int], via_netlink: bool, hooks: Hooks,
                    ns: Netns) -> tuple[list[tuple[TermRec, int]], float, int]:
        """Every matching socket of the namespace (with its result) after
        the passes of each iterator; seconds spent; passes made."""
        t = time.monotonic()
        out: list[tuple[TermRec, int]] = []
        n = 0
        inuse = sockets_in_use()
        for proto in ("tcp", "udp"):
            if inuse is not None and not inuse[proto]:
                continue  # no socket of the protocol here: the walk (of a maybe shared hash) would find nothing
            recs, k = self._walk_proto(obj, proto, passes[proto], hooks,
                                       partial(self._read_flows, via_netlink, hooks))
            out += recs
            n += k
        return out, time.monotonic() - t, n

    def _walk_proto(self, obj: _Object, key: str, passes: int, hooks: Hooks,
                    read: Callable[[bytes], tuple[list, list[int]]]) -> tuple[list[tuple], int]:
        """One iterator's passes: (record, result) once per socket (the
        last result where a later pass retried it), and how many passes.
        read(data): the records of one read and their results."""
        out: list[tuple] = []
        seen: dict[int, int] = {}  # cookie -> index in out
        for i in range(1, passes + 1):
            found, results = read(self.run_iter(obj, key, hooks))
            if passes == 1:
                return list(zip(found, results)), 1
            for r, res in zip(found, results):
                j = seen.get(r.cookie)
                if j is None:
                    seen[r.cookie] = len(out)
                    out.append((r, res))
                elif out[j][1] != 0:
                    out[j] = (r, res)
            # Without the resume fix, destroying unhashes sockets under the
            # iterator, which resumes a bucket by offset and so can skip one:
            # go again while a pass destroys something.
            if 0 not in results:
                return out, i
        return out, passes

    def _read_flows(self, via_netlink: bool, hooks: Hooks, data: bytes) -> tuple[list[TermRec], list[int]]:
        t = time.perf_counter()
        found = parse(data)
        hooks.parsed(time.perf_counter() - t, len(found))
        return found, self._destroy_netlink(found, hooks) if via_netlink and found else [r.result for r in found]

    @staticmethod
    def _destroy_netlink(found: list[TermRec], hooks: Hooks) -> list[int]:
        t = time.perf_counter()
        results = sockdiag.destroy([_sockdiag_socket(r) for r in found])
        hooks.destroyed(time.perf_counter() - t, len(found))
        return results

    # -- policy: the sockets of cgroups, destroyed by cookie

    def list_cgroups(self, cgroup_ids: Iterable[int] | None, hooks: Hooks | None = None) -> SocketListing:
        """The TCP sockets (any state but LISTEN) and connected UDP sockets
        created in these cgroups (None: in any cgroup), in every network
        namespace, once each. Destroys nothing."""
        ids = None if cgroup_ids is None else sorted(set(cgroup_ids))
        if ids is not None and len(ids) > CGROUPS_MAX:
            raise ValueError(f"{len(ids)} cgroups, at most {CGROUPS_MAX}")
        out = SocketListing()
        if ids == []:
            return out
        hooks = hooks or NO_HOOKS
        t0 = time.monotonic()
        with self.loaded() as obj:
            obj.select_sockets(TermMode.DRY_RUN, cgroups=ids)
            try:
                res = self.scan(partial(self._walk_sockets, obj, ("sock_tcp", "sock_udp"), 1, None, hooks), hooks)
            finally:
                obj.clear_sockets()
        out.duration = time.monotonic() - t0
        out.errors, out.unreachable = res.errors, res.unreachable
        seen: set[int] = set()
        for ns, (found, seconds, _passes) in res.results:
            out.netns_scanned += 1
            out.per_netns[ns.ident] = NetnsCount(ns.path, found=len(found), seconds=seconds)
            out.sockets += first_seen((s for s, _ in found), seen)
        log.debug("socket listing: %s", out.summary())
        return out

    def destroy_cookies(self, sockets: Iterable[ListedSocket], dry_run: bool = False,
                        hooks: Hooks | None = None) -> CookieReport:
        """Destroy these sockets (a listing's), found by cookie in their
        namespaces; dry_run: only find which are still open. kfunc: the
        socket programs with the cookies in `cookies`; netlink: SOCK_DESTROY
        by 5-tuple and cookie."""
        by_ns: dict[str, list[ListedSocket]] = {}
        for s in {s.cookie: s for s in sockets}.values():
            by_ns.setdefault(s.netns, []).append(s)
        asked = sum(len(v) for v in by_ns.values())
        rep = CookieReport(method="none" if dry_run else self.method.value, dry_run=dry_run, asked=asked)
        if not asked:
            return rep
        hooks = hooks or NO_HOOKS
        t0 = time.monotonic()
        via_netlink = not dry_run and self.method is Method.NETLINK
        mode = TermMode.DRY_RUN if dry_run else TermMode.DESTROY
        with self.loaded() as obj:
            if via_netlink:
                self._tally_cookies(rep, self.scan(partial(self._destroy_netlink_in, by_ns, hooks), hooks))
            else:
                cookies = [s.cookie for v in by_ns.values() for s in v]
                passes = self._passes(mode)
                for i in range(0, len(cookies), COOKIES_MAX):
                    chunk = cookies[i:i + COOKIES_MAX]
                    obj.select_sockets(mode, cookies=chunk)
                    try:
                        in_chunk = set(chunk)
                        wanted = {ident: v for ident, v in by_ns.items() if any(s.cookie in in_chunk for s in v)}
                        walk = partial(self._walk_sockets, obj, None, passes, wanted, hooks)
                        self._tally_cookies(rep, self.scan(walk, hooks))
                    finally:
                        obj.clear_sockets()
        rep.duration = time.monotonic() - t0
        log.info("socket termination by cookie: %s", rep.summary())
        return rep

    @property
    def kernel_judge(self) -> bool:
        """Whether policy jobs are judged in the kernel: the judge programs
        loaded and user space was not asked for (policy_judge "user")."""
        return self.judge_unavailable is None and self.policy_judge != "user"

    @property
    def judge_way(self) -> str:
        """"kernel", or "user: <why>" (the node's policy_judge capability)."""
        if self.kernel_judge:
            return "kernel"
        if self.policy_judge == "user":
            return f"user: forced ({POLICY_JUDGE_ENV}=user or --policy-judge user)"
        return f"user: {self.judge_unavailable}"

    def judge_cgroups(self, cgroup_sets: Mapping[int, int], destroy: bool = True, hooks: Hooks | None = None,
                      cgroup_workloads: Mapping[int, int] | None = None,
                      ) -> tuple[SocketListing, CookieReport | None]:
        """Policy judged in the kernel, in one walk: the sockets of these
        cgroups (cgroup id -> the kernel id of its workload's policy set in
        the applied state: the policy maps hold that one) that the set
        denies, judged as the connect hook judges (bpf/policy_verdict.h);
        cgroup_workloads (cgroup id -> workload id in the policy maps, for
        sets with FQDN rules): a destination no frontend or prefix decides
        is kept when that workload learned it through a pattern the set
        allows the port for, expired or not.
        kfunc: destroyed in the same walk; the listing holds them and the
        CookieReport their results. netlink: only listed (CookieReport
        None): destroy them with destroy_cookies(); destroy=False: only
        listed with either method. listing.judged counts
        the sockets looked at. TerminationError when the judge programs did
        not load (judge_unavailable says why)."""
        if self.judge_unavailable is not None:
            raise TerminationError(f"the kernel judge is unavailable: {self.judge_unavailable}")
        sets = {int(cg): int(sid) for cg, sid in cgroup_sets.items()}
        if len(sets) > CGROUPS_MAX:
            raise ValueError(f"{len(sets)} cgroups, at most {CGROUPS_MAX}")
        if any(not 0 < sid < layout.POL_SET_V4 for sid in sets.values()):
            raise ValueError("policy set ids are in 1..2^31-1")
        out = SocketListing(judged=0)
        if not sets:
            return out, None
        hooks = hooks or NO_HOOKS
        destroy = destroy and self.method is Method.KFUNC
        mode = TermMode.DESTROY if destroy else TermMode.DRY_RUN
        rep = CookieReport(method=self.method.value, dry_run=False) if destroy else None
        t0 = time.monotonic()
        with self.loaded() as obj:
            obj.select_judged(mode, sets, cgroup_workloads)
            try:
                res = self.scan(partial(self._walk_sockets, obj, tuple(JUDGE_PROGRAMS), self._passes(mode), None,
                                        hooks), hooks)
                stats = obj.judged()
            finally:
                obj.clear_sockets()
        out.duration = time.monotonic() - t0
        out.errors, out.unreachable = res.errors, res.unreachable
        out.judged = stats.judged
        seen: set[int] = set()
        for ns, (found, seconds, _passes) in res.results:
            out.netns_scanned += 1
            out.per_netns[ns.ident] = NetnsCount(ns.path, found=len(found), seconds=seconds)
            out.sockets += first_seen((s for s, _ in found), seen)
        if rep is not None:
            self._tally_cookies(rep, res)
            rep.asked = rep.found
            rep.duration = out.duration
        log.info("policy judged in the kernel: %d of %d sockets denied, %s", len(out.sockets), out.judged,
                 rep.summary() if rep is not None else f"{out.duration * 1000:.1f} ms (listed for netlink)")
        return out, rep

    # -- one namespace (in the namespace thread)

    def _walk_sockets(self, obj: _Object, keys: Iterable[str] | None, passes: int | dict[str, int],
                      wanted: dict[str, list[ListedSocket]] | None, hooks: Hooks,
                      ns: Netns) -> tuple[list[tuple[ListedSocket, int]], float, int] | None:
        """The socket programs read in one namespace: (socket, result) once
        each, seconds, passes. keys None: the programs of the protocols of
        the namespace's sockets in `wanted`; None when it has none there
        (not read)."""
        t = time.monotonic()
        if keys is None:
            keys = sorted({SOCK_KEYS[s.proto] for s in (wanted or {}).get(ns.ident, ())})
            if not keys:
                return None
        out: list[tuple[ListedSocket, int]] = []
        n = 0
        inuse = sockets_in_use()
        for key in keys:
            proto = key.rsplit("_", 1)[1]
            if inuse is not None and not inuse[proto]:
                continue  # as in _walk_netns
            todo = passes if isinstance(passes, int) else passes[proto]
            recs, k = self._walk_proto(obj, key, todo, hooks, partial(_read_sockets, ns.ident, hooks))
            out += recs
            n += k
        return out, time.monotonic() - t, n

    @staticmethod
    def _destroy_netlink_in(by_ns: dict[str, list[ListedSocket]], hooks: Hooks,
                            ns: Netns) -> tuple[list[tuple[ListedSocket, int]], float, int] | None:
        mine = by_ns.get(ns.ident)
        if not mine:
            return None
        t = time.monotonic()
        p = time.perf_counter()
        results = sockdiag.destroy([sockdiag.Socket(s.family, s.proto, s.sport, s.dport, s.src, s.dst, s.cookie)
                                    for s in mine])
        hooks.destroyed(time.perf_counter() - p, len(mine))
        # ENOENT: closed since it was listed, not a failure
        found = [(s, r) for s, r in zip(mine, results) if r != -errno.ENOENT]
        return found, time.monotonic() - t, 0

    @staticmethod
    def _tally_cookies(rep: CookieReport, res) -> None:
        """Add one scan's walks (None: a namespace without sockets to find) to the report."""
        rep.errors += res.errors
        rep.unreachable += [u for u in res.unreachable if u not in rep.unreachable]
        for ns, walked in res.results:
            if walked is None:
                continue
            found, seconds, npasses = walked
            if ns.ident not in rep.per_netns:
                rep.netns_scanned += 1
                rep.per_netns[ns.ident] = NetnsCount(ns.path)
            nc = rep.per_netns[ns.ident]
            nc.seconds += seconds
            rep.passes += npasses
            for s, result in found:
                result = None if result == layout.TERM_NOT_TRIED else result
                rep.results[s.cookie] = result
                rep.found += 1
                nc.found += 1
                if result == 0:
                    rep.destroyed += 1
                    nc.destroyed += 1
                elif result is not None:
                    rep.failed += 1


def _tally(rep: Report, walked: list[tuple[Netns, tuple]], targets: list[Target], max_records: int | None,
           stats: dict[Target, TermVal] | None) -> None:
    """Fill the report's counts and records from each namespace's walk;
    stats: the kernel's per-target counters (count()), which replace the
    records' counts."""
    socks = rep.sockets
    room = len(socks) if max_records is None else max_records
    counts: dict[tuple[int, int, int], list[int]] = {}  # (kind, fe, be) -> found, destroyed, failed
    for ns, (recs, seconds, npasses) in walked:
        rep.netns_scanned += 1
        rep.passes += npasses
        nc = rep.per_netns[ns.ident] = NetnsCount(ns.path, seconds=seconds)
        for r, result in recs:
            result = None if result == layout.TERM_NOT_TRIED else result
            if max_records is None or room > 0:
                socks.append_raw(ns.ident, r, result)
                room -= 1
            nc.found += 1
            nc.destroyed += result == 0
            c = counts.get((r.target_kind, r.frontend_id, r.backend_id))
            if c is None:
                c = counts[(r.target_kind, r.frontend_id, r.backend_id)] = [0, 0, 0]
            c[0] += 1
            if result == 0:
                c[1] += 1
            elif result is not None:
                c[2] += 1
    if stats is not None:
        for t, v in stats.items():
            rep.per_target[t] = TargetCount(found=v.matched)
            rep.found += v.matched
        return
    for t in targets:
        rep.per_target[t] = TargetCount()
    for (kind, fe, be), (f, d, fl) in counts.items():
        tc = rep.per_target.setdefault(Target.matched(kind, fe, be), TargetCount())
        tc.found += f
        tc.destroyed += d
        tc.failed += fl
    rep.found = sum(c.found for c in rep.per_target.values())
    rep.destroyed = sum(c.destroyed for c in rep.per_target.values())
    rep.failed = sum(c.failed for c in rep.per_target.values())
