"""The in-kernel DNS learner (bpf/dns.bpf.c): load and attach it to a
cgroup, program what it learns from (workloads, servers, name patterns),
read what it learned. The agent loads it with the socket-LB programs
(loader.Datapath) and programs its maps with the policy plan
(policy_desired.fqdn_entries); the connect hook (bpf/sock_lb.c) reads
`dns_learned`.

    learner = DnsLearner(pin_dir, cgroup, tcp="auto")   # "auto" | "sockmap" | "off"
    learner.load()                       # build (cached), load, pin, attach
    learner.load(attach=False)           # the same, the cgroup programs left idle
                                         # (unless pinned links are adopted)
    learner.attach(); learner.detach_hooks(); learner.attached
                                         # the per-packet cgroup programs on/off
    learner.tcp_way                      # "sockmap" | "off: <why>"
    learner.set_config(ttl_cap=3600, grace=5)
    learner.set_workload(cgroup_id, workload=1, fqdn_set=1)
    learner.set_servers(1, [("10.0.0.53", 53)])
    learner.set_patterns(1, {"api.example.com": 1, "*.example.org": 2, "**.example.net": 3})
    learner.learned()                    # [Learned(workload, addr, expiry_ns, ...)]
    learner.counters()                   # {"queries": .., "learned": .., ...}
    learner.close()                      # the programs stay as they are (pinned links)
    detach(pin_dir)                      # remove the learner's links and pins
                                         # (also after a load that failed half-way)

Built with clang against the running kernel's BTF and loaded with libbpf
(bpfobj.build, native.py), like the iterator tools: it needs bpf_loop and
global functions, which bcc 0.26 does not give. Pins, under the agent's pin
directory: the maps as <pin_dir>/dns_<name>, the links as
<pin_dir>/links/dns_<program>; a restart swaps the new programs into the
pinned links (BPF_LINK_UPDATE) and keeps the maps, so nothing learned is lost
and the hooks are never empty.

TCP answers need a sockhash with a stream parser and verdict (sk_skb) and a
sock_ops program that adds DNS sockets to it; that part is optional: with
tcp="auto" a kernel that refuses it (load or attach) leaves UDP learning
working and `tcp_way` says why; tcp="off" forces that fallback;
tcp="sockmap" fails the load instead.

Patterns follow Cilium's matchPattern (docs/fqdn.md): `api.example.com`
the name itself; `*.example.com` one label before example.com; `**.example.com`
one or more labels before it; `*` every name. Case-insensitive, a final dot
ignored. A `*` anywhere else (`api-*.example.com`, `a.*.example.com`) is
refused (PatternError).
"""
from __future__ import annotations

import ctypes as ct
import errno
import ipaddress
import logging
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from socklb.lb.fqdn import (  # noqa: F401 (the learner's API)
    FNV_OFFSET, FNV_PRIME, Pattern, PatternError, fnv1a, matches, parse_pattern, pattern_id, wire)

from . import bpfobj, kernel, layout, native
from .kernel import BpfMap
from .loader import MapSpec

log = logging.getLogger(__name__)

SOURCE = "dns.bpf.c"
TCP_WAYS = ("auto", "sockmap", "off")


# enum bpf_attach_type values this module attaches with
BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_SOCK_OPS = 3
BPF_SK_SKB_STREAM_PARSER = 4
BPF_SK_SKB_STREAM_VERDICT = 5
_ATTACH_NAMES = {0: "CGROUP_INET_INGRESS", 1: "CGROUP_INET_EGRESS", 3: "CGROUP_SOCK_OPS",
                 4: "SK_SKB_STREAM_PARSER", 5: "SK_SKB_STREAM_VERDICT"}


class _Attach(int):
    """An attach type with the .name kernel.link_create reports errors with."""

    @property
    def name(self) -> str:
        return _ATTACH_NAMES.get(int(self), str(int(self)))


@dataclass(frozen=True)
class Program:
    key: str        # links/dns_<key>
    func: str       # the program's name in dns.bpf.c
    attach: int     # attach type
    target: str     # "cgroup" or the map it attaches to
    tcp: bool       # part of the optional TCP path


