"""A service as the datapath serves it: one target per frontend (its key,
its backends of the same address family, its selection table).

Pure: no I/O. Both planes compute targets here, so the control plane never
accepts a service a node would refuse. Errors name the field as a path into
the message (`services[2].frontends[0].address`).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from socklb.v1 import node_pb2, types_pb2

from . import selection
from .addresses import V4MAPPED, addr16, addr_text, check_port, join_host_port, parse_ip
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


@dataclass(frozen=True, order=True)
class FrontendKey:
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


@dataclass(frozen=True)
class BackendTarget:
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
    ip = parse_ip(fe.address, f"{field}.address")
    port = check_port(fe.port, f"{field}.port", allow_zero=False)
    proto = _enum(PROTOCOLS, fe.protocol, f"{field}.protocol", "protocol")
    return FrontendKey(addr16(ip), port, proto)


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
    backends = []
    seen: dict[tuple, int] = {}
    for bi, be in enumerate(svc.backends):
        bf = f"{sf}.backends[{bi}]"
        ip = parse_ip(be.address, f"{bf}.address")
        port = check_port(be.port, f"{bf}.port", allow_zero=True)
        if be.weight > MAX_WEIGHT:
            raise InvalidState(f"{bf}.weight", f"{be.weight} exceeds {MAX_WEIGHT}")
        state = _enum(STATES, be.state, f"{bf}.state", "backend state")
        ident = (ip, port)
        if ident in seen:
            raise InvalidState(f"{bf}", f"duplicate of backends[{seen[ident]}] ({be.address} port {port})")
        seen[ident] = bi
        backends.append((ip, port, state, be.weight or 1))

    out = []
    seen_fe: dict[FrontendKey, int] = {}
    for fi, fe in enumerate(svc.frontends):
        ff = f"{sf}.frontends[{fi}]"
        key = frontend_key(fe, ff)
        if key in seen_fe:
            raise InvalidState(ff, f"duplicate of frontends[{seen_fe[key]}] ({key})")
        seen_fe[key] = fi
        # A frontend uses the backends of its own address family.
        mine = tuple(BackendTarget(addr16(bip), bport or key.port, bstate, w)
                     for bip, bport, bstate, w in backends if (bip.version == 4) == key.is_v4)
        if len({(b.addr, b.port) for b in mine}) != len(mine):
            raise InvalidState(f"{sf}.backends", f"two backends resolve to the same address and port for {key}")
        active = [i for i, b in enumerate(mine) if b.state == BackendState.ACTIVE]
        if sel == Selection.MAGLEV and len(active) > maglev_size:
            raise InvalidState(f"{sf}.backends", f"{len(active)} active backends for {key} exceed the Maglev "
                                                 f"table size {maglev_size}")
        try:
            table = selection.build_table(int(sel), [backend_name(mine[i]) for i in active],
                                          [mine[i].weight for i in active], maglev_size)
        except ValueError as e:  # a limit of the tables: a wrong state, named, never a crash
            raise InvalidState(f"{sf}.backends", f"selection table for {key}: {e}") from None
        out.append(FrontendTarget(svc.name, key, sel, svc.affinity_timeout_seconds, mine,
                                  tuple(active[j] for j in table)))
    return out


def backend_name(b: BackendTarget) -> str:
    """The backend's Maglev key: stable across nodes and processes."""
    return f"{addr_text(b.addr)}:{b.port}"
