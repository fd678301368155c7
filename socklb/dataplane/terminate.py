"""Socket termination: find the load-balanced sockets whose flow record points
at a target (a backend, or a whole frontend) in every network namespace of the
node, and destroy them so their clients get an error and reconnect through
the load balancer.

    with Terminator(pin_dir) as t:                       # method="auto"
        rep = t.run([Target.backend(7)])                 # destroy
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

When destroying, each namespace is scanned again while a pass destroyed
something (at most MAX_PASSES): removing sockets under a running iterator
can make it skip a neighbour. Sockets that keep arriving (the backend still
in the service) are what further passes find: remove or drain the backend
first, then terminate.

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
hash for its namespace, so a run costs about one hash walk per namespace even
where nothing matches.
"""
from __future__ import annotations

import ctypes as ct
import enum
import errno
import logging
import os
import socket
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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
MAX_PASSES = 4  # iterator passes per namespace when destroying (see Terminator._run)


# --- layouts shared with bpf/sock_destroy.bpf.c ------------------------------

class TermKey(ct.Structure):
    _fields_ = [("frontend_id", ct.c_uint32), ("backend_id", ct.c_uint32)]


class TermVal(ct.Structure):
    _fields_ = [("matched", ct.c_uint64), ("destroyed", ct.c_uint64), ("failed", ct.c_uint64)]


class TermCfg(ct.Structure):
    _fields_ = [("mode", ct.c_uint32), ("pad", ct.c_uint32)]


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


assert ct.sizeof(TermRec) == 64 and ct.sizeof(TermVal) == 24  # _Static_assert in the C source


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
    sockets: list[SocketRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # namespaces that could not be scanned
    unreachable: list[str] = field(default_factory=list)  # namespaces seen but not openable

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
        except Exception:
            self.close()
            raise

    def set_targets(self, targets: Iterable[Target], mode: _Mode) -> None:
        for k in list(self.targets.keys()):
            self.targets.delete(k)
        for t in targets:
            self.targets.update(TermKey(t.frontend_id, t.backend_id), TermVal())
        self.cfg.update(ct.c_uint32(0), TermCfg(int(mode)))

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


# --- the terminator --------------------------------------------------------------------------

def _addr(words) -> str:
    return layout.unpack_addr(words)


def _rec_target(r: TermRec) -> Target:
    if r.target_kind == 2:
        return Target(0, r.backend_id)
    if r.target_kind == 3:
        return Target(r.frontend_id, 0)
    return Target(r.frontend_id, r.backend_id)


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
            if why is None:
                log.info("socket termination: method %s", m.value)
                return
            self.unavailable[m.value] = why
            log.info("socket termination: %s unavailable: %s", m.value, why)
        raise TerminationUnavailable(
            "cannot destroy sockets on this node: "
            + "; ".join(f"{k}: {v}" for k, v in self.unavailable.items()))

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
        out, seen = [], set()
        for p in self.netns_paths:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                os.close(fd)
                continue
            seen.add((st.st_dev, st.st_ino))
            out.append(Netns(f"net:[{st.st_ino}]", p, fd))
        return out

    def run(self, targets: Iterable[Target], dry_run: bool = False) -> Report:
        """Destroy (or with dry_run only list) the sockets of flows matching
        any target, in every network namespace."""
        return self._run(list(targets), _Mode.DRY_RUN if dry_run else _Mode.DESTROY)

    def count(self, targets: Iterable[Target]) -> Report:
        """Stats mode: per-target counts of matching sockets, no records, nothing destroyed."""
        return self._run(list(targets), _Mode.STATS)

    def _run(self, targets: list[Target], mode: _Mode) -> Report:
        if not targets:
            raise ValueError("no targets")
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
            obj.set_targets(targets, bpf_mode)
            nss = self._namespaces(rep.unreachable)
            try:
                def scan(ns: Netns):
                    t = time.monotonic()
                    seen: dict[int, tuple[TermRec, int]] = {}  # cookie -> (record, result)
                    for _ in range(MAX_PASSES if mode is _Mode.DESTROY else 1):
                        found = _parse(obj.read_iter("tcp") + obj.read_iter("udp"))
                        if via_netlink and found:
                            results = _netlink_destroy(found)
                        else:
                            results = [r.result for r in found]
                        for r, res in zip(found, results):
                            if seen.get(r.cookie, (None, -1))[1] != 0:
                                seen[r.cookie] = (r, res)
                        # Destroying unhashes sockets under the iterator, which
                        # resumes a bucket by offset after its output buffer
                        # filled, and so can skip one: go again while a pass
                        # destroys something.
                        if 0 not in results:
                            break
                    return list(seen.values()), time.monotonic() - t

                out = in_each_netns(nss, scan)
            finally:
                close_netns(nss)
            rep.duration = time.monotonic() - t0
            for ns, res, err in out:
                if err is not None:
                    rep.errors.append(f"{ns.ident} ({ns.path}): {err}")
                    continue
                rep.netns_scanned += 1
                recs, seconds = res
                nc = rep.per_netns[ns.ident] = NetnsCount(ns.path, seconds=seconds)
                for r, result in recs:
                    rep.sockets.append(self._record(ns, r, None if result == NOT_TRIED else result))
                    nc.found += 1
                    nc.destroyed += result == 0
            if mode is _Mode.STATS:
                for t, v in obj.target_counts().items():
                    rep.per_target[t] = TargetCount(found=v.matched)
                    rep.found += v.matched
            else:
                for t in targets:
                    rep.per_target[t] = TargetCount()
                for s in rep.sockets:
                    c = rep.per_target.setdefault(s.target, TargetCount())
                    c.found += 1
                    if s.result == 0:
                        c.destroyed += 1
                    elif s.result is not None:
                        c.failed += 1
                rep.found = len(rep.sockets)
                rep.destroyed = sum(c.destroyed for c in rep.per_target.values())
                rep.failed = sum(c.failed for c in rep.per_target.values())
            log.info("socket termination: %s", rep.summary())
            return rep

    @staticmethod
    def _record(ns: Netns, r: TermRec, result: int | None) -> SocketRecord:
        return SocketRecord(
            netns=ns.ident, cookie=r.cookie, family=r.family,
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
