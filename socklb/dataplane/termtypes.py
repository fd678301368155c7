"""The typed API of socket termination (sockdestroy.py): what to terminate
(Target) and what a run found and did (Report, with its per-target and
per-namespace counts and the SocketRecord of each socket, built lazily from
the kernel's records); for policy, the sockets of cgroups a listing found
(ListedSocket, SocketListing) and what destroying some of them by cookie
did (CookieReport).
"""
from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

from socklb.lb import protocols
from socklb.lb.addresses import addr_text, join_host_port
from socklb.lb.frontends import FrontendKey

from .layout import TermKind, TermRec


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

    @classmethod
    def matched(cls, kind: int, frontend_id: int, backend_id: int) -> "Target":
        """The target a record matched, from its target_kind (layout.TermKind)
        and the ids of its flow."""
        if kind == TermKind.BACKEND:
            return cls(0, backend_id)
        if kind == TermKind.FRONTEND:
            return cls(frontend_id, 0)
        return cls(frontend_id, backend_id)


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


def socket_record(netns: str, r: TermRec, result: int | None) -> SocketRecord:
    """The SocketRecord of a kernel record; netns: the namespace's ident
    ("net:[<inode>]"); result None: not tried."""
    return SocketRecord(
        netns=netns, cookie=r.cookie, family=r.family, proto=protocols.name_of(r.proto),
        state=r.state, src=addr_text(bytes(r.src)), sport=socket.ntohs(r.sport), dst=addr_text(bytes(r.dst)),
        dport=socket.ntohs(r.dport), frontend_id=r.frontend_id, backend_id=r.backend_id,
        target=Target.matched(r.target_kind, r.frontend_id, r.backend_id), result=result)


class SocketRecords(Sequence):
    """Report.sockets: a read-only list of SocketRecord built lazily from
    the raw records (netns ident, TermRec, result), each item on first access
    and cached. Compares equal to a list with the same records."""

    __slots__ = ("_raw", "_made")

    def __init__(self, raw: Iterable = ()):
        self._raw = list(raw)
        self._made: list[SocketRecord | None] = [None] * len(self._raw)

    def append_raw(self, ident: str, rec: TermRec, result: int | None) -> None:
        self._raw.append((ident, rec, result))
        self._made.append(None)

    def _item(self, i: int) -> SocketRecord:
        s = self._made[i]
        if s is None:
            s = self._made[i] = socket_record(*self._raw[i])
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
    per_netns: dict[str, NetnsCount] = field(default_factory=dict)
    # the sockets found (at most run(max_records=...)); a lazily built sequence
    sockets: Sequence[SocketRecord] = field(default_factory=SocketRecords, repr=False)
    errors: list[str] = field(default_factory=list)  # namespaces that could not be scanned
    unreachable: list[str] = field(default_factory=list)  # namespaces seen but not openable
    passes: int = 0             # iterator passes (tcp + udp) over all namespaces

    def summary(self) -> str:
        what = "found" if self.dry_run else f"destroyed {self.destroyed}/"
        return (f"{what}{self.found} sockets in {self.netns_scanned} netns, "
                f"{self.duration * 1000:.1f} ms, method={self.method}")


# --- policy: the sockets of cgroups, destroyed by cookie ---------------------------------------

class ListedSocket(NamedTuple):
    """A socket a listing found (Terminator.list_cgroups): who made it, where
    it goes and the flow it carries. Addresses stay raw (16 bytes, network
    order, IPv4 v4-mapped) for judging many sockets; ports in host order."""

    netns: str         # "net:[<inode>]"
    cookie: int
    cgroup_id: int     # the cgroup v2 of the process that created it
    family: int        # socket.AF_INET / AF_INET6
    proto: int         # IPPROTO_TCP / IPPROTO_UDP
    state: int         # kernel skc_state (TCP: any but LISTEN; UDP: 1, connected)
    src: bytes
    sport: int
    dst: bytes         # the peer: a backend for a load-balanced flow
    dport: int
    frontend_id: int   # of its live flow record; 0: none
    backend_id: int
    vip: bytes         # the flow's VIP, as the application addressed it (frontend_id != 0)
    vip_port: int

    @property
    def frontend(self) -> FrontendKey | None:
        """The frontend its live flow went through, as the application addressed it."""
        return FrontendKey(self.vip, self.vip_port, self.proto) if self.frontend_id else None

    @property
    def source(self) -> str:
        return join_host_port(addr_text(self.src), self.sport)

    @property
    def destination(self) -> str:
        return join_host_port(addr_text(self.dst), self.dport)

    @property
    def protocol(self) -> str:
        return protocols.name_of(self.proto)


@dataclass
class SocketListing:
    """What a listing found: the sockets, once each, and where it looked."""

    sockets: list[ListedSocket] = field(default_factory=list)
    duration: float = 0.0
    netns_scanned: int = 0
    per_netns: dict[str, NetnsCount] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)       # namespaces that could not be read
    unreachable: list[str] = field(default_factory=list)  # namespaces seen but not openable
    # Terminator.judge_cgroups: the sockets the kernel judged (`sockets` are
    # the denied ones; a further pass, after one that destroyed some on a
    # kernel without the iterator resume fix, counts its sockets again);
    # None for a listing (every socket of the cgroups)
    judged: int | None = None

    def summary(self) -> str:
        if self.judged is not None:
            return (f"judged {self.judged} sockets in the kernel, {len(self.sockets)} denied, in "
                    f"{self.netns_scanned} netns, {self.duration * 1000:.1f} ms")
        return f"listed {len(self.sockets)} sockets in {self.netns_scanned} netns, {self.duration * 1000:.1f} ms"


@dataclass
class CookieReport:
    """What destroying sockets by cookie (Terminator.destroy_cookies) did.
    A socket closed since it was listed is not found (not a failure)."""

    method: str          # "kfunc" | "netlink" | "none" (dry run)
    dry_run: bool
    asked: int = 0       # sockets given
    found: int = 0       # of those, still open
    destroyed: int = 0
    failed: int = 0
    # cookie -> 0 destroyed, -errno failed, None not tried (dry run); the sockets found
    results: dict[int, int | None] = field(default_factory=dict)
    duration: float = 0.0
    netns_scanned: int = 0
    per_netns: dict[str, NetnsCount] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    passes: int = 0      # iterator passes (kfunc and dry run)

    def summary(self) -> str:
        what = "found" if self.dry_run else f"destroyed {self.destroyed}/"
        return (f"{what}{self.found} of {self.asked} sockets in {self.netns_scanned} netns, "
                f"{self.duration * 1000:.1f} ms, method={self.method}")