PROGRAMS = (
    Program("egress", "socklb_dns_egress", BPF_CGROUP_INET_EGRESS, "cgroup", False),
    Program("ingress", "socklb_dns_ingress", BPF_CGROUP_INET_INGRESS, "cgroup", False),
    Program("sockops", "socklb_dns_sockops", BPF_CGROUP_SOCK_OPS, "cgroup", True),
    Program("parser", "socklb_dns_parser", BPF_SK_SKB_STREAM_PARSER, "dns_socks", True),
    Program("verdict", "socklb_dns_verdict", BPF_SK_SKB_STREAM_VERDICT, "dns_socks", True),
)


# The pinned maps (<pin_dir>/<name>); dns_scratch is per load, not pinned.
MAPS: dict[str, MapSpec] = {
    "dns_workloads": MapSpec(ct.c_uint64, layout.DnsWorkload, layout.DNS_WORKLOADS_MAX),
    "dns_servers": MapSpec(layout.DnsServer, ct.c_uint8, layout.DNS_SERVERS_MAX),
    "dns_patterns": MapSpec(layout.DnsPatternKey, layout.DnsPatternVal, layout.DNS_PATTERNS_MAX),
    # socket storage: keyed by a socket's fd from user space (no iteration)
    "dns_queries": MapSpec(ct.c_int, layout.DnsQueries, 0),
    "dns_tcp_queries": MapSpec(ct.c_uint64, layout.DnsQueries, layout.DNS_SOCKS_MAX),
    "dns_learned": MapSpec(layout.DnsLearnedKey, layout.DnsLearnedVal, layout.DNS_LEARNED_MAX),
    "dns_cfg": MapSpec(ct.c_uint32, layout.DnsCfg, 1),
    "dns_counters": MapSpec(ct.c_uint32, ct.c_uint64, layout.DNS_COUNTER_MAX, percpu=True),
    "dns_socks": MapSpec(ct.c_uint64, ct.c_uint64, layout.DNS_SOCKS_MAX),
}

DEFAULT_TTL_CAP = 86400
DEFAULT_GRACE = 5
DEFAULT_QUERY_WINDOW = 30


class DnsError(bpfobj.BpfObjError):
    """Loading or attaching the DNS learner failed."""


def name_hash(name: str) -> int:
    """A name's identity as the kernel computes it (front to back)."""
    return fnv1a(wire(name))


def suffix_hash(name: str) -> int:
    """The key of a name in `dns_patterns` (its wire form back to front)."""
    return fnv1a(reversed(wire(name)))


def pattern_entries(fqdn_set: int, patterns: Mapping[str, int]) -> dict[tuple[int, int], layout.DnsPatternVal]:
    """{(set, suffix hash): value} for patterns {text: pattern id (not 0)}."""
    out: dict[tuple[int, int], layout.DnsPatternVal] = {}
    field = {layout.DnsKind.EXACT: "exact", layout.DnsKind.ONE_LABEL: "one_label",
             layout.DnsKind.ANY_DEPTH: "any_depth"}
    for text, pid in patterns.items():
        if not 0 < pid < 1 << 32:
            raise PatternError(f"{text!r}: pattern id {pid} is not in 1..2^32-1")
        pat = parse_pattern(text)
        key = (fqdn_set, suffix_hash(pat.suffix))
        val = out.setdefault(key, layout.DnsPatternVal())
        val.kinds |= int(pat.kind)
        setattr(val, field[pat.kind], pid)
    return out


# --- what was learned -------------------------------------------------------------

@dataclass(frozen=True)
class LearnedSlot:
    """One name pattern an address was learned through (a slot of the entry)."""
    pattern: int
    expiry_ns: int   # CLOCK_BOOTTIME ns
    ttl: int


