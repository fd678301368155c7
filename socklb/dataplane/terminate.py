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

Finding: the iter/tcp and iter/udp programs of bpf/sock_destroy.bpf.c, which
read the agent's `flows` socket storage (the pinned map is reused, not copied)
and match records against the `targets` map. Iterators see the sockets of the
network namespace the iterator fd is created in, so a run enters each
namespace (the host's, every /proc/*/ns/net, every /run/netns/*, deduplicated
by the nsfs inode) with setns() in a dedicated thread.

Destroying, by method:
  kfunc    bpf_sock_destroy() from the iterator itself (kernel >= 6.5)
  netlink  the same iterators in dry-run mode (built without the kfunc, so they
           load on older kernels) give 5-tuple + cookie; each socket is then
           destroyed with inet_diag SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY)
           from a netlink socket opened inside its namespace. pyroute2 0.9 has
           the SOCK_DESTROY constant but no request type for it, and would
           cost one round trip per socket, so this is a small raw, batched
           implementation.
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
are strings, ipaddress objects or 16 raw bytes (IPv4 as such or v4-mapped:
both match IPv4 sockets and v4-mapped IPv6 ones); ports in host order. The
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

Records: Report.sockets is built lazily: the raw 64-byte records are kept
and a SocketRecord (addresses formatted) is made only for the items read, so
rep.sockets[:100] costs 100 of them whatever the count; run(max_records=N)
keeps at most N records at all (the counters still count everything).

The object is compiled at run time with clang against a vmlinux.h that
bpftool generates from /sys/kernel/btf/vmlinux; both are cached (keyed by a
hash of the sources, the compiler and the kernel build) in $SOCKLB_CACHE_DIR,
else $XDG_CACHE_HOME/socklb, else /var/cache/socklb (root) or ~/.cache/socklb.
Building, loading and the namespace runner are shared with socket statistics
(bpfobj.py); their errors surface here as TerminationError.

