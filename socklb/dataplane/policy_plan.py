"""What the policy maps hold, and the ordered writes from what they hold to
what they should (pure: the map writer executes the plan, tests check it
without a kernel).

The entries (bpf/socklb.h has the maps):

    workloads   cgroup id -> WorkloadEntry(id, policy_set, flags)
    frontends   set id -> frontend id -> action            (policy_frontends)
    prefixes    set id -> (address, length) -> port rules  (policy_prefixes, an LPM trie)
    cfg         PolicyCfg: which cgroup levels the hooks walk, or none
    exempt      {(workload id, redirect frontend id)}           (redirect_exempt)

Order, so that at every moment each workload is decided by its old policy or
by its new one, never by a mix that denies what both allow:

1. (before the services plan) new and changed entries of every set,
   prefixes longest first: a lookup that finds a new prefix then finds every
   longer new prefix holding the address, so it sees the rules of the
   address's new longest match, not those of a shorter prefix;
2. (the services plan runs here: a frontend's verdict exists before the
   frontend does, and goes after it)
3. entries no longer wanted in sets that stay, prefixes shortest first (the
   mirror argument: a lookup that finds an old prefix finds the old longest
   match): now every set in use is complete;
4. the config, widened to the old and new cgroup levels; counters of
   workload ids given to new workloads reset; the workload entries, each
   switching at once from a complete old set to a complete new one;
5. the sets no one uses any more; the config as it ends.

Redirect exemptions are written in step 1 and deleted in step 5: the agent
writes the masters that turn a redirect on after step 5 and those that turn
it off before step 1 (plan.Plan.late), so an exempt workload is found, and
exempt, whenever its redirect is on.

A set edited in place is in between during steps 1-3, each lookup getting
its old or its new verdict: right for the workloads that stay on it, not for
one that leaves it in the same update. policy_desired therefore writes such
a set anew under a fresh id (see desired_entries).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .layout import PolicyAction

Prefix = tuple[bytes, int]  # 16-byte address (IPv4 v4-mapped), length in those 128 bits


@dataclass(frozen=True)
class PortRule:
    port: int
    end_port: int
    proto: int  # IPPROTO_TCP / IPPROTO_UDP, 0: both
    action: PolicyAction


Rules = tuple[PortRule, ...]


@dataclass(frozen=True)
class WorkloadEntry:
    id: int
    policy_set: int  # 0: unrestricted
    flags: int       # layout.WorkloadFlag


@dataclass(frozen=True)
class PolicyCfg:
    cgroups: int = 0  # workload entries; 0 when none restricts, bypasses or is exempt (the hooks skip the lookups)
    min_level: int = 0
    max_level: int = 0
    # None restricts or bypasses: the hooks look workloads up for a redirected
    # frontend only (its exemptions), a connect to any other costs nothing more.
    exempt_only: bool = False

    def widened(self, other: PolicyCfg) -> PolicyCfg:
        """Lets the hooks find the workloads of both."""
        if not self.cgroups:
            return other
        if not other.cgroups:
            return self
        return PolicyCfg(max(self.cgroups, other.cgroups), min(self.min_level, other.min_level),
                         max(self.max_level, other.max_level), self.exempt_only and other.exempt_only)


@dataclass
class PolicyEntries:
    """The content of the policy maps, as data."""

    workloads: dict[int, WorkloadEntry] = field(default_factory=dict)
    frontends: dict[int, Mapping[int, PolicyAction]] = field(default_factory=dict)
    prefixes: dict[int, Mapping[Prefix, Rules]] = field(default_factory=dict)
    cfg: PolicyCfg = PolicyCfg()
    exempt: frozenset[tuple[int, int]] = frozenset()  # (workload id, redirect frontend id)

    def set_ids(self) -> set[int]:
        """Every set id the entries use."""
        return ({e.policy_set for e in self.workloads.values() if e.policy_set}
                | set(self.frontends) | set(self.prefixes))

    def workload_ids(self) -> set[int]:
        return {e.id for e in self.workloads.values()} | {w for w, _ in self.exempt}


# --- operations ---------------------------------------------------------------

@dataclass(frozen=True)
class PutVerdict:
    set: int
    frontend_id: int
    action: PolicyAction


@dataclass(frozen=True)
class DeleteVerdict:
    set: int
    frontend_id: int


@dataclass(frozen=True)
class PutPrefix:
    set: int
    prefix: Prefix
    rules: Rules


@dataclass(frozen=True)
class DeletePrefix:
    set: int
    prefix: Prefix


@dataclass(frozen=True)
class PutWorkload:
    cgroup: int
    entry: WorkloadEntry


@dataclass(frozen=True)
class DeleteWorkload:
    cgroup: int


@dataclass(frozen=True)
class PutCfg:
    cfg: PolicyCfg


@dataclass(frozen=True)
class ResetDenies:
    id: int


@dataclass(frozen=True)
class PutExempt:
    workload_id: int
    frontend_id: int


@dataclass(frozen=True)
class DeleteExempt:
    workload_id: int
    frontend_id: int


PolicyOp = (PutVerdict | DeleteVerdict | PutPrefix | DeletePrefix | PutWorkload | DeleteWorkload | PutCfg | ResetDenies
            | PutExempt | DeleteExempt)


@dataclass
class PolicyPlan:
    before: list[PolicyOp]  # step 1: before the services plan
    after: list[PolicyOp]   # steps 3-5: after it
    result: PolicyEntries

    @property
    def ops(self) -> list[PolicyOp]:
        return self.before + self.after

    def count(self, kind: type) -> int:
        return sum(isinstance(o, kind) for o in self.ops)


def make_policy_plan(current: PolicyEntries, desired: PolicyEntries, fresh_ids=frozenset()) -> PolicyPlan:
    """Ops from `current` to `desired` (module docstring: the order).
    fresh_ids: workload ids given to new workloads, whose counters restart."""
    prefix_puts: list[PutPrefix] = []
    verdict_puts: list[PolicyOp] = []
    staying: list[PolicyOp] = []
    staying_prefixes: list[DeletePrefix] = []
    gone: list[PolicyOp] = []
    for sid in sorted(set(current.frontends) | set(desired.frontends)):
        old, new = current.frontends.get(sid, {}), desired.frontends.get(sid, {})
        if old is new:
            continue
        verdict_puts.extend(PutVerdict(sid, fe, a) for fe, a in new.items() if old.get(fe) != a)
        dels = [DeleteVerdict(sid, fe) for fe in old if fe not in new]
        (staying if sid in desired.frontends else gone).extend(dels)
    for sid in sorted(set(current.prefixes) | set(desired.prefixes)):
        old, new = current.prefixes.get(sid, {}), desired.prefixes.get(sid, {})
        if old is new:
            continue
        prefix_puts.extend(PutPrefix(sid, p, r) for p, r in new.items() if old.get(p) != r)
        dels = sorted((DeletePrefix(sid, p) for p in old if p not in new), key=lambda op: op.prefix[1])
        (staying_prefixes if sid in desired.prefixes else gone).extend(dels)
    prefix_puts.sort(key=lambda op: -op.prefix[1])
    staying_prefixes.sort(key=lambda op: op.prefix[1])

    after: list[PolicyOp] = [*staying_prefixes, *staying]
    wide = current.cfg.widened(desired.cfg)
    if wide != current.cfg:
        after.append(PutCfg(wide))
    after.extend(ResetDenies(i) for i in sorted(fresh_ids))
    for cg, entry in desired.workloads.items():
        if current.workloads.get(cg) != entry:
            after.append(PutWorkload(cg, entry))
    after.extend(DeleteWorkload(cg) for cg in current.workloads if cg not in desired.workloads)
    after.extend(gone)
    after.extend(DeleteExempt(*e) for e in sorted(current.exempt - desired.exempt))
    if desired.cfg != wide:
        after.append(PutCfg(desired.cfg))
    exempt_puts = [PutExempt(*e) for e in sorted(desired.exempt - current.exempt)]
    return PolicyPlan([*prefix_puts, *verdict_puts, *exempt_puts], after, desired)


__all__ = ["DeleteExempt", "DeletePrefix", "DeleteVerdict", "DeleteWorkload", "PolicyCfg", "PolicyEntries",
           "PolicyOp", "PolicyPlan", "PortRule", "Prefix", "PutCfg", "PutExempt", "PutPrefix", "PutVerdict",
           "PutWorkload", "ResetDenies", "Rules", "WorkloadEntry", "make_policy_plan"]
