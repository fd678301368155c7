"""Python mirror of bpf/socklb.h: the map keys and values, byte for byte.

tests/unit/test_layout.py compiles the header and compares every size and
offset with these structures, so the two cannot drift apart silently.
"""
from __future__ import annotations

import ctypes as ct
import enum
import socket
import struct

from socklb.lb.addresses import addr16, addr_text  # noqa: F401 (the model's encoding, used by the mirror)
from socklb.lb.frontends import BackendState, Selection  # noqa: F401 (the values of socklb.h's enums)

U32x4 = ct.c_uint32 * 4

FLOW_RNAT_RING = 4
LAYOUT_VERSION = 1

# Default capacities (SOCKLB_*_MAX in the header); the loader may override them.
SERVICES_MAX = 262144
BACKENDS_MAX = 262144
AFFINITY_MAX = 65536
REV_NAT_MAX = 65536


class Counter(enum.IntEnum):
    TRANSLATED = 0
    AFFINITY_HIT = 1
    AFFINITY_MISS = 2
    NO_BACKEND = 3
    POLICY_DENY = 4
    RNAT_HIT = 5
    RNAT_MISS = 6
    RNAT_CLEANED = 7


COUNTER_MAX = len(Counter)


class Meta(enum.IntEnum):
    VERSION = 0
    NEXT_FRONTEND_ID = 1
    NEXT_BACKEND_ID = 2
    LAYOUT = 3


META_MAX = len(Meta)


class SvcKey(ct.Structure):
    _fields_ = [
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("slot", ct.c_uint16),
        ("pad2", ct.c_uint16),
    ]


class SvcVal(ct.Structure):
    _fields_ = [
        ("id", ct.c_uint32),
        ("count", ct.c_uint32),
        ("affinity_timeout", ct.c_uint32),
        ("selection", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint16),
    ]


class Backend(ct.Structure):
    _fields_ = [
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
        ("frontend_id", ct.c_uint32),
    ]


class AffinityKey(ct.Structure):
    _fields_ = [
        ("netns_cookie", ct.c_uint64),
        ("frontend_id", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class AffinityVal(ct.Structure):
    _fields_ = [
        ("last_used_ns", ct.c_uint64),
        ("backend_id", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class RnatKey(ct.Structure):
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("pad2", ct.c_uint32),
    ]


class RnatVal(ct.Structure):
    _fields_ = [
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("frontend_id", ct.c_uint32),
    ]


class Flow(ct.Structure):
    _fields_ = [
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("vip", U32x4),
        ("backend_addr", U32x4),
        ("vip_port", ct.c_uint16),
        ("backend_port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("rnat_next", ct.c_uint8),
        ("rnat_used", ct.c_uint8),
        ("pad", ct.c_uint8),
        ("rnat", RnatKey * FLOW_RNAT_RING),
    ]


class FlowRecord(ct.Structure):
    """struct socklb_flow_rec of bpf/flows.h: what the flow reader emits."""
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("vip", U32x4),
        ("backend_addr", U32x4),
        ("vip_port", ct.c_uint16),
        ("backend_port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
        ("family", ct.c_uint16),
    ]


class FlowCountKey(ct.Structure):
    """struct socklb_flow_count_key of bpf/flows.h: key of the flow_counts map."""
    _fields_ = [
        ("frontend_id", ct.c_uint32),
        ("backend_addr", U32x4),
        ("backend_port", ct.c_uint16),
        ("pad", ct.c_uint16),
    ]


FLOW_COUNTS_MAX = 65536


# Every mirrored struct with its C name, for the layout test.
STRUCTS: dict[str, type[ct.Structure]] = {
    "socklb_svc_key": SvcKey,
    "socklb_svc_val": SvcVal,
    "socklb_backend": Backend,
    "socklb_affinity_key": AffinityKey,
    "socklb_affinity_val": AffinityVal,
    "socklb_rnat_key": RnatKey,
    "socklb_rnat_val": RnatVal,
    "socklb_flow": Flow,
    "socklb_flow_rec": FlowRecord,
    "socklb_flow_count_key": FlowCountKey,
}

# The headers those structs come from (bpf/), for the layout test.
HEADERS = ("socklb.h", "flows.h")


# --- address and port encoding -------------------------------------------

def pack_addr(addr: str | bytes) -> U32x4:
    """16 bytes in network order; IPv4 v4-mapped, as the header says."""
    raw = addr if isinstance(addr, bytes) else addr16(addr)
    return U32x4(*struct.unpack("=4I", raw))


def unpack_addr(words: U32x4) -> str:
    return addr_text(struct.pack("=4I", *words))


def port_be(port: int) -> int:
    return socket.htons(port)


def port_host(port: int) -> int:
    return socket.ntohs(port)
