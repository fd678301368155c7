"""The FQDN part of a node's maps, read and written: the DNS learner's
`dns_workloads`, `dns_servers`, `dns_patterns` (bpf/dns.h) and the hook's
per-pattern port rules, executing fqdn_entries.fqdn_plan's ordered writes.

    maps = {"dns_workloads": ..., "dns_servers": ..., "dns_patterns": ..., "policy_fqdns": ...}
    current = read_fqdn_entries(maps)
    write_fqdn(maps, fqdn_plan(current, desired))

`policy_fqdns` may be absent (a datapath built before the hook reads it):
the learner is programmed all the same and its rules are left out.
"""
from __future__ import annotations

import ctypes as ct
from collections.abc import Mapping

from . import layout
from .fqdn_entries import FqdnEntries, Op
from .kernel import BpfMap
from .maps import _rules, _rules_back


class FqdnRulesKey(ct.Structure):
    """policy_fqdns' key (bpf/socklb.h struct socklb_policy_fqdn_key)."""
    _fields_ = [("set", ct.c_uint32), ("pattern", ct.c_uint32)]


def _server_key(k: tuple[int, bytes, int]) -> layout.DnsServer:
    set_id, addr, port = k
    return layout.DnsServer(set_id, layout.port_be(port), 0, layout.pack_addr(addr))


_KEYS = {
    "workloads": ("dns_workloads", lambda k: ct.c_uint64(k), lambda v: layout.DnsWorkload(*v)),
    "servers": ("dns_servers", _server_key, lambda v: ct.c_uint8(1)),
    "patterns": ("dns_patterns", lambda k: layout.DnsPatternKey(k[0], 0, k[1]), lambda v: layout.DnsPatternVal(*v)),
    "rules": ("policy_fqdns", lambda k: FqdnRulesKey(*k), _rules),
}


def read_fqdn_entries(maps: Mapping[str, BpfMap]) -> FqdnEntries:
    out = FqdnEntries()
    for k, v in maps["dns_workloads"].items():
        out.workloads[k.value] = (v.id, v.set)
    for k in maps["dns_servers"].keys():
        out.servers.add((k.set, bytes(k.addr), layout.port_host(k.port)))
    for k, v in maps["dns_patterns"].items():
        out.patterns[(k.set, k.hash)] = (v.kinds, v.exact, v.one_label, v.any_depth)
    if "policy_fqdns" in maps:
        for k, v in maps["policy_fqdns"].items():
            out.rules[(k.set, k.pattern)] = _rules_back(v)
    return out


def write_fqdn(maps: Mapping[str, BpfMap], ops: list[Op]) -> int:
    """Execute the writes in order; returns how many were made."""
    done = 0
    for op in ops:
        name, key_of, value_of = _KEYS[op.table]
        m = maps.get(name)
        if m is None:
            continue
        if op.kind == "put":
            m.update(key_of(op.key), value_of(op.value))
        else:
            m.delete(key_of(op.key))
        done += 1
    return done


__all__ = ["FqdnRulesKey", "read_fqdn_entries", "write_fqdn"]