@dataclass(frozen=True)
class Learned:
    """An address a workload learned: the patterns of the names that taught
    it (the entry's used slots, in slot order) and the last question's hash."""
    workload: int
    addr: str
    name_hash: int
    slots: tuple[LearnedSlot, ...]

    @property
    def latest(self) -> LearnedSlot:
        """The slot expiring last (what keeps the address allowed longest)."""
        return max(self.slots, key=lambda x: x.expiry_ns)

    @property
    def expiry_ns(self) -> int:
        return self.latest.expiry_ns

    @property
    def pattern(self) -> int:
        return self.latest.pattern

    @property
    def ttl(self) -> int:
        return self.latest.ttl

    @property
    def patterns(self) -> frozenset[int]:
        return frozenset(x.pattern for x in self.slots)

    def live(self, now_ns: int) -> tuple[LearnedSlot, ...]:
        """The slots the connect hook still counts."""
        return tuple(x for x in self.slots if x.expiry_ns > now_ns)

    def remaining(self, now_ns: int | None = None) -> float:
        """Seconds until its last slot expires (negative: expired)."""
        now = boottime_ns() if now_ns is None else now_ns
        return (self.expiry_ns - now) / 1e9


def learned_val(entry: Learned) -> layout.DnsLearnedVal:
    """The map value of a Learned (tests and benchmarks write entries)."""
    val = layout.DnsLearnedVal(name_hash=entry.name_hash)
    for i, x in enumerate(entry.slots[:layout.DNS_LEARNED_SLOTS]):
        val.slots[i] = layout.DnsLearnedSlot(x.expiry_ns, x.pattern, x.ttl)
    return val


