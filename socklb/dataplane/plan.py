"""What is programmed, what should be, and the ordered map writes between
them. Pure: the writer in maps.py executes a plan, tests check it without a
kernel.

Make-before-break: a slot is written only after the backend it names, a
master entry only after its slots, and nothing is deleted before the entries
pointing at it are gone. A connect() racing the update therefore always
finds either the old or the new selection, never a dangling id.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from . import layout
from .desired import FrontendKey, FrontendTarget


@dataclass(frozen=True)
class ProgrammedBackend:
    id: int
    frontend_id: int
    addr: bytes
    port: int
    proto: int
    state: layout.BackendState


@dataclass(frozen=True)
class ProgrammedFrontend:
    id: int
    key: FrontendKey
    selection: layout.Selection
    affinity_timeout: int
    slots: tuple[int, ...]  # backend ids
    service: str = ""


@dataclass
class Programmed:
    """The content of the services and backends maps, as data."""

    frontends: dict[FrontendKey, ProgrammedFrontend] = field(default_factory=dict)
    backends: dict[int, ProgrammedBackend] = field(default_factory=dict)
    next_frontend_id: int = 1
    next_backend_id: int = 1


# --- operations, in execution order ---------------------------------------

@dataclass(frozen=True)
class PutBackend:
    backend: ProgrammedBackend


@dataclass(frozen=True)
class PutSlot:
    key: FrontendKey
    slot: int  # 1-based
    backend_id: int


@dataclass(frozen=True)
class PutMaster:
    frontend: ProgrammedFrontend


@dataclass(frozen=True)
class DeleteSlot:
    key: FrontendKey
    slot: int


@dataclass(frozen=True)
class DeleteMaster:
    key: FrontendKey


@dataclass(frozen=True)
class DeleteBackend:
    id: int


Op = PutBackend | PutSlot | PutMaster | DeleteSlot | DeleteMaster | DeleteBackend


@dataclass
class Plan:
    ops: list[Op]
    result: Programmed

    def count(self, kind: type) -> int:
        return sum(isinstance(o, kind) for o in self.ops)


def make_plan(current: Programmed, targets: dict[FrontendKey, FrontendTarget]) -> Plan:
    next_fe, next_be = current.next_frontend_id, current.next_backend_id
    # Existing backend ids by identity, so unchanged backends keep their ids
    # (and with them their flows' and affinity entries' meaning).
    by_ident = {(b.frontend_id, b.addr, b.port): b for b in current.backends.values()}

    put_backends: list[Op] = []
    put_slots: list[Op] = []
    put_masters: list[Op] = []
    del_slots: list[Op] = []
    result = Programmed(next_frontend_id=next_fe, next_backend_id=next_be)

    for key in sorted(targets):
        t = targets[key]
        old = current.frontends.get(key)
        if old is not None:
            fe_id = old.id
        else:
            fe_id, next_fe = next_fe, next_fe + 1
        ids = []
        for b in t.backends:
            prev = by_ident.get((fe_id, b.addr, b.port))
            if prev is not None:
                be_id = prev.id
            else:
                be_id, next_be = next_be, next_be + 1
            pb = ProgrammedBackend(be_id, fe_id, b.addr, b.port, key.proto, b.state)
            if prev != pb:
                put_backends.append(PutBackend(pb))
            result.backends[be_id] = pb
            ids.append(be_id)
        slots = tuple(ids[i] for i in t.table)
        old_slots = old.slots if old else ()
        for i, be_id in enumerate(slots):
            if i >= len(old_slots) or old_slots[i] != be_id:
                put_slots.append(PutSlot(key, i + 1, be_id))
        fe = ProgrammedFrontend(fe_id, key, t.selection, t.affinity_timeout, slots, t.service)
        if old is None or replace(old, service="") != replace(fe, service=""):
            put_masters.append(PutMaster(fe))
        for i in range(len(slots), len(old_slots)):
            del_slots.append(DeleteSlot(key, i + 1))
        result.frontends[key] = fe

    removed: list[Op] = []
    for key, old in sorted(current.frontends.items()):
        if key in targets:
            continue
        removed.append(DeleteMaster(key))
        removed.extend(DeleteSlot(key, i + 1) for i in range(len(old.slots)))
    del_backends = [DeleteBackend(i) for i in sorted(current.backends) if i not in result.backends]

    result.next_frontend_id, result.next_backend_id = next_fe, next_be
    ops = put_backends + put_slots + put_masters + del_slots + removed + del_backends
    return Plan(ops, result)
