"""Desired state (socklb.v1.NodeState) -> validated per-frontend targets.

Pure: no I/O. Every error names the offending field as a path into the
message (`services[2].frontends[0].address`), and nothing is returned
half-checked: a state is either entirely valid or rejected.
"""
from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from socklb.lb import selection
from socklb.v1 import node_pb2, types_pb2

from . import layout

PROTOCOLS = {
    types_pb2.PROTOCOL_UNSPECIFIED: socket.IPPROTO_TCP,  # like Kubernetes, TCP unless told
    types_pb2.PROTOCOL_TCP: socket.IPPROTO_TCP,
    types_pb2.PROTOCOL_UDP: socket.IPPROTO_UDP,
}
STATES = {
    types_pb2.BACKEND_STATE_UNSPECIFIED: layout.BackendState.ACTIVE,
    types_pb2.BACKEND_STATE_ACTIVE: layout.BackendState.ACTIVE,
    types_pb2.BACKEND_STATE_DRAINING: layout.BackendState.DRAINING,
    types_pb2.BACKEND_STATE_QUARANTINED: layout.BackendState.QUARANTINED,
}
SELECTIONS = {
    types_pb2.SELECTION_UNSPECIFIED: layout.Selection.RANDOM,
    types_pb2.SELECTION_RANDOM: layout.Selection.RANDOM,
    types_pb2.SELECTION_MAGLEV: layout.Selection.MAGLEV,
}
MAX_WEIGHT = 65535
# Per service, on both planes (the control plane validates with this module).
MAX_BACKENDS = 4096
MAX_FRONTENDS = 64
MAX_AFFINITY_SECONDS = 86400 * 7
MAX_NAME = 253


