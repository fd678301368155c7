"""A node's whole desired state (socklb.v1.NodeState) -> validated targets,
checked against this node's map capacities.

Pure: no I/O. The per-service model (names, addresses, limits, targets) is
socklb.lb, shared with the control plane; this module adds what only a node
knows: the capacity of its BPF maps, and what to apply of a state that is
invalid as a whole. A state is either entirely valid or rejected.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from socklb.lb.errors import InvalidState
from socklb.lb.frontends import FrontendKey, FrontendTarget, frontend_key, service_targets
from socklb.lb.limits import MAGLEV_TABLE_SIZE
from socklb.lb.names import check_name
from socklb.v1 import node_pb2

from . import layout
from .plan import collector_paused


@dataclass(frozen=True)
class Limits:
    services: int = layout.SERVICES_MAX  # master + slot entries
    backends: int = layout.BACKENDS_MAX
    maglev_size: int = MAGLEV_TABLE_SIZE


def frontend_targets(state: node_pb2.NodeState, limits: Limits = Limits(),
                     reuse: Callable[[node_pb2.ServiceState], list[FrontendTarget] | None] | None = None,
                     ) -> dict[FrontendKey, FrontendTarget]:
    """Validate a whole NodeState and expand it into one target per frontend.

    reuse: the targets of a service exactly as last applied (None: not
    that): a service's own checks and targets depend on its message alone,
    so an unchanged one keeps its targets (the same objects, which make_plan
    then need not look at); the checks between services (names, frontends,
    capacity) still run on every one."""
    with collector_paused():  # 100k+ backend targets: see plan.collector_paused
        return _frontend_targets(state, limits, reuse)


def _frontend_targets(state: node_pb2.NodeState, limits: Limits, reuse) -> dict[FrontendKey, FrontendTarget]:
    targets: dict[FrontendKey, FrontendTarget] = {}
    owner: dict[FrontendKey, int] = {}
    names: dict[str, int] = {}
    maglev_size = limits.maglev_size
    for si, svc in enumerate(state.services):
        name = svc.name
        if name in names:
            check_name(name, f"services[{si}].name")
            raise InvalidState(f"services[{si}].name", f"{name!r} is already services[{names[name]}]")
        names[name] = si
        mine = reuse(svc) if reuse is not None else None
        if mine is None:
            check_name(name, f"services[{si}].name")
            mine = service_targets(svc, f"services[{si}]", maglev_size)
        for t in mine:
            key = t.key
            if key in targets:
                other = owner[key]
                sf = f"services[{si}]"
                raise InvalidState(_frontend_field(svc, sf, key), f"frontend {key} is already used by "
                                   f"services[{other}] ({state.services[other].name!r})", other=other)
            targets[key] = t
            owner[key] = si
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
        if frontend_key(fe, "") == key:
            return f"{sf}.frontends[{fi}]"
    return f"{sf}.frontends"


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
    check_capacity_delta((0, 0), (), targets, limits)
