"""A plan's ops as batches of packed map entries: the services and backends
maps written with one bpf() call per run of ops instead of one per entry.

    for b in batches(ops):            # in the ops' order
        b.map, b.delete, b.count      # "services" | "backends", a delete batch?, entries
        b.keys, b.values              # packed back to back (values: b"" for deletes)

Pure: no I/O (maps.BpfMapWriter sends the batches). A batch is a run of
consecutive ops on one map of one kind (put or delete), in plan order; the
kernel writes a batch's entries one after the other, so the order of the
writes is the plan's, entry for entry, as if written one at a time
(make-before-break, plan.py): backends before the slots naming them, slots
before their masters, deletes after.

The byte layouts are not written out a second time: each packer is derived
from the layout's ctypes structure (the one Python mirror of bpf/socklb.h),
field by field, and tests/unit/test_mapbatch.py checks the packed bytes
against the ctypes encoding.
"""
from __future__ import annotations

import ctypes as ct
import socket
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import groupby

from . import layout
from .plan import DeleteBackend, DeleteMaster, DeleteSlot, PutBackend, PutMaster, PutSlot

# How the services and backends maps are written (capabilities["map_writes"],
# maps.map_writes_way): "batch" as here, "per-entry" one bpf() call per entry
# (where the kernel refuses batches, or forced), "auto" batch where it can.
MAP_WRITES = ("auto", "batch", "per-entry")
MAP_WRITES_ENV = "SOCKLB_MAP_WRITES"

_SCALARS = {1: "B", 2: "H", 4: "I", 8: "Q"}


def packer(ctype, first: str | None = None, stop: str | None = None) -> struct.Struct:
    """A struct.Struct that packs the fields of a ctypes structure (or a
    ctypes integer) in order into exactly its bytes: integers in native
    order, arrays as raw bytes, padding as the compiler lays it out. With
    first/stop: the fields from `first` up to `stop` only (a part of the
    structure's bytes, from first's offset to stop's)."""
    if not hasattr(ctype, "_fields_"):
        return struct.Struct("=" + _SCALARS[ct.sizeof(ctype)])
    names = [f[0] for f in ctype._fields_]
    lo = names.index(first) if first else 0
    hi = names.index(stop) if stop else len(names)
    fmt = "="
    pos = getattr(ctype, names[lo]).offset
    for name, ftype, *_ in ctype._fields_[lo:hi]:
        offset = getattr(ctype, name).offset
        if offset > pos:
            fmt += f"{offset - pos}x"
        size = ct.sizeof(ftype)
        fmt += f"{size}s" if issubclass(ftype, ct.Array) else _SCALARS[size]
        pos = offset + size
    end = getattr(ctype, stop).offset if stop else ct.sizeof(ctype)
    if end > pos:
        fmt += f"{end - pos}x"
    s = struct.Struct(fmt)
    assert s.size == end - getattr(ctype, names[lo]).offset, (ctype, fmt)
    return s


SVC_KEY = packer(layout.SvcKey)        # addr, port (network order), proto, table, slot, pad2
# The frontend's part of a services key and the slot's: the frontend's is
# packed once for all its slots.
SVC_KEY_FRONTEND = packer(layout.SvcKey, stop="slot")
SVC_KEY_SLOT = packer(layout.SvcKey, first="slot")
SVC_VAL = packer(layout.SvcVal)        # id, count, affinity_timeout, selection, flags, pad
BACKEND_KEY = packer(ct.c_uint32)
BACKEND_VAL = packer(layout.Backend)   # addr, port (network order), proto, state, frontend_id


@dataclass(frozen=True)
class Batch:
    map: str  # "services" | "backends"
    delete: bool
    count: int
    keys: bytes
    values: bytes = b""


# Op type -> (map, delete?): the batch a run of them goes in.
TARGET = {
    PutBackend: ("backends", False),
    PutSlot: ("services", False),
    PutMaster: ("services", False),
    DeleteSlot: ("services", True),
    DeleteMaster: ("services", True),
    DeleteBackend: ("backends", True),
}


def batches(ops: Iterable, limit: int = 1 << 16) -> Iterator[Batch]:
    """The ops as batches, in order; at most `limit` entries per batch
    (bounds one call's buffers and the time the kernel spends in it)."""
    target, keys, values, count = None, [], [], 0
    for kind, group in groupby(ops, type):  # runs of one op type (a plan lists each kind together)
        t = TARGET.get(kind)
        if t is None:
            raise TypeError(f"unknown op {next(group)!r}")
        group = list(group)
        for i in range(0, len(group), limit):
            part = group[i:i + limit]
            if t != target or count + len(part) > limit:
                if count:
                    yield Batch(*target, count, b"".join(keys), b"".join(values))
                target, keys, values, count = t, [], [], 0
            _ENCODE[kind](part, keys, values)
            count += len(part)
    if count:
        yield Batch(*target, count, b"".join(keys), b"".join(values))


# Each op type's encoder: appends the packed keys (and values) of a run of
# that type. Comprehensions, one struct.pack per field group: a full state
# is 200k+ entries.

def _put_backends(run, keys, values) -> None:
    kpack, vpack, htons = BACKEND_KEY.pack, BACKEND_VAL.pack, socket.htons
    bs = [op.backend for op in run]
    keys += [kpack(b.id) for b in bs]
    values += [vpack(b.addr, htons(b.port), b.proto, b.state, b.frontend_id) for b in bs]


def _delete_backends(run, keys, values) -> None:
    kpack = BACKEND_KEY.pack
    keys += [kpack(op.id) for op in run]


def _slot_keys(run) -> list[bytes]:
    # A frontend's slots follow each other in a plan (one FrontendKey object):
    # its part of the key is packed once. No tuple per op: a full state's
    # 100k+ tracked objects would set off the garbage collector's full passes.
    head, tail, htons = SVC_KEY_FRONTEND.pack, SVC_KEY_SLOT.pack, socket.htons
    out, last, part = [], None, b""
    for op in run:
        k = op.key
        if k is not last:
            last, part = k, head(k.addr, htons(k.port), k.proto, k.table)
        out.append(part + tail(op.slot, 0))
    return out


def _put_slots(run, keys, values) -> None:
    vpack = SVC_VAL.pack
    keys += _slot_keys(run)
    values += [vpack(op.backend_id, 0, 0, 0, 0, 0) for op in run]


def _put_masters(run, keys, values) -> None:
    kpack, vpack, htons = SVC_KEY.pack, SVC_VAL.pack, socket.htons
    fes = [op.frontend for op in run]
    keys += [kpack(k.addr, htons(k.port), k.proto, k.table, 0, 0) for k in [fe.key for fe in fes]]
    values += [vpack(fe.id, len(fe.slots), fe.affinity_timeout, fe.selection, fe.flags, 0) for fe in fes]


def _delete_slots(run, keys, values) -> None:
    keys += _slot_keys(run)


def _delete_masters(run, keys, values) -> None:
    kpack, htons = SVC_KEY.pack, socket.htons
    keys += [kpack(k.addr, htons(k.port), k.proto, k.table, 0, 0) for k in [op.key for op in run]]


_ENCODE = {PutBackend: _put_backends, DeleteBackend: _delete_backends, PutSlot: _put_slots,
           PutMaster: _put_masters, DeleteSlot: _delete_slots, DeleteMaster: _delete_masters}


__all__ = ["BACKEND_KEY", "BACKEND_VAL", "Batch", "MAP_WRITES", "MAP_WRITES_ENV", "SVC_KEY", "SVC_VAL", "batches", "packer"]
