"""`socklb-dataplane dump workloads|policy|fqdn`: what the policy maps (and
the DNS learner's) hold, their ids named through the agent's state.

The maps hold ids only (cgroup ids, workload ids, set ids, frontend ids);
the names are the agent's. The views are built where the operator runs the
command, from three readings: the agent's state and frontends (admin API:
GetState, DumpServices), the pinned policy maps (read_pinned; the pin dir
from GetInfo) and the cgroup directories (a workload's cgroup id is its
inode). The view functions are pure.
"""
from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from socklb.lb.addresses import join_host_port, prefix_text
from socklb.lb.protocols import PROTOCOLS, name_of
from socklb.v1 import node_pb2

from .kernel import BpfMap
from .layout import WorkloadFlag
from .loader import Capacity, map_specs
from .maps import policy_entries
from .policy_desired import cgroup_path
from .policy_plan import PolicyEntries, Rules

POLICY_MAPS = ("workloads", "policy_frontends", "policy_prefixes", "policy_cfg", "workload_denies", "redirect_exempt")


def read_pinned(pin_dir: Path) -> tuple[PolicyEntries, Callable[[int], int]]:
    """The policy maps pinned in `pin_dir`: their entries, and the denials
    of a workload id (summed over CPUs)."""
    specs = map_specs(Capacity())
    maps = {name: BpfMap.pinned(pin_dir / name, specs[name].key, specs[name].value, specs[name].percpu)
            for name in POLICY_MAPS}
    try:
        entries = policy_entries(maps)
        denies = maps["workload_denies"]
        counts = {}
        for e in entries.workloads.values():
            if e.id not in counts:
                counts[e.id] = sum(v.value for v in denies.lookup_percpu(ct.c_uint32(e.id)))
    finally:
        for m in maps.values():
            m.close()
    return entries, lambda i: counts.get(i, 0)


def cgroup_ids(state: node_pb2.NodeState, mount: Path) -> dict[str, int]:
    """Workload name -> the id of its cgroup (absent: not on this node)."""
    out = {}
    for w in state.workloads:
        try:
            out[w.name] = os.stat(mount / cgroup_path(w.cgroup, "cgroup")).st_ino
        except (OSError, ValueError):
            continue
    return out


def set_names(state: node_pb2.NodeState, entries: PolicyEntries, ids: Mapping[str, int]) -> dict[int, str]:
    """Set id -> the name of the policy set the workloads pointing at it have."""
    out = {}
    for w in state.workloads:
        e = entries.workloads.get(ids.get(w.name, -1))
        if e is not None and e.policy_set and w.policy_set:
            out.setdefault(e.policy_set, w.policy_set)
    return out


def workloads_view(state: node_pb2.NodeState, entries: PolicyEntries, ids: Mapping[str, int],
                   denied: Callable[[int], int]) -> dict:
    """Per workload of the state: its cgroup and whether it is programmed,
    its ids, set, bypass flag, denials and the cgroups written for it; then
    entries that belong to no workload of the state."""
    names = set_names(state, entries, ids)
    by_id: dict[int, list[int]] = {}
    for cg, e in entries.workloads.items():
        by_id.setdefault(e.id, []).append(cg)
    out, seen = [], set()
    for w in sorted(state.workloads, key=lambda w: w.name):
        cg = ids.get(w.name, 0)
        e = entries.workloads.get(cg)
        row = {"name": w.name, "cgroup": w.cgroup, "cgroupId": cg, "found": cg != 0, "programmed": e is not None,
               "policySet": w.policy_set, "bypassSocketLb": w.bypass_socket_lb}
        if e is not None:
            row |= {"id": e.id, "setId": e.policy_set, "programmedSet": names.get(e.policy_set, ""),
                    "bypassProgrammed": bool(e.flags & WorkloadFlag.BYPASS), "denied": denied(e.id),
                    "cgroups": len(by_id.get(e.id, ()))}
            seen.update(by_id.get(e.id, ()))
        out.append(row)
    stray = [{"cgroupId": cg, "id": e.id, "setId": e.policy_set, "flags": e.flags}
             for cg, e in sorted(entries.workloads.items()) if cg not in seen]
    cfg = entries.cfg
    return {"workloads": out, "unnamedEntries": stray,
            "config": {"cgroups": cfg.cgroups, "minLevel": cfg.min_level, "maxLevel": cfg.max_level,
                       "exemptOnly": cfg.exempt_only}}


