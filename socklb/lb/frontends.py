"""A service as the datapath serves it: one target per frontend (its key,
its backends of the same address family, its selection table).

Pure: no I/O. Both planes compute targets here, so the control plane never
accepts a service a node would refuse. Errors name the field as a path into
the message (`services[2].frontends[0].address`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from socklb.v1 import node_pb2, types_pb2

from . import selection
from .addresses import (MAX_PORT, V4MAPPED, addr16, addr_text, check_port, ipv4_packed, join_host_port,
                        parse_ip, usable_ipv4)
from .errors import InvalidState
from .limits import MAGLEV_TABLE_SIZE, MAX_AFFINITY_SECONDS, MAX_BACKENDS, MAX_FRONTENDS, MAX_WEIGHT
from .protocols import PROTOCOLS, name_of


class Selection(enum.IntEnum):
    """How a frontend picks a backend (values of SOCKLB_SEL_* in bpf/socklb.h)."""
    RANDOM = 1
    MAGLEV = 2


class BackendState(enum.IntEnum):
    """Values of SOCKLB_BE_* in bpf/socklb.h; only ACTIVE backends get new flows."""
    ACTIVE = 1
    DRAINING = 2
    QUARANTINED = 3


STATES = {
    types_pb2.BACKEND_STATE_UNSPECIFIED: BackendState.ACTIVE,
    types_pb2.BACKEND_STATE_ACTIVE: BackendState.ACTIVE,
    types_pb2.BACKEND_STATE_DRAINING: BackendState.DRAINING,
    types_pb2.BACKEND_STATE_QUARANTINED: BackendState.QUARANTINED,
}
SELECTIONS = {
    types_pb2.SELECTION_UNSPECIFIED: Selection.RANDOM,
    types_pb2.SELECTION_RANDOM: Selection.RANDOM,
    types_pb2.SELECTION_MAGLEV: Selection.MAGLEV,
}
# And back, for what a node reports.
STATES_PB = {state: pb for pb, state in STATES.items() if pb != types_pb2.BACKEND_STATE_UNSPECIFIED}
SELECTIONS_PB = {sel: pb for pb, sel in SELECTIONS.items() if pb != types_pb2.SELECTION_UNSPECIFIED}


class FrontendKey(NamedTuple):
    """A frontend as the services map keys it. A named tuple, not a
    dataclass: hashed and compared in C, as a full state's 10k+ keys are
    looked up several times per apply."""

    addr: bytes  # 16 bytes, IPv4 v4-mapped
    port: int
    proto: int  # IPPROTO_*
    # Whose entries in a node's services map: 0 the service's, 1 a local
    # redirect's of the same frontend (SOCKLB_TABLE_* in bpf/socklb.h).
    table: int = 0

    @property
    def is_v4(self) -> bool:
        return self.addr[:12] == V4MAPPED

    def in_table(self, table: int) -> FrontendKey:
        """The same frontend in another table."""
        return FrontendKey(self.addr, self.port, self.proto, table)

    def __str__(self) -> str:
        shown = f"{join_host_port(addr_text(self.addr), self.port)}/{name_of(self.proto)}"
        return f"{shown} (local redirect)" if self.table else shown


class BackendTarget(NamedTuple):
    """A named tuple: a full state makes 100k+ of them."""

    addr: bytes
    port: int
    state: BackendState
    weight: int


@dataclass(frozen=True)
class FrontendTarget:
    service: str
    key: FrontendKey
    selection: Selection
    affinity_timeout: int
    backends: tuple[BackendTarget, ...]
    # Selection table: indices into `backends`, ACTIVE ones only.
    table: tuple[int, ...]
    flags: int = 0  # of the master entry (SOCKLB_SVC_F_* in bpf/socklb.h; set by the node for redirects)


def _enum(table: dict, value: int, field: str, kind: str):
    if value not in table:
        raise InvalidState(field, f"unknown {kind} {value}")
    return table[value]


def frontend_key(fe: types_pb2.Frontend, field: str) -> FrontendKey:
    """The key of frontend `fe` (at `field`): its address, port and protocol checked."""
    addr = _plain_ipv4(fe.address) or addr16(parse_ip(fe.address, f"{field}.address"))
    port = check_port(fe.port, f"{field}.port", allow_zero=False)
    proto = _enum(PROTOCOLS, fe.protocol, f"{field}.protocol", "protocol")
    return FrontendKey(addr, port, proto)


def service_targets(svc: node_pb2.ServiceState, sf: str,
                    maglev_size: int = MAGLEV_TABLE_SIZE) -> list[FrontendTarget]:
    """Validate one service (at field `sf`) and expand it into one target per frontend."""
    sel = _enum(SELECTIONS, svc.selection, f"{sf}.selection", "selection")
    if svc.affinity_timeout_seconds > MAX_AFFINITY_SECONDS:
        raise InvalidState(f"{sf}.affinity_timeout_seconds",
                           f"{svc.affinity_timeout_seconds} s exceeds {MAX_AFFINITY_SECONDS} s")
    if len(svc.frontends) > MAX_FRONTENDS:
        raise InvalidState(f"{sf}.frontends", f"{len(svc.frontends)} frontends: more than {MAX_FRONTENDS}")
    if len(svc.backends) > MAX_BACKENDS:
        raise InvalidState(f"{sf}.backends", f"{len(svc.backends)} backends: more than {MAX_BACKENDS}")
    backends = _backends(svc.backends, sf)
    new = tuple.__new__  # BackendTarget's own __new__ is a Python call; 100k+ of them
    zero_port = any(not p for _, p, _, _ in backends)

    out = []
    seen_fe: dict[FrontendKey, int] = {}
    for fi, fe in enumerate(svc.frontends):
        ff = f"{sf}.frontends[{fi}]"
        key = frontend_key(fe, ff)
        if key in seen_fe:
            raise InvalidState(ff, f"duplicate of frontends[{seen_fe[key]}] ({key})")
        seen_fe[key] = fi
        # A frontend uses the backends of its own address family.
        v4, fport = key.is_v4, key.port
        mine = tuple([new(BackendTarget, (a, p or fport, s, w)) for a, p, s, w in backends
                      if (a[:12] == V4MAPPED) == v4])
        # (address, port) is unique in `backends` (_backends); only port 0
        # (the frontend's) can make two the same here.
        if zero_port and len({(b.addr, b.port) for b in mine}) != len(mine):
            raise InvalidState(f"{sf}.backends", f"two backends resolve to the same address and port for {key}")
        active = [i for i, b in enumerate(mine) if b.state is _ACTIVE]
        if sel == Selection.MAGLEV and len(active) > maglev_size:
            raise InvalidState(f"{sf}.backends", f"{len(active)} active backends for {key} exceed the Maglev "
                                                 f"table size {maglev_size}")
        try:
            if sel is Selection.RANDOM:
                # By weights alone (cached: a node's services share a few weight patterns).
                table = selection.random_table(tuple([mine[i].weight for i in active]))
            else:
                table = selection.build_table(int(sel), [backend_name(mine[i]) for i in active],
                                              [mine[i].weight for i in active], maglev_size)
        except ValueError as e:  # a limit of the tables: a wrong state, named, never a crash
            raise InvalidState(f"{sf}.backends", f"selection table for {key}: {e}") from None
        slots = tuple(table) if len(active) == len(mine) else tuple([active[j] for j in table])
        out.append(FrontendTarget(svc.name, key, sel, svc.affinity_timeout_seconds, mine, slots))
    return out


_ACTIVE = BackendState.ACTIVE


def _plain_ipv4(text: str) -> bytes | None:
    """The 16 bytes of a usable IPv4 literal (exactly what parse_ip's IPv4
    path takes); None for anything else (IPv6, brackets, 0.0.0.0,
    multicast, no address), which parse_ip then reads or names."""
    packed = ipv4_packed(text)
    return V4MAPPED + packed if packed is not None and usable_ipv4(packed) else None


def _backends(pbs, sf: str) -> list[tuple[bytes, int, BackendState, int]]:
    """A service's backends checked, as (16-byte address, port, state,
    weight), in order. A plain IPv4 backend whose fields are all in range is
    read here, in a few C calls (a full state has 100k+ backends); any other
    (IPv6, brackets, anything out of range) goes to _backend, which checks
    every field in turn and names the first wrong one."""
    out = []
    seen: dict[tuple[bytes, int], int] = {}
    plain, states = _plain_ipv4, STATES
    for bi, be in enumerate(pbs):
        address, port, weight = be.address, be.port, be.weight
        state = states.get(be.state)
        a16 = plain(address)
        if a16 is None or port > MAX_PORT or weight > MAX_WEIGHT or state is None:
            a16, port, state, weight = _backend(be, f"{sf}.backends[{bi}]")
        else:
            weight = weight or 1
        ident = (a16, port)
        if ident in seen:
            raise InvalidState(f"{sf}.backends[{bi}]", f"duplicate of backends[{seen[ident]}] ({address} port {port})")
        seen[ident] = bi
        out.append((a16, port, state, weight))
    return out


def _backend(be: types_pb2.Backend, bf: str) -> tuple[bytes, int, BackendState, int]:
    """One backend (at field `bf`) checked field by field: the first wrong
    one raises, named."""
    ip = parse_ip(be.address, f"{bf}.address")
    port = check_port(be.port, f"{bf}.port", allow_zero=True)
    if be.weight > MAX_WEIGHT:
        raise InvalidState(f"{bf}.weight", f"{be.weight} exceeds {MAX_WEIGHT}")
    state = _enum(STATES, be.state, f"{bf}.state", "backend state")
    return addr16(ip), port, state, be.weight or 1


def backend_name(b: BackendTarget) -> str:
    """The backend's Maglev key: stable across nodes and processes."""
    return f"{addr_text(b.addr)}:{b.port}"
