"""What the DNS learner's maps (and the hook's FQDN rules) should hold for a
node's policy, and the ordered writes from what they hold (pure: the map
writer in fqdn_maps.py executes them; tests check them without a kernel).

    desired = fqdn_entries(policy, ids, policy_entries)
    ops = fqdn_plan(current, desired)

The entries (bpf/dns.h, bpf/socklb.h):
    workloads  cgroup id -> (workload id, set id)       (dns_workloads)
    servers    {(set id, 16-byte address, port)}        (dns_servers; set 0 the union)
    patterns   (set id, suffix hash) -> DnsPatternVal   (dns_patterns)
    rules      (set id, pattern id) -> port rules       (policy_fqdns: what the hook allows per learned pattern)

Ids: the **workload id** is the policy's (the `workloads` map's id, which
`dns_learned` is keyed by, so the connect hook finds what this workload
learned with the id it already has); the **set id** is the policy set's kernel
id; a **pattern id** is a hash of the pattern's canonical text (32 bits, not
0), so it is the same on every node and across restarts, and a learned entry
never comes to mean another pattern when a set is edited (a collision inside
one set is refused with the state).

Only workloads whose set has FQDN rules are in `dns_workloads` (the others
learn nothing); a cgroup is listed as the policy map lists it (the
workload's cgroup, and with exact matching those below it).

Order (make-before-break), so that a workload never learns from a server or
under a pattern its new policy lacks nor misses one both allow:
1. new and changed rules, patterns and servers (the union set 0 with them);
2. workload entries (new and changed), then the removed ones;
3. rules, patterns and servers no longer wanted (the union last).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .dns import pattern_entries, pattern_id
from .layout import DNS_SET_ANY
from .policy_desired import Ids, NodePolicy
from .policy_plan import PolicyEntries, Rules


PatternVal = tuple[int, int, int, int]  # kinds, exact id, one-label id, any-depth id


@dataclass
class FqdnEntries:
    workloads: dict[int, tuple[int, int]] = field(default_factory=dict)
    servers: set[tuple[int, bytes, int]] = field(default_factory=set)
    patterns: dict[tuple[int, int], PatternVal] = field(default_factory=dict)
    rules: dict[tuple[int, int], Rules] = field(default_factory=dict)


def set_patterns(set_id: int, fqdns: Mapping[str, Rules]) -> tuple[dict[tuple[int, int], PatternVal],
                                                                     dict[tuple[int, int], Rules]]:
    """The dns_patterns and policy_fqdns entries of one set (its patterns
    canonical and their ids distinct: policy_desired.compile_set checked)."""
    rules: dict[tuple[int, int], Rules] = {}
    ids: dict[str, int] = {}
    for text, port_rules in fqdns.items():
        pid = ids[text] = pattern_id(text)
        rules[(set_id, pid)] = port_rules
    patterns = {k: (v.kinds, v.exact, v.one_label, v.any_depth) for k, v in pattern_entries(set_id, ids).items()}
    return patterns, rules


def fqdn_entries(policy: NodePolicy, ids: Ids, entries: PolicyEntries) -> FqdnEntries:
    """What the learner's maps should hold for `policy`, whose policy map
    entries (and ids) policy_desired.desired_entries gave."""
    out = FqdnEntries()
    name_of = {sid: name for name, sid in ids.sets.items()}
    for sid, name in sorted(name_of.items()):
        s = policy.sets.get(name)
        if s is None or not s.fqdns:
            continue
        patterns, rules = set_patterns(sid, s.fqdns)
        out.patterns.update(patterns)
        out.rules.update(rules)
        for addr, port in s.dns_servers:
            out.servers.add((sid, addr, port))
            out.servers.add((DNS_SET_ANY, addr, port))
    with_fqdns = {sid for sid, _ in out.rules}
    for cg, e in entries.workloads.items():
        if e.policy_set in with_fqdns:
            out.workloads[cg] = (e.id, e.policy_set)
    return out


# --- the writes -----------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    kind: str    # "put" | "delete"
    table: str   # "rules" | "patterns" | "servers" | "workloads"
    key: object
    value: object = None


def fqdn_plan(current: FqdnEntries, desired: FqdnEntries) -> list[Op]:
    """The writes from `current` to `desired` in the module doc's order."""
    ops: list[Op] = []
    for table in ("rules", "patterns"):
        have, want = getattr(current, table), getattr(desired, table)
        ops += [Op("put", table, k, v) for k, v in sorted(want.items()) if have.get(k) != v]
    # The union (set 0) with the set's entries, before them.
    ops += [Op("put", "servers", k) for k in sorted(desired.servers - current.servers, key=lambda k: k[0])]
    ops += [Op("put", "workloads", k, v) for k, v in sorted(desired.workloads.items())
            if current.workloads.get(k) != v]
    ops += [Op("delete", "workloads", k) for k in sorted(set(current.workloads) - set(desired.workloads))]
    for table in ("rules", "patterns"):
        have, want = getattr(current, table), getattr(desired, table)
        ops += [Op("delete", table, k) for k in sorted(set(have) - set(want))]
    ops += [Op("delete", "servers", k) for k in sorted(current.servers - desired.servers, key=lambda k: -k[0])]
    return ops


__all__ = ["FqdnEntries", "Op", "fqdn_entries", "fqdn_plan", "pattern_id", "set_patterns"]
