"""Policy terminations: when a node's policy changes, the open sockets of the
workloads it concerns that the new state denies are destroyed (trigger
"policy"); a dry run against a state the node has not applied lists them
and changes nothing. The same code serves both.

    job = policy_job("v7-policy", before, after, cgroup_ids)   # None: nothing to look at
    run = run_policy_job(terminator, job)                     # list, judge, destroy
    run.condemned                                             # each socket with why

Which workloads (changed_workloads): those of the new state that are
restricted (a policy set) and were not restricted the same way before: new
ones, a set name that changed, a set whose content changed (its rules, or
its verdicts because services changed), a cgroup that moved. A workload
that became unrestricted has nothing to lose.

Whose sockets: a workload is its cgroup and every cgroup below it
(cgroup_ids: workload name -> ids, cgroupids.py); where workloads nest, a
cgroup belongs to the deepest one, as in the hooks, so a changed workload
never judges the sockets of an unchanged one inside it.

How a socket is judged (judge): by the new state's sets (PolicyEvaluator),
as the application addressed it: a socket whose live flow went through a
frontend by that frontend (its verdict when it is a frontend of the new
state, the prefixes on its VIP otherwise); any other by its peer, a
frontend's verdict when the peer is one (a bypassed workload's socket to a
VIP), else the prefixes.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from socklb.lb.addresses import addr_text, join_host_port
from socklb.lb.frontends import FrontendKey, frontend_key
from socklb.lb.policy_eval import UNRESTRICTED, PolicyEvaluator
from socklb.lb.protocols import name_of
from socklb.v1 import node_pb2

from .termtypes import CookieReport, ListedSocket, SocketListing

TRIGGER = "policy"


@dataclass(frozen=True)
class WorkloadScope:
    """A workload a policy job looks at: its set in the new state and the
    cgroups whose sockets it judges."""

    name: str
    policy_set: str
    cgroup: str                    # relative to the cgroup2 mount (its depth decides nesting)
    cgroup_ids: frozenset[int]     # those it owns (not those of a workload below it)


@dataclass(frozen=True)
class PolicyJob:
    """What a policy change (or its dry run) terminates on this node."""

    id: str
    dry_run: bool
    workloads: tuple[WorkloadScope, ...]
    evaluator: PolicyEvaluator
    # The frontends of the new state, with their service: what "is a frontend" means.
    frontends: Mapping[FrontendKey, str]
    # W3C context of what caused the job: its "terminate" span is a child.
    trace_context: dict | None = None

    trigger: ClassVar[str] = TRIGGER
    service: ClassVar[str] = ""  # a policy job is about workloads, not one service

    @property
    def empty(self) -> bool:
        return not self.workloads

    @property
    def cgroups(self) -> dict[int, WorkloadScope]:
        """Cgroup id -> the workload whose sockets there are judged."""
        return {cg: w for w in self.workloads for cg in w.cgroup_ids}


class Condemned:
    """A socket the new state denies. Why is worked out when asked: a
    report names a thousand at most, a change may condemn many more."""

    __slots__ = ("socket", "workload", "raw_address", "port", "service", "_judge", "_set", "_frontend")

    def __init__(self, socket: ListedSocket, workload: str, raw_address: bytes, port: int, service: str,
                 judge: PolicyEvaluator, policy_set: str, frontend: FrontendKey | None):
        self.socket = socket
        self.workload = workload
        self.raw_address = raw_address  # the destination as judged: the flow's VIP, else the peer
        self.port = port
        self.service = service          # the destination's service when it is a frontend, else ""
        self._judge, self._set, self._frontend = judge, policy_set, frontend

    @property
    def address(self) -> str:
        return addr_text(self.raw_address)

    @property
    def destination(self) -> str:
        """"127.96.0.10:53/udp (dns)", "10.0.0.7:22/tcp"."""
        shown = f"{join_host_port(self.address, self.port)}/{name_of(self.socket.proto)}"
        return f"{shown} ({self.service})" if self.service else shown

    @property
    def reason(self) -> str:
        """"policy set ps-...: <what denies it>"."""
        return self._judge.denial(self._set, self._frontend, self.raw_address, self.port, self.socket.proto) or ""

    def __repr__(self) -> str:
        return f"Condemned({self.socket.cookie}, {self.workload}, {self.destination})"


@dataclass
class PolicyRun:
    """What a policy job did: the listing, the sockets it condemned and, when
    not a dry run, the destruction."""

    listing: SocketListing
    condemned: list[Condemned]
    method: str                                # "kfunc" | "netlink" | "none" (dry run)
    destroyed: CookieReport | None = None      # None: a dry run, or nothing condemned
    duration: float = 0.0
    workloads: dict[str, int] = field(default_factory=dict)  # workload -> sockets condemned

    def summary(self) -> str:
        d = self.destroyed
        what = f"destroyed {d.destroyed}/{d.found}" if d is not None else f"found {len(self.condemned)}"
        return (f"{what} denied of {len(self.listing.sockets)} sockets listed in {self.listing.netns_scanned} netns, "
                f"{self.duration * 1000:.1f} ms, method={self.method}")


# --- building the job (pure) -------------------------------------------------------------------

def _depth(cgroup: str) -> int:
    return cgroup.strip("/").count("/")


def changed_workloads(before: node_pb2.NodeState, after: node_pb2.NodeState) -> list[node_pb2.WorkloadState]:
    """The workloads of `after` whose open sockets must be judged again (see
    the module doc), by name."""
    old_w = {w.name: w for w in before.workloads}
    old_sets = {s.name: s for s in before.policy_sets}
    new_sets = {s.name: s for s in after.policy_sets}
    out = []
    for w in after.workloads:
        if w.policy_set == UNRESTRICTED:
            continue
        was = old_w.get(w.name)
        if (was is None or was.policy_set != w.policy_set or was.cgroup.strip("/") != w.cgroup.strip("/")
                or old_sets.get(w.policy_set) != new_sets.get(w.policy_set)):
            out.append(w)
    return sorted(out, key=lambda w: w.name)


def state_frontends(state: node_pb2.NodeState) -> dict[FrontendKey, str]:
    """Every frontend of the state's services, with its service."""
    return {frontend_key(f, f"services[{i}].frontends[{j}]"): s.name
            for i, s in enumerate(state.services) for j, f in enumerate(s.frontends)}


