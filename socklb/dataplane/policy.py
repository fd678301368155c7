"""The agent's policy part: the workloads, policy sets and redirects it was
given, where each workload's cgroup is on this node, the ids it gave, and
what the policy maps hold. It plans (prepare) and the agent writes and then
keeps the result (commit), so that the policy goes all or nothing together
with the services of the same update.

    step = policy.prepare(given, frontend_id, resolve=None)   # nothing written (resolve(): the cgroups alone)
    writer.execute_policy(step.plan.before); <services plan>; writer.execute_policy(step.plan.after)
    policy.commit(step)
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from socklb.lb.frontends import FrontendKey

from .catalog import WorkloadName
from .policy_desired import Ids, NodePolicy, desired_entries
from .policy_plan import PolicyEntries, PolicyPlan, make_policy_plan
from .workloads import Cgroup, Cgroups

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PolicyStep:
    """A prepared change: what the part holds once its plan is written."""

    given: NodePolicy
    resolved: dict[str, Cgroup | None]
    ids: Ids
    plan: PolicyPlan


class PolicyPart:
    def __init__(self, programmed: PolicyEntries, cgroups: Cgroups):
        self.cgroups = cgroups
        self.given = NodePolicy()
        self.resolved: dict[str, Cgroup | None] = {}
        self.ids = Ids()
        self.programmed = programmed  # read back at start: entries of a previous agent

    def resolve(self, given: NodePolicy, resolve: Iterable[str] | None = None) -> dict[str, Cgroup | None]:
        """Where each workload of `given` is on this node. resolve: the
        workloads whose cgroups to look up again (None: all); the others
        keep their last answer, unless their cgroup path changed."""
        again = set(given.specs) if resolve is None else set(resolve)
        resolved: dict[str, Cgroup | None] = {}
        for name, spec in given.specs.items():
            old = self.given.specs.get(name)
            if name in again or name not in self.resolved or old is None or old.cgroup != spec.cgroup:
                resolved[name] = self.cgroups.resolve(spec.cgroup)
            else:
                resolved[name] = self.resolved[name]
        return resolved

    def prepare(self, given: NodePolicy, frontend_id: Callable[[FrontendKey], int | None],
                resolve: Iterable[str] | None = None,
                resolved: dict[str, Cgroup | None] | None = None) -> PolicyStep:
        """Plan the change to `given`, with the cgroups `resolved` (None:
        resolve(given, resolve))."""
        if resolved is None:
            resolved = self.resolve(given, resolve)
        ids, desired, fresh = desired_entries(given, resolved, frontend_id, self.ids, self.programmed)
        return PolicyStep(given, resolved, ids, make_policy_plan(self.programmed, desired, fresh))

    def found(self, step: PolicyStep) -> list[str]:
        """The workloads whose cgroups the step finds that the part does not
        hold yet: a cgroup that appeared or was made anew, new cgroups below
        one (exact matching), or any after a restart. Their processes may
        hold sockets no hook judged against their policy."""
        out = []
        for name, c in step.resolved.items():
            was = self.resolved.get(name)
            if c is not None and (was is None or was.id != c.id or not set(c.below) <= set(was.below)):
                out.append(name)
        return sorted(out)

    def commit(self, step: PolicyStep) -> None:
        for name, c in step.resolved.items():
            before = self.resolved.get(name)
            if (before is None) != (c is None) and name in self.given.specs:
                log.info("workload %s: cgroup %s %s", name, step.given.specs[name].cgroup,
                         "found" if c is not None else "gone")
        self.given, self.resolved, self.ids, self.programmed = step.given, step.resolved, step.ids, step.plan.result

    def names(self) -> dict[str, WorkloadName]:
        """Each workload as the catalog names it."""
        out = {}
        for name, spec in self.given.specs.items():
            c = self.resolved.get(name)
            out[name] = WorkloadName(name, self.ids.workloads.get(name, -1), spec.cgroup,
                                     c.id if c is not None else 0, spec.policy_set,
                                     self.ids.sets.get(spec.policy_set, 0), spec.bypass)
        return out


__all__ = ["PolicyPart", "PolicyStep"]
