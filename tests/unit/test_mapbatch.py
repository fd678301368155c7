"""mapbatch: a plan's ops as batches of packed entries, the bytes the
per-entry writer (maps.py, through the layout's ctypes structures) writes,
in the plan's order."""
from __future__ import annotations

import ctypes as ct
import json

from socklb.dataplane import layout, mapbatch
from socklb.dataplane.desired import frontend_targets
from socklb.dataplane.maps import _svc_key
from socklb.dataplane.plan import (DeleteBackend, DeleteMaster, DeleteSlot, Programmed, PutBackend, PutMaster,
                                   PutSlot, make_plan)
from socklb.dataplane.statefile import parse_state


def state(services: list[dict], version: int = 1):
    return parse_state(json.dumps({"version": version, "services": services}))


def svc(i: int, n: int, port: int = 8080) -> dict:
    return {"name": f"s{i}", "frontends": [{"address": f"10.96.0.{i}" if i % 2 else f"fd00::{i:x}", "port": 80 + i,
                                            "protocol": "PROTOCOL_UDP" if i % 3 == 0 else "PROTOCOL_TCP"}],
            "selection": "SELECTION_MAGLEV" if i == 4 else "SELECTION_RANDOM",
            "affinity_timeout_seconds": 7 * i,
            "backends": [{"address": f"10.0.{i}.{b + 1}", "port": port + b, "weight": 1 + b,
                          "state": "BACKEND_STATE_DRAINING" if b == 1 else "BACKEND_STATE_ACTIVE"}
                         for b in range(n)]}


def plans():
    first = make_plan(Programmed(), frontend_targets(state([svc(i, 1 + i % 4) for i in range(1, 9)])))
    second = make_plan(first.result, frontend_targets(state([svc(i, 4 - i % 4, 9000) for i in range(3, 12)], 2)))
    return first, second


def ctypes_entry(op) -> tuple[bytes, bytes | None]:
    """What the per-entry writer writes for one op (maps.BpfMapWriter)."""
    kind = type(op)
    if kind is PutBackend:
        b = op.backend
        return bytes(ct.c_uint32(b.id)), bytes(layout.Backend(
            addr=layout.pack_addr(b.addr), port=layout.port_be(b.port), proto=b.proto, state=int(b.state),
            frontend_id=b.frontend_id))
    if kind is PutSlot:
        return bytes(_svc_key(op.key, op.slot)), bytes(layout.SvcVal(id=op.backend_id))
    if kind is PutMaster:
        fe = op.frontend
        return bytes(_svc_key(fe.key, 0)), bytes(layout.SvcVal(
            id=fe.id, count=len(fe.slots), affinity_timeout=fe.affinity_timeout, selection=int(fe.selection),
            flags=fe.flags))
    if kind is DeleteSlot:
        return bytes(_svc_key(op.key, op.slot)), None
    if kind is DeleteMaster:
        return bytes(_svc_key(op.key, 0)), None
    return bytes(ct.c_uint32(op.id)), None


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def test_batches_are_the_ops_entry_for_entry_in_order():
    for plan in plans():
        kinds = {type(op) for op in plan.ops}
        want = [(mapbatch.TARGET[type(op)], *ctypes_entry(op)) for op in plan.ops]
        got = []
        for b in mapbatch.batches(plan.ops):
            ksize = 4 if b.map == "backends" else ct.sizeof(layout.SvcKey)
            vsize = ct.sizeof(layout.Backend if b.map == "backends" else layout.SvcVal)
            keys = split(b.keys, ksize)
            values = split(b.values, vsize) if not b.delete else [None] * b.count
            assert len(keys) == len(values) == b.count
            got += [((b.map, b.delete), k, v) for k, v in zip(keys, values)]
        assert got == want
        assert len(kinds) >= 3


def test_the_second_plan_has_every_kind_of_op():
    _, second = plans()
    assert {type(op) for op in second.ops} == set(mapbatch.TARGET)


def test_a_batch_is_a_run_of_one_map_and_kind():
    _, plan = plans()
    out = list(mapbatch.batches(plan.ops))
    targets = [(b.map, b.delete) for b in out]
    assert all(a != b for a, b in zip(targets, targets[1:]))  # runs are merged
    assert sum(b.count for b in out) == len(plan.ops)


def test_limit_splits_runs_and_keeps_order():
    first, _ = plans()
    whole = list(mapbatch.batches(first.ops))
    small = list(mapbatch.batches(first.ops, limit=3))
    assert all(b.count <= 3 for b in small)
    assert len(small) > len(whole)
    for name in ("services", "backends"):
        assert b"".join(b.keys for b in small if b.map == name) == b"".join(b.keys for b in whole if b.map == name)
        assert (b"".join(b.values for b in small if b.map == name)
                == b"".join(b.values for b in whole if b.map == name))


def test_packers_are_the_ctypes_layouts():
    for ctype in (layout.SvcKey, layout.SvcVal, layout.Backend, layout.PolicyFeKey, ct.c_uint32, ct.c_uint64):
        assert mapbatch.packer(ctype).size == ct.sizeof(ctype)
    v = layout.SvcVal(id=0x01020304, count=7, affinity_timeout=9, selection=2, flags=5)
    assert mapbatch.SVC_VAL.pack(0x01020304, 7, 9, 2, 5, 0) == bytes(v)