def owned_cgroups(workloads: Iterable[node_pb2.WorkloadState],
                  cgroup_ids: Mapping[str, Iterable[int]]) -> dict[int, str]:
    """Cgroup id -> the workload it belongs to: the deepest workload whose
    cgroup holds it (the hooks' rule)."""
    owner: dict[int, str] = {}
    for w in sorted(workloads, key=lambda w: (_depth(w.cgroup), w.name)):
        for cg in cgroup_ids.get(w.name, ()):
            owner[cg] = w.name
    return owner


def policy_job(job_id: str, before: node_pb2.NodeState, after: node_pb2.NodeState,
               cgroup_ids: Mapping[str, Iterable[int]], dry_run: bool = False,
               workloads: Iterable[str] = ()) -> PolicyJob | None:
    """The job for going from `before` to `after` (after: applied, or, dry
    run, only considered); None when no workload's sockets need judging.
    cgroup_ids: workload name -> the ids of its cgroup and of those below it
    (a workload missing there has no cgroup on this node); workloads: more
    names to judge again although their policy did not change (e.g. one
    whose cgroup just appeared). InvalidState when `after` is not a state
    the node could apply (its sets, its frontends)."""
    evaluator = PolicyEvaluator.of_state(after)
    frontends = state_frontends(after)
    again = set(workloads)
    wanted = {w.name for w in changed_workloads(before, after)}
    wanted |= {w.name for w in after.workloads if w.name in again and w.policy_set != UNRESTRICTED}
    owner = owned_cgroups(after.workloads, cgroup_ids)
    scopes = []
    for w in sorted(after.workloads, key=lambda w: w.name):
        if w.name not in wanted:
            continue
        if w.policy_set not in evaluator:
            raise KeyError(f"workload {w.name!r}: no policy set {w.policy_set!r} in the state")
        mine = frozenset(cg for cg in cgroup_ids.get(w.name, ()) if owner.get(cg) == w.name)
        if mine:
            scopes.append(WorkloadScope(w.name, w.policy_set, w.cgroup, mine))
    if not scopes:
        return None
    return PolicyJob(job_id, dry_run, tuple(scopes), evaluator, frontends)


# --- judging (pure) ----------------------------------------------------------------------------

def judge(job: PolicyJob, sockets: Iterable[ListedSocket]) -> list[Condemned]:
    """The sockets the job's state denies, with why (see the module doc);
    sockets of cgroups the job does not own are left alone."""
    cgroups = job.cgroups
    frontends = {(k.addr, k.port, k.proto): (k, service) for k, service in job.frontends.items()}
    allowed = job.evaluator.allowed
    # Sockets crowd on few destinations (a service, a database): judged once each.
    judged: dict[tuple[str, bytes, int, int], bool] = {}
    out = []
    for s in sockets:
        w = cgroups.get(s.cgroup_id)
        if w is None:
            continue
        addr, port = (s.vip, s.vip_port) if s.frontend_id else (s.dst, s.dport)
        fe, service = frontends.get((addr, port, s.proto), (None, ""))
        key = (w.policy_set, addr, port, s.proto)
        ok = judged.get(key)
        if ok is None:
            ok = judged[key] = allowed(w.policy_set, fe, addr, port, s.proto)
        if not ok:
            out.append(Condemned(s, w.name, addr, port, service, job.evaluator, w.policy_set, fe))
    return out


# --- running -----------------------------------------------------------------------------------

def run_policy_job(terminator, job: PolicyJob) -> PolicyRun:
    """List the sockets of the job's cgroups (sockdestroy.Terminator), judge
    them, destroy the condemned (not in a dry run)."""
    t0 = time.monotonic()
    listing = terminator.list_cgroups(job.cgroups)
    condemned = judge(job, listing.sockets)
    run = PolicyRun(listing, condemned, "none" if job.dry_run else terminator.method.value)
    for c in condemned:
        run.workloads[c.workload] = run.workloads.get(c.workload, 0) + 1
    if not job.dry_run and condemned:
        run.destroyed = terminator.destroy_cookies([c.socket for c in condemned])
    run.duration = time.monotonic() - t0
    return run


__all__ = ["Condemned", "PolicyJob", "PolicyRun", "TRIGGER", "WorkloadScope", "changed_workloads", "judge",
           "owned_cgroups", "policy_job", "run_policy_job", "state_frontends"]