def _rules_text(rules: Rules) -> list[str]:
    return [f"{r.action.name} {name_of(r.proto) if r.proto else 'any'} "
            f"{r.port if r.port == r.end_port else f'{r.port}-{r.end_port}'}" for r in rules]


def policy_view(state: node_pb2.NodeState, entries: PolicyEntries, ids: Mapping[str, int],
                frontends: node_pb2.DumpServicesResponse) -> dict:
    """Per programmed set: its name, the workloads using it, its frontend
    verdicts (frontend ids named) and its prefixes with their rules; then
    the redirect exemptions (workload, redirect frontend)."""
    names = set_names(state, entries, ids)
    users: dict[int, list[str]] = {}
    for w in state.workloads:
        e = entries.workloads.get(ids.get(w.name, -1))
        if e is not None and e.policy_set:
            users.setdefault(e.policy_set, []).append(w.name)
    fe = {f.id: f for f in frontends.frontends}

    def named(fid: int) -> dict:
        f = fe.get(fid)
        where = (f"{join_host_port(f.frontend.address, f.frontend.port)}/"
                 f"{name_of(PROTOCOLS[f.frontend.protocol])}" if f is not None else "")
        return {"frontendId": fid, "service": f.service if f is not None else "", "frontend": where}
    out = []
    for sid in sorted(entries.set_ids()):
        verdicts = []
        for fid, action in sorted(entries.frontends.get(sid, {}).items()):
            verdicts.append(named(fid) | {"action": action.name})
        prefixes = [{"prefix": prefix_text(*p), "rules": _rules_text(r)}
                    for p, r in sorted(entries.prefixes.get(sid, {}).items(), key=lambda i: (-i[0][1], i[0][0]))]
        out.append({"setId": sid, "name": names.get(sid, ""), "workloads": sorted(users.get(sid, [])),
                    "frontends": verdicts, "prefixes": prefixes})
    # Redirect exemptions: the local workloads that still reach the service
    # (the frontend named is the redirect table's, service "redirect:<name>").
    workload_of = {e.id: w.name for w in state.workloads
                   if (e := entries.workloads.get(ids.get(w.name, -1))) is not None}
    exempt = [{"workloadId": wid, "workload": workload_of.get(wid, "")} | named(fid)
              for wid, fid in sorted(entries.exempt)]
    return {"policySets": out, "redirectExemptions": exempt}




# --- dump fqdn -------------------------------------------------------------------------

def read_learned(pin_dir: Path) -> tuple[list, dict[str, int]]:
    """What the DNS learner pinned in `pin_dir` learned, and its counters
    (nothing when no learner was loaded there)."""
    from . import dns

    try:
        learner = dns.DnsLearner.pinned(pin_dir)
    except OSError:
        return [], {}
    try:
        return learner.learned(), learner.counters()
    finally:
        learner.close()


def fqdn_view(state: node_pb2.NodeState, entries: PolicyEntries, ids: Mapping[str, int], learned,
              counters: Mapping[str, int], now_ns: int) -> dict:
    """Each learned (workload, address, pattern): the workload's name (by the
    id its cgroup's entry has), the pattern a name that taught the address
    matched (by its id, among the patterns of the workload's set; a row per
    slot of the entry), the TTL, when it expires and whether it has; then
    the learner's counters."""
    from .dns import pattern_id

    by_wid: dict[int, str] = {}
    set_of: dict[int, str] = {}
    for w in state.workloads:
        e = entries.workloads.get(ids.get(w.name, 0))
        if e is not None:
            by_wid[e.id] = w.name
            set_of[e.id] = w.policy_set
    patterns: dict[tuple[str, int], str] = {}
    for ps in state.policy_sets:
        for f in ps.fqdns:
            try:
                patterns[(ps.name, pattern_id(f.pattern))] = f.pattern
            except ValueError:
                continue
    rows = []
    for x in learned:
        for slot in x.slots:  # one row per name pattern the address was learned through
            remaining = (slot.expiry_ns - now_ns) / 1e9
            rows.append({"workload": by_wid.get(x.workload, ""), "workloadId": x.workload, "address": x.addr,
                         "pattern": patterns.get((set_of.get(x.workload, ""), slot.pattern), ""),
                         "patternId": slot.pattern, "ttl": slot.ttl, "expiresIn": round(remaining, 1),
                         "expired": remaining <= 0})
    rows.sort(key=lambda r: (r["workload"], r["workloadId"], r["address"], r["patternId"]))
    return {"learned": rows, "counters": dict(counters)}


__all__ = ["cgroup_ids", "fqdn_view", "policy_view", "read_learned", "read_pinned", "workloads_view"]
