"""The map writer of a loaded datapath: reads the programmed state out of
the pinned BPF maps and writes plans to them (writer.MapWriter). The maps
are the truth: after a restart the agent rebuilds everything it needs from
them."""
from __future__ import annotations

import ctypes as ct

from socklb.lb.frontends import FrontendKey

from . import layout
from .desired import Limits
from .loader import Datapath
from .plan import Programmed, ProgrammedBackend
from .writer import MapWriter, Master, Placement, read_back


def _svc_key(key: FrontendKey, slot: int) -> layout.SvcKey:
    return layout.SvcKey(addr=layout.pack_addr(key.addr), port=layout.port_be(key.port),
                         proto=key.proto, slot=slot)


def _frontend_key(k: layout.SvcKey) -> FrontendKey:
    return FrontendKey(bytes(k.addr), layout.port_host(k.port), k.proto)


class BpfMapWriter(MapWriter):
    """The services, backends, meta and counters maps of a loaded Datapath."""

    def __init__(self, datapath: Datapath):
        self.datapath = datapath
        maps = datapath.maps
        self.services = maps["services"]
        self.backends = maps["backends"]
        self.counters = maps["counters"]
        self.meta = maps["meta"]
        self.limits = Limits(services=datapath.capacity.services, backends=datapath.capacity.backends)

    def placement(self) -> Placement:
        dp = self.datapath
        return Placement(str(dp.cgroup), str(dp.pin_dir), dp.adopted)

    def read_programmed(self) -> Programmed:
        masters: dict[FrontendKey, Master] = {}
        slots: dict[FrontendKey, dict[int, int]] = {}
        for k, v in self.services.items():
            fk = _frontend_key(k)
            if k.slot == 0:
                masters[fk] = Master(v.id, v.count, v.affinity_timeout, layout.Selection(v.selection))
            else:
                slots.setdefault(fk, {})[k.slot] = v.id
        backends = [ProgrammedBackend(k.value, b.frontend_id, bytes(b.addr), layout.port_host(b.port), b.proto,
                                      layout.BackendState(b.state)) for k, b in self.backends.items()]
        return read_back(masters, slots, backends, self.get_meta(layout.Meta.NEXT_FRONTEND_ID),
                         self.get_meta(layout.Meta.NEXT_BACKEND_ID))

    # --- entries ------------------------------------------------------------
    def get_meta(self, idx: layout.Meta) -> int:
        v = self.meta.lookup(ct.c_uint32(idx))
        return v.value if v is not None else 0

    def set_meta(self, idx: layout.Meta, value: int) -> None:
        self.meta.update(ct.c_uint32(idx), ct.c_uint64(value))

    def put_backend(self, b: ProgrammedBackend) -> None:
        self.backends.update(ct.c_uint32(b.id), layout.Backend(
            addr=layout.pack_addr(b.addr), port=layout.port_be(b.port), proto=b.proto, state=int(b.state),
            frontend_id=b.frontend_id))

    def put_slot(self, key: FrontendKey, slot: int, backend_id: int) -> None:
        self.services.update(_svc_key(key, slot), layout.SvcVal(id=backend_id))

    def put_master(self, key: FrontendKey, master: Master) -> None:
        self.services.update(_svc_key(key, 0), layout.SvcVal(
            id=master.id, count=master.count, affinity_timeout=master.affinity_timeout,
            selection=int(master.selection)))

    def delete_slot(self, key: FrontendKey, slot: int) -> None:
        self.services.delete(_svc_key(key, slot))

    def delete_backend(self, backend_id: int) -> None:
        self.backends.delete(ct.c_uint32(backend_id))

    # --- counters (written by the programs) ----------------------------------
    def counter_values(self) -> dict[layout.Counter, int]:
        """The datapath's counters, summed over CPUs."""
        return {c: sum(v.value for v in self.counters.lookup_percpu(ct.c_uint32(c))) for c in layout.Counter}
