"""Reads the programmed state out of the pinned maps and executes plans
against them. The maps are the truth: after a restart the agent rebuilds
everything it needs from them."""
from __future__ import annotations

import ctypes as ct

from socklb.lb.frontends import FrontendKey

from . import layout
from .kernel import BpfMap
from .plan import (DeleteBackend, DeleteMaster, DeleteSlot, Plan, Programmed, ProgrammedBackend,
                   ProgrammedFrontend, PutBackend, PutMaster, PutSlot)


def _svc_key(key: FrontendKey, slot: int) -> layout.SvcKey:
    return layout.SvcKey(addr=layout.pack_addr(key.addr), port=layout.port_be(key.port),
                         proto=key.proto, slot=slot)


def _frontend_key(k: layout.SvcKey) -> FrontendKey:
    return FrontendKey(bytes(k.addr), layout.port_host(k.port), k.proto)


class MapStore:
    def __init__(self, maps: dict[str, BpfMap]):
        self.services = maps["services"]
        self.backends = maps["backends"]
        self.affinity = maps["affinity"]
        self.rev_nat = maps["rev_nat"]
        self.counters = maps["counters"]
        self.meta = maps["meta"]

    # --- meta -------------------------------------------------------------
    def meta_get(self, idx: layout.Meta) -> int:
        v = self.meta.lookup(ct.c_uint32(idx))
        return v.value if v is not None else 0

    def meta_set(self, idx: layout.Meta, value: int) -> None:
        self.meta.update(ct.c_uint32(idx), ct.c_uint64(value))

    # --- read back --------------------------------------------------------
    def read_programmed(self, names: dict[FrontendKey, str] | None = None) -> Programmed:
        masters: dict[FrontendKey, layout.SvcVal] = {}
        slots: dict[FrontendKey, dict[int, int]] = {}
        for k, v in self.services.items():
            fk = _frontend_key(k)
            if k.slot == 0:
                masters[fk] = v
            else:
                slots.setdefault(fk, {})[k.slot] = v.id
        prog = Programmed()
        for fk, m in masters.items():
            s = slots.get(fk, {})
            table = tuple(s.get(i, 0) for i in range(1, m.count + 1))
            prog.frontends[fk] = ProgrammedFrontend(
                m.id, fk, layout.Selection(m.selection), m.affinity_timeout, table,
                (names or {}).get(fk, ""))
        for k, b in self.backends.items():
            prog.backends[k.value] = ProgrammedBackend(
                k.value, b.frontend_id, bytes(b.addr), layout.port_host(b.port), b.proto,
                layout.BackendState(b.state))
        prog.reindex()
        ids_fe = [f.id for f in prog.frontends.values()]
        ids_be = list(prog.backends)
        prog.next_frontend_id = max([self.meta_get(layout.Meta.NEXT_FRONTEND_ID), 1, *(i + 1 for i in ids_fe)])
        prog.next_backend_id = max([self.meta_get(layout.Meta.NEXT_BACKEND_ID), 1, *(i + 1 for i in ids_be)])
        return prog

    # --- write ------------------------------------------------------------
    def execute(self, plan: Plan) -> None:
        # Ids first, so that a crash mid-plan never lets an id be handed out twice.
        self.meta_set(layout.Meta.NEXT_FRONTEND_ID, plan.result.next_frontend_id)
        self.meta_set(layout.Meta.NEXT_BACKEND_ID, plan.result.next_backend_id)
        for op in plan.ops:
            match op:
                case PutBackend(b):
                    self.backends.update(ct.c_uint32(b.id), layout.Backend(
                        addr=layout.pack_addr(b.addr), port=layout.port_be(b.port), proto=b.proto,
                        state=int(b.state), frontend_id=b.frontend_id))
                case PutSlot(key, slot, backend_id):
                    self.services.update(_svc_key(key, slot), layout.SvcVal(id=backend_id))
                case PutMaster(fe):
                    self.services.update(_svc_key(fe.key, 0), layout.SvcVal(
                        id=fe.id, count=len(fe.slots), affinity_timeout=fe.affinity_timeout,
                        selection=int(fe.selection)))
                case DeleteSlot(key, slot):
                    self.services.delete(_svc_key(key, slot))
                case DeleteMaster(key):
                    self.services.delete(_svc_key(key, 0))
                case DeleteBackend(i):
                    self.backends.delete(ct.c_uint32(i))
                case _:
                    raise TypeError(f"unknown op {op!r}")

    # --- counters -----------------------------------------------------------
    def counters_sum(self) -> dict[layout.Counter, int]:
        return {c: sum(v.value for v in self.counters.lookup_percpu(ct.c_uint32(c))) for c in layout.Counter}