def boottime_ns() -> int:
    """The clock of the expiries (bpf_ktime_get_boot_ns)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


_LEARNED_KEY = struct.Struct("=I4x16s")  # socklb_dns_learned_key: workload, address
_LEARNED_VAL = struct.Struct("=Q" + "QII" * layout.DNS_LEARNED_SLOTS)  # name hash, then slots
assert (_LEARNED_KEY.size, _LEARNED_VAL.size) == (ct.sizeof(layout.DnsLearnedKey), ct.sizeof(layout.DnsLearnedVal))


def _learned_entries(m: BpfMap):
    """Every `dns_learned` entry, read in batches and unpacked at once (a
    full map is 262144 entries): (key bytes, value bytes, workload,
    address (16 bytes), name hash, ((expiry, pattern, ttl) of the used
    slots))."""
    keys, values = m.raw_items()
    ks, vs = _LEARNED_KEY.size, _LEARNED_VAL.size
    for i, ((wid, addr), v) in enumerate(zip(_LEARNED_KEY.iter_unpack(keys), _LEARNED_VAL.iter_unpack(values))):
        slots = tuple(v[j:j + 3] for j in range(1, len(v), 3) if v[j + 1])
        yield keys[i * ks:(i + 1) * ks], values[i * vs:(i + 1) * vs], wid, addr, v[0], slots


def _learned(wid: int, addr: bytes, name_hash: int, slots) -> Learned:
    return Learned(wid, _raw_addr_text(addr), name_hash, tuple(LearnedSlot(p, e, t) for e, p, t in slots))


def _raw_addr_text(raw: bytes) -> str:
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def _addr_text(words) -> str:
    raw = bytes(layout.U32x4(*words))
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


# --- the object ---------------------------------------------------------------------

def tcp_refused(tcp: str) -> str | None:
    """Whether tcp forces the fallback (the answer before any probe)."""
    if tcp not in TCP_WAYS:
        raise DnsError(f"DNS over TCP {tcp!r}: expected one of {', '.join(TCP_WAYS)}")
    return "forced" if tcp == "off" else None


class _Object:
    """dns.bpf.c opened and loaded with libbpf; pinned maps reused."""

    def __init__(self, path: Path, pin_dir: Path | None, programs: Iterable[Program], tiny: bool = False):
        """tiny: the hash maps with one entry (a probe: nothing is stored)."""
        self.lib = native.libbpf()
        self.obj = None
        self.tiny = tiny
        with native.libbpf_messages() as logbuf:
            try:
                self._load(path, pin_dir, {p.func for p in programs}, logbuf)
            except Exception:
                self.close()
                raise

    def _load(self, path: Path, pin_dir: Path | None, funcs: set[str], logbuf: list[str]) -> None:
        lib = self.lib
        obj = lib.bpf_object__open_file(os.fsencode(str(path)), None)
        if not obj:
            e = ct.get_errno() or errno.EINVAL
            raise DnsError(f"libbpf cannot open {path}: {bpfobj.strerror(e)}")
        self.obj = obj
        if pin_dir is not None:
            for name, spec in MAPS.items():
                pin = pin_dir / name
                if not pin.exists():
                    continue
                fd = kernel.obj_get(pin)
                try:
                    info = kernel.map_info(fd)
                    want = (ct.sizeof(spec.key), ct.sizeof(spec.value), spec.max_entries)
                    have = (info.key_size, info.value_size, info.max_entries)
                    if want != have:
                        raise DnsError(f"pinned map {pin} has key/value/entries {have}, this build needs {want}")
                    ret = lib.bpf_map__reuse_fd(lib.bpf_object__find_map_by_name(obj, name.encode()), fd)
                    if ret < 0:
                        raise DnsError(f"bpf_map__reuse_fd({pin}): {bpfobj.strerror(-ret)}")
                finally:
                    os.close(fd)
        for p in PROGRAMS:
            if p.func not in funcs:
                lib.bpf_program__set_autoload(self._prog(p.func), False)
        if self.tiny:
            for name in ("dns_workloads", "dns_servers", "dns_patterns", "dns_tcp_queries", "dns_learned", "dns_socks"):
                lib.bpf_map__set_max_entries(lib.bpf_object__find_map_by_name(obj, name.encode()), 1)
        ret = lib.bpf_object__load(obj)
        if ret < 0:
            raise DnsError(f"loading {path.name} failed: {bpfobj.strerror(-ret)}\n{bpfobj.log_tail(logbuf)}")

    def _prog(self, func: str):
        prog = self.lib.bpf_object__find_program_by_name(self.obj, func.encode())
        if not prog:
            raise DnsError(f"{SOURCE} has no program {func}")
        return prog

    def prog_fd(self, func: str) -> int:
        return self.lib.bpf_program__fd(self._prog(func))

    def map_fd(self, name: str) -> int:
        m = self.lib.bpf_object__find_map_by_name(self.obj, name.encode())
        fd = self.lib.bpf_map__fd(m) if m else -1
        if fd < 0:
            raise DnsError(f"map {name} missing after load")
        return fd

    def close(self) -> None:
        if self.obj:
            self.lib.bpf_object__close(self.obj)
            self.obj = None


def probe_tcp(cache: Path | None = None) -> str | None:
    """None when this kernel loads the TCP path (sock_ops, sk_skb stream
    parser and verdict) and attaches the sk_skb programs to a sockhash,
    else why not. Uses maps of its own (nothing pinned, nothing attached to
    a cgroup)."""
    try:
        obj = _Object(bpfobj.build(SOURCE, cache=cache), None, [p for p in PROGRAMS if p.tcp], tiny=True)
    except Exception as e:
        return bpfobj.first_line(e)
    try:
        socks = obj.map_fd("dns_socks")
        for p in PROGRAMS:
            if p.target == "dns_socks":
                fd = kernel.link_create(obj.prog_fd(p.func), socks, _Attach(p.attach))
                kernel.link_detach(fd)
                os.close(fd)
        return None
    except OSError as e:
        return str(e)
    finally:
        obj.close()


class DnsLearner:
    """The learner of one pin directory, attached to one cgroup."""

    def __init__(self, pin_dir: str | Path, cgroup: str | Path, tcp: str = "auto", cache: Path | None = None):
        self.pin_dir = Path(pin_dir)
        self.cgroup = Path(cgroup)
        self.tcp = tcp
        self.cache = cache
        self.tcp_way = ""
        self.maps: dict[str, BpfMap] = {}
        self._obj: _Object | None = None  # the loaded programs (load() to close())

    @property
    def links_dir(self) -> Path:
        return self.pin_dir / "links"

    @classmethod
    def pinned(cls, pin_dir: str | Path) -> "DnsLearner":
        """The maps a loaded learner pinned in `pin_dir`, opened to read (a
        tool's view: nothing is loaded or attached). OSError without them."""
        self = cls(pin_dir, "/")
        try:
            self._open_maps()
        except BaseException:
            self.close()
            raise
        return self

    def load(self, attach: bool = True) -> "DnsLearner":
        """Build, load, pin the maps (reused when pinned) and the sk_skb
        programs on the sockhash; the per-packet cgroup programs (cgroup_skb
        egress and ingress, sock_ops) are swapped into the links pinned
        before (a restart adopts them) and, with attach, attached where not
        (else attach() does, later). The loaded programs stay open until
        close(), for attach()."""
        kernel.ensure_bpffs()
        forced = tcp_refused(self.tcp)
        if not (self.cgroup / "cgroup.procs").exists():
            raise DnsError(f"{self.cgroup} is not a cgroup v2 directory")
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        self.links_dir.mkdir(exist_ok=True)
        path = bpfobj.build(SOURCE, cache=self.cache)
        why_not = forced
        obj = None
        if why_not is None:
            try:
                obj = _Object(path, self.pin_dir, PROGRAMS)
            except DnsError as e:
                if self.tcp == "sockmap":
                    raise
                why_not = bpfobj.first_line(e)
                log.warning("DNS over TCP: the kernel refused the sockmap programs (%s); learning from UDP only",
                            why_not)
        if obj is None:
            obj = _Object(path, self.pin_dir, [p for p in PROGRAMS if not p.tcp])
        try:
            self._pin_maps(obj)
            if why_not is None:
                why_not = self._attach_tcp(obj, [p for p in PROGRAMS if p.target == "dns_socks"])
            if why_not is not None:
                self._detach_tcp()
            self.tcp_way = "sockmap" if why_not is None else f"off: {why_not}"
            self._obj = obj
            self._attach_cgroup(adopt_only=not attach)
        except BaseException:
            self._obj = None
            obj.close()
            raise
        self._open_maps()
        if self.maps["dns_cfg"].lookup(ct.c_uint32(0)).ttl_cap == 0:
            self.set_config()
        log.info("DNS learner on %s (tcp: %s, %s), maps in %s", self.cgroup, self.tcp_way,
                 "attached" if self.attached else "idle", self.pin_dir)
        return self

    # --- the per-packet hooks: attached while some workload has FQDN rules -----

    def _cgroup_programs(self) -> list[Program]:
        return [p for p in PROGRAMS if p.target == "cgroup" and (not p.tcp or self.tcp_way == "sockmap")]

    @property
    def attached(self) -> bool:
        """The cgroup programs' links are pinned (they run on every packet
        and TCP socket event of the cgroup)."""
        return all((self.links_dir / f"dns_{p.key}").exists() for p in self._cgroup_programs())

    def attach(self) -> None:
        """Attach the cgroup programs where they are not (load() first).
        DnsError/OSError when the kernel refuses; then nothing of this call
        stays attached. sock_ops refused with tcp="auto" leaves UDP
        learning attached and tcp_way saying why."""
        self._attach_cgroup(adopt_only=False)

    def detach_hooks(self) -> bool:
        """Remove the cgroup programs' links: the programs leave the cgroup
        at once; the maps, what was learned, and the sk_skb programs on the
        sockhash (they only see sockets sock_ops added) stay. Whether a
        link was there."""
        removed = False
        for p in PROGRAMS:
            pin = self.links_dir / f"dns_{p.key}"
            if p.target == "cgroup" and pin.exists():
                kernel.unpin_link(pin)
                removed = True
        return removed

    def _attach_cgroup(self, adopt_only: bool) -> None:
        """Swap the loaded programs into the pinned cgroup links; unless
        adopt_only, create the missing links too."""
        if self._obj is None:
            raise DnsError("the learner is not loaded")
        created = []
        cg_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for p in self._cgroup_programs():
                pinned = (self.links_dir / f"dns_{p.key}").exists()
                if adopt_only and not pinned:
                    continue
                try:
                    self._attach(p, self._obj.prog_fd(p.func), cg_fd)
                except (OSError, DnsError) as e:
                    if not p.tcp or self.tcp == "sockmap":
                        raise
                    log.warning("DNS over TCP: attaching %s failed (%s); learning from UDP only", p.func, e)
                    self.tcp_way = f"off: {e}"
                    self._detach_tcp()
                    continue
                if not pinned:
                    created.append(p)
        except BaseException:
            for p in created:
                kernel.unpin_link(self.links_dir / f"dns_{p.key}")
            raise
        finally:
            os.close(cg_fd)

    def _pin_maps(self, obj: _Object) -> None:
        for name in MAPS:
            pin = self.pin_dir / name
            if not pin.exists():
                kernel.obj_pin(obj.map_fd(name), pin)

    def _attach_tcp(self, obj: _Object, programs: Iterable[Program]) -> str | None:
        socks = obj.map_fd("dns_socks")
        try:
            for p in programs:
                self._attach(p, obj.prog_fd(p.func), socks)
        except (OSError, DnsError) as e:
            if self.tcp == "sockmap":
                raise
            log.warning("DNS over TCP: attaching the sockmap programs failed (%s); learning from UDP only", e)
            return str(e)
        return None

    def _attach(self, p: Program, prog_fd: int, target_fd: int) -> None:
        pin = self.links_dir / f"dns_{p.key}"
        if pin.exists():
            link_fd = kernel.obj_get(pin)
            try:
                if p.target == "cgroup":
                    info = kernel.link_info(link_fd)
                    if info.cgroup_id != os.stat(self.cgroup).st_ino:
                        raise DnsError(f"{pin} attaches to another cgroup (id {info.cgroup_id}); detach first")
                kernel.link_update(link_fd, prog_fd)
            finally:
                os.close(link_fd)
            return
        link_fd = kernel.link_create(prog_fd, target_fd, _Attach(p.attach))
        try:
            kernel.obj_pin(link_fd, pin)
        finally:
            os.close(link_fd)

    def _detach_tcp(self) -> None:
        for p in PROGRAMS:
            pin = self.links_dir / f"dns_{p.key}"
            if p.tcp and pin.exists():
                kernel.unpin_link(pin)

    def _open_maps(self) -> None:
        for name, spec in MAPS.items():
            if name != "dns_socks":
                self.maps[name] = BpfMap.pinned(self.pin_dir / name, spec.key, spec.value, spec.percpu)

    # --- inputs ---------------------------------------------------------------

    def set_config(self, ttl_cap: int = DEFAULT_TTL_CAP, grace: int = DEFAULT_GRACE,
                   query_window: int = DEFAULT_QUERY_WINDOW) -> None:
        if ttl_cap <= 0:
            raise ValueError("ttl_cap must be positive")
        self.maps["dns_cfg"].update(ct.c_uint32(0), layout.DnsCfg(ttl_cap, grace, query_window))

    def set_workload(self, cgroup_id: int, workload: int, fqdn_set: int) -> None:
        if workload <= 0 or fqdn_set <= 0:
            raise ValueError("workload and set ids start at 1")
        self.maps["dns_workloads"].update(ct.c_uint64(cgroup_id), layout.DnsWorkload(workload, fqdn_set))

    def remove_workload(self, cgroup_id: int) -> None:
        self.maps["dns_workloads"].delete(ct.c_uint64(cgroup_id))

    def set_servers(self, fqdn_set: int, servers: Iterable[tuple[str, int]]) -> None:
        """The servers (address, port) set may learn from: replaces the
        set's; the union (set 0) is recomputed from the map."""
        m = self.maps["dns_servers"]
        want = {(a, port) for a, port in servers}
        for key in list(m.keys()):
            if key.set == fqdn_set:
                m.delete(key)
        for addr, port in want:
            m.update(_server_key(fqdn_set, addr, port), ct.c_uint8(1))
        union = {(bytes(k.addr), k.port) for k in m.keys() if k.set != layout.DNS_SET_ANY}
        for key in list(m.keys()):
            if key.set == layout.DNS_SET_ANY and (bytes(key.addr), key.port) not in union:
                m.delete(key)
        for raw, port_be in union:
            m.update(layout.DnsServer(layout.DNS_SET_ANY, port_be, 0, layout.U32x4.from_buffer_copy(raw)),
                     ct.c_uint8(1))

    def set_patterns(self, fqdn_set: int, patterns: Mapping[str, int]) -> None:
        """The set's name patterns {text: pattern id}, replacing its old ones."""
        entries = pattern_entries(fqdn_set, patterns)  # validates before writing
        m = self.maps["dns_patterns"]
        for (s, h), val in entries.items():
            m.update(layout.DnsPatternKey(s, 0, h), val)
        for key in list(m.keys()):
            if key.set == fqdn_set and (key.set, key.hash) not in entries:
                m.delete(key)

    # --- outputs --------------------------------------------------------------

    def learned(self, workload: int | None = None) -> list[Learned]:
        out = [_learned(wid, addr, h, slots) for _, _, wid, addr, h, slots in _learned_entries(self.maps["dns_learned"])
               if slots and (workload is None or wid == workload)]
        return sorted(out, key=lambda x: (x.workload, x.addr))

    def learned_patterns(self, workload_ids) -> dict[tuple[int, bytes], frozenset[int]]:
        """(workload id, address: 16 bytes as in the maps) -> the pattern ids
        of its used slots, expired or not, for those workloads: what a policy
        job judges FQDN destinations by (policyjobs.LearnedReader)."""
        return {(wid, addr): frozenset(p for _, p, _ in slots)
                for _, _, wid, addr, _, slots in _learned_entries(self.maps["dns_learned"])
                if slots and wid in workload_ids}

    def active(self, workload: int | None = None, now_ns: int | None = None) -> list[Learned]:
        """What has a slot not expired: what the connect hook may allow."""
        now = boottime_ns() if now_ns is None else now_ns
        return [x for x in self.learned(workload) if x.expiry_ns > now]

    def prune(self, now_ns: int | None = None, keep=lambda entry: False) -> int:
        """Delete the entries all of whose slots expired (the kernel only
        overwrites and evicts), but not those `keep(entry)` holds on to (an
        open socket of the workload to the address): how many, also added to
        the learner's `pruned` counter."""
        now = boottime_ns() if now_ns is None else now_ns
        m, n = self.maps["dns_learned"], 0
        for kb, vb, wid, addr, h, slots in _learned_entries(m):
            if slots and (max(e for e, _, _ in slots) > now or keep(_learned(wid, addr, h, slots))):
                continue
            k = layout.DnsLearnedKey.from_buffer_copy(kb)
            again = m.lookup(k)  # an answer may have refreshed it since: then it stays
            if (again is None or bytes(again) == vb) and m.delete(k):
                n += 1
        if n:
            self.maps["dns_counters"].add_percpu(ct.c_uint32(layout.DnsCounter.PRUNED), n)
        return n

    def counters(self) -> dict[str, int]:
        m = self.maps["dns_counters"]
        return {c.name.lower(): sum(v.value for v in m.lookup_percpu(ct.c_uint32(c))) for c in layout.DnsCounter}

    def close(self) -> None:
        """Close the maps and the loaded programs; the pinned links stay."""
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        if self._obj is not None:
            self._obj.close()
            self._obj = None


def _server_key(fqdn_set: int, addr: str, port: int) -> layout.DnsServer:
    return layout.DnsServer(fqdn_set, layout.port_be(port), 0, layout.pack_addr(addr))


def detach(pin_dir: str | Path) -> list[str]:
    """Remove the learner's links (the programs leave at once) and map pins."""
    pin_dir = Path(pin_dir)
    removed = []
    for p in PROGRAMS:
        pin = pin_dir / "links" / f"dns_{p.key}"
        if pin.exists():
            kernel.unpin_link(pin)
            removed.append(str(pin))
    for name in MAPS:
        pin = pin_dir / name
        if pin.exists():
            pin.unlink()
            removed.append(str(pin))
    return removed