Limits: namespaces are found through processes and /run/netns only (one held
only by a bind mount elsewhere or an open fd, or entered by a single thread,
is missed; one whose /proc entry is not readable is listed in
Report.unreachable). Each TCP iterator pass walks the kernel's established
hash (shared by every namespace unless net.ipv4.tcp_child_ehash_entries is
set), so a run costs about one walk of the node's whole TCP table per
namespace even where nothing matches.
"""
from __future__ import annotations

import ctypes as ct
import enum
import errno
import ipaddress
import logging
import os
import socket
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Iterable

from . import bpfobj, kernel, layout
# Re-exported: the namespace runner and the cache of the shared helpers.
from .bpfobj import Netns, cache_dir, close_netns, list_netns  # noqa: F401
from .bpfobj import BTF_VMLINUX, CLONE_NEWNET, HEADER  # noqa: F401

log = logging.getLogger(__name__)

SOURCE = "sock_destroy.bpf.c"
KFUNC = "bpf_sock_destroy"


class TerminationError(bpfobj.BpfObjError):
    """Building, loading or running the termination programs failed."""


class TerminationUnavailable(TerminationError):
    """Neither bpf_sock_destroy() nor netlink SOCK_DESTROY can be used here."""

    probes: dict = {}  # method -> why it cannot be used


class Method(str, enum.Enum):
    AUTO = "auto"
    KFUNC = "kfunc"
    NETLINK = "netlink"


class _Mode(enum.IntEnum):  # enum socklb_term_mode
    DESTROY = 0
    DRY_RUN = 1
    STATS = 2


NOT_TRIED = 1  # SOCKLB_TERM_NOT_TRIED
# Read size of an iterator fd: at most half the kernel's seq buffer, so a
# socket destroyed while shown is never rolled back and lost (bpfobj.ITER_READ).
_ITER_READ = bpfobj.ITER_READ
MAX_PASSES = 4  # iterator passes per namespace when destroying, on kernels without the resume fix
DSTS_MAX = 16384  # max_entries of the `dsts` map
F_DSTS = 1  # SOCKLB_TERM_F_DSTS
# Functions the kernels with bpf_iter_{tcp,udp} resume-by-cookie introduced.
RESUME_FUNCS = {"tcp": "bpf_iter_tcp_resume", "udp": "bpf_iter_udp_resume"}


# --- layouts shared with bpf/sock_destroy.bpf.c ------------------------------

class TermKey(ct.Structure):
    _fields_ = [("frontend_id", ct.c_uint32), ("backend_id", ct.c_uint32)]


class TermVal(ct.Structure):
    _fields_ = [("matched", ct.c_uint64), ("destroyed", ct.c_uint64), ("failed", ct.c_uint64)]


class TermCfg(ct.Structure):
    _fields_ = [("mode", ct.c_uint32), ("flags", ct.c_uint32)]


class TermDst(ct.Structure):
    _fields_ = [("addr", ct.c_ubyte * 16), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


class TermRec(ct.Structure):
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("src", layout.U32x4),
        ("dst", layout.U32x4),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("family", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("result", ct.c_int32),
        ("target_kind", ct.c_uint32),
    ]


assert ct.sizeof(TermRec) == 64 and ct.sizeof(TermVal) == 24 and ct.sizeof(TermDst) == 20  # C _Static_assert


# --- the typed API ------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Target:
    """What to terminate. backend_id alone: every flow to that backend (a
    backend id belongs to one frontend); frontend_id alone: every flow of the
    frontend; both: flows of that frontend to that backend."""

    frontend_id: int = 0
    backend_id: int = 0

    def __post_init__(self):
        if not (self.frontend_id or self.backend_id):
            raise ValueError("a target needs a frontend id, a backend id or both")
        for v in (self.frontend_id, self.backend_id):
            if not 0 <= v < 2**32:
                raise ValueError(f"id out of range: {v}")

    @classmethod
    def backend(cls, backend_id: int) -> "Target":
        return cls(0, backend_id)

    @classmethod
    def frontend(cls, frontend_id: int) -> "Target":
        return cls(frontend_id, 0)


@dataclass
class TargetCount:
    found: int = 0
    destroyed: int = 0
    failed: int = 0


@dataclass
class NetnsCount:
    path: str           # where the namespace was found
    found: int = 0
    destroyed: int = 0
    seconds: float = 0.0  # time spent in it (iterators, and netlink when used)


@dataclass(frozen=True)
class SocketRecord:
    netns: str          # "net:[<inode>]"
    cookie: int
    family: int         # socket.AF_INET / AF_INET6
    proto: str          # "tcp" / "udp"
    state: int          # kernel skc_state (1 = established / connected)
    src: str
    sport: int
    dst: str            # the backend the socket is connected to
    dport: int
    frontend_id: int
    backend_id: int
    target: Target
    result: int | None  # 0 destroyed, -errno failed, None not tried (dry run)

    @property
    def destroyed(self) -> bool:
        return self.result == 0


class SocketRecords(Sequence):
    """Report.sockets: a read-only list of SocketRecord built lazily from
    the raw records (netns ident, TermRec, result), each item on first access
    and cached. Compares equal to a list with the same records."""

    __slots__ = ("_raw", "_made")

    def __init__(self, raw: Iterable = ()):
        self._raw = list(raw)
        self._made: list[SocketRecord | None] = [None] * len(self._raw)

    def _append_raw(self, ident: str, rec: "TermRec", result: int | None) -> None:
        self._raw.append((ident, rec, result))
        self._made.append(None)

    def _item(self, i: int) -> SocketRecord:
        s = self._made[i]
        if s is None:
            s = self._made[i] = Terminator._record(*self._raw[i])
        return s

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self._raw)))]
        if i < 0:
            i += len(self._raw)
        if not 0 <= i < len(self._raw):
            raise IndexError("socket record index out of range")
        return self._item(i)

    def __iter__(self):
        for i in range(len(self._raw)):
            yield self._item(i)

    def __eq__(self, other) -> bool:
        if isinstance(other, (SocketRecords, list, tuple)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None  # mutable, like a list

    def __repr__(self) -> str:
        n = len(self._raw)
        shown = self[:5]
        more = f", ... {n - 5} more" if n > 5 else ""
        return f"[{', '.join(map(repr, shown))}{more}]"


@dataclass
class Report:
    method: str                 # "kfunc" | "netlink" | "none" (dry run, counting)
    dry_run: bool
    found: int = 0
    destroyed: int = 0
    failed: int = 0
    per_target: dict[Target, TargetCount] = field(default_factory=dict)
    duration: float = 0.0       # seconds: scan + destroy over every namespace
    netns_scanned: int = 0
    per_netns: dict[str, "NetnsCount"] = field(default_factory=dict)
    # the sockets found (at most run(max_records=...)); a lazily built sequence
    sockets: Sequence[SocketRecord] = field(default_factory=SocketRecords, repr=False)
    errors: list[str] = field(default_factory=list)  # namespaces that could not be scanned
    unreachable: list[str] = field(default_factory=list)  # namespaces seen but not openable
    passes: int = 0             # iterator passes (tcp + udp) over all namespaces

    def summary(self) -> str:
        what = "found" if self.dry_run else f"destroyed {self.destroyed}/"
        return (f"{what}{self.found} sockets in {self.netns_scanned} netns, "
                f"{self.duration * 1000:.1f} ms, method={self.method}")


# --- build, load, namespaces: shared with socket statistics (bpfobj.py) -------

@contextmanager
def _errors():
    """Errors of the shared helpers surface as TerminationError here."""
    try:
        yield
    except TerminationError:
        raise
    except bpfobj.BpfObjError as e:
        raise TerminationError(str(e)) from e


def vmlinux_h(cache: Path) -> Path:
    """vmlinux.h of the running kernel (bpftool btf dump ... format c)."""
    with _errors():
        return bpfobj.vmlinux_h(cache)


def build_object(kfunc: bool = True, cache: Path | None = None) -> Path:
    """Compile bpf/sock_destroy.bpf.c (or reuse the cached object)."""
    with _errors():
        return bpfobj.build(SOURCE, () if kfunc else ("SOCKLB_NO_KFUNC",), cache,
                            suffix="" if kfunc else "-nokfunc")


def btf_has_func(name: str, path: Path = BTF_VMLINUX) -> bool:
    """Whether the BTF at path has a FUNC of that name (walks the type section)."""
    with _errors():
        return bpfobj.btf_has_func(name, path)


class _Object(bpfobj.IterObject):
    """The loaded termination object: programs attached as iterators, the
    agent's flows map reused, targets/term_cfg maps of its own."""

    error = TerminationError

    def __init__(self, path: Path, pin_dir: Path):
        with _errors():
            super().__init__(path, pin_dir, {"tcp": "socklb_term_tcp", "udp": "socklb_term_udp"})
        try:
            self.targets = kernel.BpfMap(self.map_fd("targets"), TermKey, TermVal, "targets")
            self.cfg = kernel.BpfMap(self.map_fd("term_cfg"), ct.c_uint32, TermCfg, "term_cfg")
            self.dsts = kernel.BpfMap(self.map_fd("dsts"), TermDst, ct.c_uint8, "dsts")
        except Exception:
            self.close()
            raise

    def set_targets(self, targets: Iterable[Target], mode: _Mode,
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
        self.cfg.update(ct.c_uint32(0), TermCfg(int(mode), 0 if dsts is None else F_DSTS))

    def target_counts(self) -> dict[Target, TermVal]:
        return {Target(k.frontend_id, k.backend_id): v for k, v in self.targets.items()}

    def read_iter(self, proto: str) -> bytes:
        """Run one iterator in the calling thread's network namespace."""
        return super().read_iter(proto, _ITER_READ)


def in_each_netns(nss: list[Netns], fn) -> list[tuple[Netns, object, BaseException | None]]:
    """fn(ns) in every namespace, in one dedicated thread that setns()es into
    each in turn (the caller's threads never move) and restores its own
    namespace at the end."""
    return bpfobj.in_each_netns(nss, fn, thread_name="socklb-terminate")


# --- netlink SOCK_DESTROY ------------------------------------------------------------------

NETLINK_SOCK_DIAG = 4
SOCK_DESTROY = 21
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_SOL_NETLINK, _NETLINK_CAP_ACK = 270, 10
_NLHDR = struct.Struct("=IHHII")
_BATCH = 256


def _diag_req(family: int, proto: int, sport: int, dport: int, src: bytes, dst: bytes, cookie: int) -> bytes:
    """struct inet_diag_req_v2 with its inet_diag_sockid (ports and addresses
    in network order, the cookie as two host-order u32: low, high)."""
    if family == socket.AF_INET:
        src, dst = src[12:16] + bytes(12), dst[12:16] + bytes(12)
    return (struct.pack("=BBBBI", family, proto, 0, 0, 0xFFFFFFFF)
            + struct.pack(">HH", sport, dport) + src + dst
            + struct.pack("=III", 0, cookie & 0xFFFFFFFF, cookie >> 32))


class DiagSocket:
    """A NETLINK_SOCK_DIAG socket of the calling thread's network namespace."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
        try:
            self.sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        except OSError:
            pass
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.settimeout(10.0)
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def destroy(self, reqs: list[bytes]) -> list[int]:
        """SOCK_DESTROY each request; the kernel's answer per request (0 or
        -errno), sent in batches of _BATCH messages."""
        out: list[int] = []
        for i in range(0, len(reqs), _BATCH):
            out += self._batch(reqs[i:i + _BATCH])
        return out

    def _batch(self, reqs: list[bytes]) -> list[int]:
        first = self.seq + 1
        buf = bytearray()
        for r in reqs:
            self.seq += 1
            buf += _NLHDR.pack(_NLHDR.size + len(r), SOCK_DESTROY, _NLM_F_REQUEST | _NLM_F_ACK, self.seq, 0) + r
        self.sock.sendto(bytes(buf), (0, 0))
        res: dict[int, int] = {}
        while len(res) < len(reqs):
            data = self.sock.recv(1 << 20)
            pos = 0
            while pos + _NLHDR.size <= len(data):
                length, mtype, _flags, seq, _pid = _NLHDR.unpack_from(data, pos)
                if length < _NLHDR.size:
                    break
                if mtype == _NLMSG_ERROR and first <= seq <= self.seq:
                    res[seq] = struct.unpack_from("=i", data, pos + _NLHDR.size)[0]
                pos += (length + 3) & ~3
        return [res[s] for s in range(first, self.seq + 1)]


def netlink_probe() -> str | None:
    """None when SOCK_DESTROY works in this namespace, else why not: a
    request for a socket that does not exist answers ENOENT when the kernel
    has CONFIG_INET_DIAG_DESTROY, EOPNOTSUPP when it has not."""
    try:
        s = DiagSocket()
    except OSError as e:
        return f"no NETLINK_SOCK_DIAG socket: {e}"
    try:
        err = s.destroy([_diag_req(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, bytes(16), bytes(16), 0)])[0]
    except OSError as e:
        return f"SOCK_DESTROY probe failed: {e}"
    finally:
        s.close()
    if err in (0, -errno.ENOENT):
        return None
    if err == -errno.EOPNOTSUPP:
        return "netlink SOCK_DESTROY is not supported (kernel built without CONFIG_INET_DIAG_DESTROY)"
    return f"netlink SOCK_DESTROY probe answered {errno.errorcode.get(-err, err)}"


def kfunc_probe(pin_dir: Path, cache: Path | None = None) -> str | None:
    """None when the bpf_sock_destroy() programs load here, else why not."""
    if not btf_has_func(KFUNC):
        return f"the kernel's BTF has no FUNC {KFUNC} (needs Linux >= 6.5)"
    try:
        _Object(build_object(kfunc=True, cache=cache), pin_dir).close()
    except TerminationError as e:
        return f"the {KFUNC} program does not load: {bpfobj.first_line(e)}"
    return None


# --- the terminator --------------------------------------------------------------------------

_V4MAPPED = bytes(10) + b"\xff\xff"


def _addr(words) -> str:
    raw = bytes(words)
    if raw[:12] == _V4MAPPED:  # inet_ntop: several times cheaper than ipaddress
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return layout.unpack_addr(words)


def _target_of(kind: int, frontend_id: int, backend_id: int) -> Target:
    if kind == 2:
        return Target(0, backend_id)
    if kind == 3:
        return Target(frontend_id, 0)
    return Target(frontend_id, backend_id)


def _rec_target(r: TermRec) -> Target:
    return _target_of(r.target_kind, r.frontend_id, r.backend_id)


def dst_key(addr, port: int) -> TermDst:
    """The `dsts` key of a backend: addr a string, an ipaddress object or
    16 raw bytes (network order, IPv4 v4-mapped); port in host order."""
    if isinstance(addr, (bytes, bytearray)):
        if len(addr) == 4:
            raw = bytes(10) + b"\xff\xff" + bytes(addr)
        elif len(addr) == 16:
            raw = bytes(addr)
        else:
            raise ValueError(f"address of {len(addr)} bytes")
    else:
        ip = addr if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
            else ipaddress.ip_address(str(addr).strip("[]"))
        raw = bytes(10) + b"\xff\xff" + ip.packed if ip.version == 4 else ip.packed
    port = int(port)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range: {port}")
    k = TermDst()
    ct.memmove(k.addr, raw, 16)
    k.port = socket.htons(port)
    return k


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
        found = btf_has_func(name)
    except TerminationError:
        pass
    if not found:
        try:
            with open("/proc/kallsyms") as f:
                found = any(line.rstrip().split(" ")[-1] == name for line in f if name in line)
        except OSError:
            pass
    _resume_cache[proto] = found
    return found


_resume_cache: dict[str, bool] = {}


def _parse(data: bytes) -> list[TermRec]:
    size = ct.sizeof(TermRec)
    return [TermRec.from_buffer_copy(data, i) for i in range(0, len(data) - size + 1, size)]


class Terminator:
    """Finds and destroys the sockets of load-balanced flows on this node.

    pin_dir: the agent's pin directory (its `flows` map is used).
    method:  "auto" | "kfunc" | "netlink" (see the module doc).
    netns:   None = every namespace on the node; else only these ns paths
             (plus nothing else: the host's is not added).
    """

    def __init__(self, pin_dir: str | Path, method: str | Method = Method.AUTO,
                 netns: Iterable[str | Path] | None = None, cache: Path | None = None):
        self.pin_dir = Path(pin_dir)
        self.requested = Method(method)
        self.netns_paths = None if netns is None else [str(p) for p in netns]
        self.cache = cache
        self._lock = threading.Lock()
        self._obj: _Object | None = None
        self.method: Method | None = None
        self.load_seconds = 0.0
        self.unavailable: dict[str, str] = {}
        self.probes: dict[str, str | None] = {}  # method -> None (works) or why not, for every method
        t0 = time.monotonic()
        self._load()
        self.load_seconds = time.monotonic() - t0

    # -- loading

    def _load_kfunc(self) -> str | None:
        if not btf_has_func(KFUNC):
            return f"the kernel's BTF has no FUNC {KFUNC} (needs Linux >= 6.5)"
        try:
            self._obj = _Object(build_object(kfunc=True, cache=self.cache), self.pin_dir)
        except TerminationError as e:
            return f"the {KFUNC} program does not load: {e}"
        self.method = Method.KFUNC
        return None

    def _load_netlink(self) -> str | None:
        why = netlink_probe()
        if why:
            return why
        self._obj = _Object(build_object(kfunc=False, cache=self.cache), self.pin_dir)
        self.method = Method.NETLINK
        return None

    def _load(self) -> None:
        if not (self.pin_dir / "flows").exists():
            raise TerminationError(f"{self.pin_dir}/flows does not exist: is the dataplane agent loaded there?")
        order = {Method.AUTO: (Method.KFUNC, Method.NETLINK), Method.KFUNC: (Method.KFUNC,),
                 Method.NETLINK: (Method.NETLINK,)}[self.requested]
        for m in order:
            why = self._load_kfunc() if m is Method.KFUNC else self._load_netlink()
            self.probes[m.value] = why
            if why is None:
                log.info("socket termination: method %s", m.value)
                break
            self.unavailable[m.value] = why
            log.info("socket termination: %s unavailable: %s", m.value, why)
        # The methods not tried are probed too, so that the node reports
        # every feature it has, whichever it uses.
        if Method.NETLINK.value not in self.probes:
            self.probes[Method.NETLINK.value] = netlink_probe()
        if Method.KFUNC.value not in self.probes:
            self.probes[Method.KFUNC.value] = kfunc_probe(self.pin_dir, self.cache)
        if self.method is None:
            e = TerminationUnavailable(
                "cannot destroy sockets on this node: "
                + "; ".join(f"{k}: {v}" for k, v in self.unavailable.items()))
            e.probes = dict(self.probes)
            raise e

    def close(self) -> None:
        with self._lock:
            if self._obj is not None:
                self._obj.close()
                self._obj = None

    def __enter__(self) -> "Terminator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running

    def _namespaces(self, unreachable: list[str]) -> list[Netns]:
        if self.netns_paths is None:
            return list_netns(unreachable=unreachable)
        return bpfobj.open_netns(self.netns_paths)

    def run(self, targets: Iterable[Target], dry_run: bool = False,
            dsts: Iterable[tuple] | None = None, max_records: int | None = None) -> Report:
        """Destroy (or with dry_run only list) the sockets of flows matching
        any target, in every network namespace.

        dsts:        None, or the backends the targets point at, as (address,
                     port) pairs (see dst_key): sockets connected elsewhere
                     are skipped before their flow record is read. Must cover
                     every backend of the targets.
        max_records: keep at most this many socket records in the report
                     (None: all); found/destroyed/failed/per_target count all.
        """
        return self._run(list(targets), _Mode.DRY_RUN if dry_run else _Mode.DESTROY, dsts, max_records)

    def count(self, targets: Iterable[Target], dsts: Iterable[tuple] | None = None) -> Report:
        """Stats mode: per-target counts of matching sockets, no records, nothing destroyed."""
        return self._run(list(targets), _Mode.STATS, dsts, None)

    def _passes(self, mode: _Mode) -> dict[str, int]:
        """Iterator passes per namespace and protocol: 1, or MAX_PASSES when
        destroying on a kernel whose iterator can skip a socket after one
        was destroyed under it (further passes stop once one destroys nothing)."""
        if mode is not _Mode.DESTROY:
            return {"tcp": 1, "udp": 1}
        return {p: 1 if resume_fixed(p) else MAX_PASSES for p in ("tcp", "udp")}

    def _run(self, targets: list[Target], mode: _Mode, dsts: Iterable[tuple] | None,
             max_records: int | None) -> Report:
        if not targets:
            raise ValueError("no targets")
        dst_keys = None
        if dsts is not None:
            dst_keys = list({bytes(k): k for k in (dst_key(a, p) for a, p in dsts)}.values())
            if len(dst_keys) > DSTS_MAX:
                raise ValueError(f"{len(dst_keys)} destinations, at most {DSTS_MAX}")
        if max_records is not None and max_records < 0:
            raise ValueError("max_records < 0")
        with self._lock:
            obj = self._obj
            if obj is None:
                raise TerminationError("terminator is closed")
            via_netlink = mode is _Mode.DESTROY and self.method is Method.NETLINK
            # The netlink object cannot destroy: it always runs as a dry run.
            bpf_mode = _Mode.DRY_RUN if via_netlink else mode
            rep = Report(method="none" if mode is not _Mode.DESTROY else self.method.value,
                         dry_run=mode is not _Mode.DESTROY)
            t0 = time.monotonic()
            obj.set_targets(targets, bpf_mode, dst_keys)
            passes = self._passes(mode)
            nss = self._namespaces(rep.unreachable)
            try:
                def scan(ns: Netns):
                    t = time.monotonic()
                    out: list[tuple[TermRec, int]] = []
                    n = 0
                    for proto in ("tcp", "udp"):
                        seen: dict[int, int] | None = None  # cookie -> index in out (multi-pass)
                        for i in range(passes[proto]):
                            found = _parse(obj.read_iter(proto))
                            n += 1
                            if via_netlink and found:
                                results = _netlink_destroy(found)
                            else:
                                results = [r.result for r in found]
                            if passes[proto] == 1:
                                out += zip(found, results)
                                break
                            if seen is None:
                                seen = {}
                            for r, res in zip(found, results):
                                j = seen.get(r.cookie)
                                if j is None:
                                    seen[r.cookie] = len(out)
                                    out.append((r, res))
                                elif out[j][1] != 0:
                                    out[j] = (r, res)
                            # Without the resume fix, destroying unhashes
                            # sockets under the iterator, which resumes a
                            # bucket by offset and so can skip one: go again
                            # while a pass destroys something.
                            if 0 not in results:
                                break
                    return out, time.monotonic() - t, n

                out = in_each_netns(nss, scan)
            finally:
                close_netns(nss)
            rep.duration = time.monotonic() - t0
            socks = rep.sockets
            room = len(socks) if max_records is None else max_records
            counts: dict[tuple[int, int, int], list[int]] = {}  # (kind, fe, be) -> found, destroyed, failed
            for ns, res, err in out:
                if err is not None:
                    rep.errors.append(f"{ns.ident} ({ns.path}): {err}")
                    continue
                rep.netns_scanned += 1
                recs, seconds, npasses = res
                rep.passes += npasses
                nc = rep.per_netns[ns.ident] = NetnsCount(ns.path, seconds=seconds)
                for r, result in recs:
                    result = None if result == NOT_TRIED else result
                    if max_records is None or room > 0:
                        socks._append_raw(ns.ident, r, result)
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
            if mode is _Mode.STATS:
                for t, v in obj.target_counts().items():
                    rep.per_target[t] = TargetCount(found=v.matched)
                    rep.found += v.matched
            else:
                for t in targets:
                    rep.per_target[t] = TargetCount()
                for (kind, fe, be), (f, d, fl) in counts.items():
                    tc = rep.per_target.setdefault(_target_of(kind, fe, be), TargetCount())
                    tc.found += f
                    tc.destroyed += d
                    tc.failed += fl
                rep.found = sum(c.found for c in rep.per_target.values())
                rep.destroyed = sum(c.destroyed for c in rep.per_target.values())
                rep.failed = sum(c.failed for c in rep.per_target.values())
            log.info("socket termination: %s", rep.summary())
            return rep

    @staticmethod
    def _record(netns: str, r: TermRec, result: int | None) -> SocketRecord:
        """netns: the namespace's ident ("net:[<inode>]")."""
        return SocketRecord(
            netns=netns, cookie=r.cookie, family=r.family,
            proto={socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}.get(r.proto, str(r.proto)),
            state=r.state, src=_addr(r.src), sport=socket.ntohs(r.sport), dst=_addr(r.dst),
            dport=socket.ntohs(r.dport), frontend_id=r.frontend_id, backend_id=r.backend_id,
            target=_rec_target(r), result=result)


def _netlink_destroy(recs: list[TermRec]) -> list[int]:
    """SOCK_DESTROY for each record, from the calling thread's namespace."""
    s = DiagSocket()
    try:
        reqs = [_diag_req(r.family, r.proto, socket.ntohs(r.sport), socket.ntohs(r.dport),
                          bytes(r.src), bytes(r.dst), r.cookie) for r in recs]
        return s.destroy(reqs)
    finally:
        s.close()