class InvalidState(ValueError):
    """The desired state is wrong; `field` is the path of the culprit."""

    def __init__(self, field: str, message: str, other: int | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.other = other  # a frontend conflict: index of the service that holds it


@dataclass(frozen=True, order=True)
class FrontendKey:
    addr: bytes  # 16 bytes, IPv4 v4-mapped
    port: int
    proto: int  # IPPROTO_*

    @property
    def is_v4(self) -> bool:
        return self.addr[:12] == b"\0" * 10 + b"\xff\xff"

    def __str__(self) -> str:
        ip = ipaddress.IPv6Address(self.addr)
        host = str(ip.ipv4_mapped) if ip.ipv4_mapped else f"[{ip}]"
        return f"{host}:{self.port}/{'tcp' if self.proto == socket.IPPROTO_TCP else 'udp'}"


@dataclass(frozen=True)
class BackendTarget:
    addr: bytes
    port: int
    state: layout.BackendState
    weight: int


@dataclass(frozen=True)
class FrontendTarget:
    service: str
    key: FrontendKey
    selection: layout.Selection
    affinity_timeout: int
    backends: tuple[BackendTarget, ...]
    # Selection table: indices into `backends`, ACTIVE ones only.
    table: tuple[int, ...]


# Maglev table size on every node: fixed, so that removing a backend moves
# only its share of the table (a size change would reshuffle every slot).
MAGLEV_TABLE_SIZE = 1021


@dataclass(frozen=True)
class Limits:
    services: int = layout.SERVICES_MAX  # master + slot entries
    backends: int = layout.BACKENDS_MAX
    maglev_size: int = MAGLEV_TABLE_SIZE


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 64 else repr(text[:64]) + f"... ({len(text)} characters)"


def parse_ip(text: str, field: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address literal: IPv4, IPv6, or IPv6 in one pair of brackets.
    Zone ids are refused: the datapath keys on the 16-byte address alone, so
    fe80::1%a and fe80::1%b would be one backend."""
    raw = text
    if text.startswith("[") or text.endswith("]"):
        if not (text.startswith("[") and text.endswith("]")) or text.count("[") + text.count("]") != 2:
            raise InvalidState(field, f"{_shown(text)} has unbalanced brackets")
        raw = text[1:-1]
        if ":" not in raw:
            raise InvalidState(field, f"{_shown(text)}: brackets are for IPv6 addresses only")
    if "%" in raw:
        raise InvalidState(field, f"{_shown(text)}: zone ids (%...) are not supported")
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        raise InvalidState(field, f"{_shown(text)} is not an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise InvalidState(field, f"{ip} cannot be used (unspecified or multicast)")
    return ip


def canonical_address(text: str) -> str:
    """The one stored form of an address (IPv6 compressed, no brackets,
    v4-mapped as IPv4); text that is no address comes back unchanged, for
    validation to name."""
    try:
        return str(parse_ip(text, "address"))
    except InvalidState:
        return text


def _addr16(ip) -> bytes:
    return layout.addr16(str(ip))


def check_port(value: int, field: str, allow_zero: bool) -> int:
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise InvalidState(field, f"port {value} is out of range {0 if allow_zero else 1}..65535")
    return value


def _enum(table: dict, value: int, field: str, kind: str):
    if value not in table:
        raise InvalidState(field, f"unknown {kind} {value}")
    return table[value]


def frontend_targets(state: node_pb2.NodeState, limits: Limits = Limits()) -> dict[FrontendKey, FrontendTarget]:
    """Validate a whole NodeState and expand it into one target per frontend."""
    targets: dict[FrontendKey, FrontendTarget] = {}
    owner: dict[FrontendKey, str] = {}
    names: dict[str, int] = {}
    for si, svc in enumerate(state.services):
        sf = f"services[{si}]"
        check_name(svc.name, f"{sf}.name")
        if svc.name in names:
            raise InvalidState(f"{sf}.name", f"{svc.name!r} is already services[{names[svc.name]}]")
        names[svc.name] = si
        for t in service_targets(svc, sf, limits):
            if t.key in targets:
                other, text = owner[t.key]
                raise InvalidState(_frontend_field(svc, sf, t.key), f"frontend {t.key} is already used by {text}",
                                   other=other)
            targets[t.key] = t
            owner[t.key] = (si, f"{sf} ({svc.name!r})")
    check_capacity(targets.values(), limits)
    return targets


def isolate(state: node_pb2.NodeState, previous: Mapping[str, node_pb2.ServiceState],
            limits: Limits = Limits()) -> tuple[node_pb2.NodeState, dict[str, str]]:
    """What to apply of a state that is invalid as a whole: every service
    that fails its own checks (or claims a frontend another service holds) is
    replaced by its previous version, or left out when it had none, and named
    in the second value with its error. Errors of no single service (the maps'
    capacity) still raise: then nothing is applied."""
    services = list(state.services)
    rejected: dict[str, str] = {}
    for _ in range(len(services) + 1):
        candidate = node_pb2.NodeState(version=state.version, services=services)
        try:
            frontend_targets(candidate, limits)
            return candidate, rejected
        except InvalidState as e:
            m = re.match(r"services\[(\d+)\]", e.field)
            if m is None:
                raise
            i = int(m.group(1))
            if e.other is not None and previous.get(services[i].name) == services[i]:
                i = e.other  # an unchanged service keeps its frontend; the newcomer is refused
            name = services[i].name
            if name in rejected:
                raise  # its previous version does not fit either
            rejected[name] = str(e)
            if name in previous:
                services[i] = previous[name]
            else:
                del services[i]
    raise AssertionError("isolate: no progress")  # each round removes or replaces one service


def _frontend_field(svc, sf: str, key: FrontendKey) -> str:
    for fi, fe in enumerate(svc.frontends):
        ip = parse_ip(fe.address, "")
        if _addr16(ip) == key.addr and fe.port == key.port and PROTOCOLS[fe.protocol] == key.proto:
            return f"{sf}.frontends[{fi}]"
    return f"{sf}.frontends"


def service_targets(svc: node_pb2.ServiceState, sf: str, limits: Limits = Limits()) -> list[FrontendTarget]:
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
        ip = parse_ip(fe.address, f"{ff}.address")
        port = check_port(fe.port, f"{ff}.port", allow_zero=False)
        proto = _enum(PROTOCOLS, fe.protocol, f"{ff}.protocol", "protocol")
        key = FrontendKey(_addr16(ip), port, proto)
        if key in seen_fe:
            raise InvalidState(ff, f"duplicate of frontends[{seen_fe[key]}] ({key})")
        seen_fe[key] = fi
        # A frontend uses the backends of its own address family.
        mine = tuple(BackendTarget(_addr16(bip), bport or port, bstate, w)
                     for bip, bport, bstate, w in backends if bip.version == ip.version)
        if len({(b.addr, b.port) for b in mine}) != len(mine):
            raise InvalidState(f"{sf}.backends", f"two backends resolve to the same address and port for {key}")
        active = [i for i, b in enumerate(mine) if b.state == layout.BackendState.ACTIVE]
        if sel == layout.Selection.MAGLEV and len(active) > limits.maglev_size:
            raise InvalidState(f"{sf}.backends", f"{len(active)} active backends for {key} exceed the Maglev "
                                                 f"table size {limits.maglev_size}")
        try:
            table = selection.build_table(int(sel), [_backend_name(mine[i]) for i in active],
                                          [mine[i].weight for i in active], limits.maglev_size)
        except ValueError as e:  # a limit of the tables: a wrong state, named, never a crash
            raise InvalidState(f"{sf}.backends", f"selection table for {key}: {e}") from None
        out.append(FrontendTarget(svc.name, key, sel, svc.affinity_timeout_seconds, mine,
                                  tuple(active[j] for j in table)))
    return out


def _backend_name(b: BackendTarget) -> str:
    # Maglev keys: stable across nodes and processes.
    return f"{layout.addr_text(b.addr)}:{b.port}"


def check_name(name: str, field: str) -> None:
    if not name:
        raise InvalidState(field, "must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidState(field, f"longer than {MAX_NAME} characters")


def totals(targets) -> tuple[int, int]:
    """(backend entries, service entries) the targets take in the maps."""
    targets = list(targets)
    return sum(len(t.backends) for t in targets), sum(1 + len(t.table) for t in targets)


def check_capacity_delta(current_totals: tuple[int, int], removed, added, limits: Limits) -> tuple[int, int]:
    """check_capacity for current - removed + added, from the current totals
    (so a delta costs what it touches); returns the new totals."""
    rb, rs = totals(removed)
    ab, as_ = totals(added)
    backends, slots = current_totals[0] - rb + ab, current_totals[1] - rs + as_
    if backends > limits.backends:
        raise InvalidState("services", f"needs {backends} backend entries; the backends map holds "
                           f"{limits.backends}")
    if slots > limits.services:
        raise InvalidState("services", f"needs {slots} service entries (frontends and selection slots); "
                           f"the services map holds {limits.services}")
    return backends, slots


def check_capacity(targets, limits: Limits) -> None:
    targets = list(targets)
    backends = sum(len(t.backends) for t in targets)
    if backends > limits.backends:
        raise InvalidState("services", f"needs {backends} backend entries; the backends map holds "
                           f"{limits.backends}")
    slots = sum(1 + len(t.table) for t in targets)
    if slots > limits.services:
        raise InvalidState("services", f"needs {slots} service entries (frontends and selection slots); "
                           f"the services map holds {limits.services}")
