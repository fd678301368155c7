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

Who judges (run_policy_job): the kernel, when the job is for the state the
node applied (its set ids given: set_ids) and the terminator's judge
programs loaded (Terminator.kernel_judge): one walk of the sockets decides
with the connect hook's own code against the policy maps and destroys the
denied (kfunc; netlink: lists them, then SOCK_DESTROY), so only the denied
cross to user space; their reasons are worked out here (PolicyEvaluator)
for the reports. User space otherwise: a dry run or preview (a state not
in the maps), a job for a set with FQDN rules without what the FQDN
judgement needs (see below), a terminator without the judge
programs (they did not load,
or SOCKLB_POLICY_JUDGE=user / --policy-judge user): the sockets of the
job's cgroups are listed, judged here (judge) and the condemned destroyed
by cookie.

How a socket is judged (judge): by the new state's sets (PolicyEvaluator),
as the application addressed it: a socket whose live flow went through a
frontend by that frontend (its verdict when it is a frontend of the new
state, the prefixes on its VIP otherwise); any other by its peer, a
frontend's verdict when the peer is one (a bypassed workload's socket to a
VIP), else the prefixes.

FQDN rules (docs/fqdn.md): a destination no frontend or prefix decides, of a
workload whose set has FQDN rules, is kept when the workload's
`dns_learned` entry for the address has a slot, expired or not, whose
pattern is still in the set and whose rules allow the port (none denying);
else condemned ("FQDN: no allowed name resolved to ..."). The job reads the
learned slots of its workloads once (FqdnSource: the workload ids of the
policy maps and a LearnedReader, the pinned map's or MemoryLearned); the
kernel judge reads them itself (`dns_learned`, `policy_fqdns`) given each
cgroup's workload id (kernel_workloads), and the slots are read here only
to name the condemned; a job without one (a dry run, a preview, a node without the learner) judges such
destinations conservatively (kept when a pattern of the set allows the
port), as does one whose read failed.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from socklb.lb.addresses import addr_text, join_host_port
from socklb.lb.frontends import FrontendKey, frontend_key
from socklb.lb.policy_eval import UNRESTRICTED, PolicyEvaluator
from socklb.lb.protocols import name_of
from socklb.v1 import node_pb2

from .termtypes import CookieReport, ListedSocket, SocketListing

TRIGGER = "policy"
log = logging.getLogger(__name__)

# (workload id, address: 16 bytes, IPv4 v4-mapped) -> the pattern ids of its
# learned slots, expired or not.
LearnedSlots = Mapping[tuple[int, bytes], frozenset[int]]


class LearnedReader(Protocol):
    def learned_patterns(self, workload_ids: Collection[int]) -> LearnedSlots:
        """What the DNS learner learned for those workloads (dns.DnsLearner)."""


@dataclass(frozen=True)
class MemoryLearned:
    """A LearnedReader of given entries (tests, a node without a kernel)."""

    entries: LearnedSlots

    def learned_patterns(self, workload_ids: Collection[int]) -> LearnedSlots:
        return {k: v for k, v in self.entries.items() if k[0] in workload_ids}


@dataclass(frozen=True)
class FqdnSource:
    """What an FQDN judgement needs: the workloads' ids in the policy maps
    (what `dns_learned` is keyed by) and where to read what they learned."""

    workload_ids: Mapping[str, int]
    reader: LearnedReader


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
    # Set name -> its kernel id, when the new state is the one in the
    # policy maps (the kernel may judge then); None: judged in user space.
    set_ids: Mapping[str, int] | None = None
    # Where the FQDN sets' workloads' learned addresses are read (None:
    # judged conservatively, see the module doc).
    fqdn: FqdnSource | None = None

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

    __slots__ = ("socket", "workload", "raw_address", "port", "service", "_judge", "_set", "_frontend", "_learned")

    def __init__(self, socket: ListedSocket, workload: str, raw_address: bytes, port: int, service: str,
                 judge: PolicyEvaluator, policy_set: str, frontend: FrontendKey | None,
                 learned: frozenset[int] | None = None):
        self.socket = socket
        self.workload = workload
        self.raw_address = raw_address  # the destination as judged: the flow's VIP, else the peer
        self.port = port
        self.service = service          # the destination's service when it is a frontend, else ""
        self._judge, self._set, self._frontend, self._learned = judge, policy_set, frontend, learned

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
        return self._judge.denial(self._set, self._frontend, self.raw_address, self.port, self.socket.proto,
                                  self._learned) or ""

    def __repr__(self) -> str:
        return f"Condemned({self.socket.cookie}, {self.workload}, {self.destination})"


@dataclass
class PolicyRun:
    """What a policy job did: the listing, the sockets it condemned and, when
    not a dry run, the destruction."""

    listing: SocketListing                     # judge "kernel": only the denied sockets (listing.judged: all)
    condemned: list[Condemned]
    method: str                                # "kfunc" | "netlink" | "none" (dry run)
    destroyed: CookieReport | None = None      # None: a dry run, or nothing condemned
    duration: float = 0.0
    workloads: dict[str, int] = field(default_factory=dict)  # workload -> sockets condemned
    judge: str = "user"                        # "kernel" | "user": where the sockets were judged

    def summary(self) -> str:
        d = self.destroyed
        what = f"destroyed {d.destroyed}/{d.found}" if d is not None else f"found {len(self.condemned)}"
        if self.judge == "kernel":
            seen = f"{self.listing.judged} sockets judged in the kernel"
        else:
            seen = f"{len(self.listing.sockets)} sockets listed"
        return (f"{what} denied of {seen} in {self.listing.netns_scanned} netns, "
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
               workloads: Iterable[str] = (), set_ids: Mapping[str, int] | None = None,
               fqdn: FqdnSource | None = None) -> PolicyJob | None:
    """The job for going from `before` to `after` (after: applied, or, dry
    run, only considered); None when no workload's sockets need judging.
    cgroup_ids: workload name -> the ids of its cgroup and of those below it
    (a workload missing there has no cgroup on this node); workloads: more
    names to judge again although their policy did not change (e.g. one
    whose cgroup just appeared); set_ids: set name -> kernel id when
    `after` is the state in the policy maps (lets the kernel judge; ignored
    for a dry run); fqdn: where the learned addresses are read (ignored for
    a dry run: `after` is not in the maps). InvalidState when `after` is not
    a state the node could apply (its sets, its frontends)."""
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
    ids = None if dry_run or set_ids is None else dict(set_ids)
    return PolicyJob(job_id, dry_run, tuple(scopes), evaluator, frontends, set_ids=ids,
                     fqdn=None if dry_run else fqdn)


# --- judging (pure) ----------------------------------------------------------------------------

class _Destinations:
    """The destination of a socket as judged (the flow's VIP, else the
    peer), with its frontend and service in the job's state when it is one."""

    def __init__(self, job: PolicyJob):
        self.frontends = {(k.addr, k.port, k.proto): (k, service) for k, service in job.frontends.items()}

    def __call__(self, s: ListedSocket) -> tuple[bytes, int, FrontendKey | None, str]:
        addr, port = (s.vip, s.vip_port) if s.frontend_id else (s.dst, s.dport)
        return (addr, port, *self.frontends.get((addr, port, s.proto), (None, "")))


def judge(job: PolicyJob, sockets: Iterable[ListedSocket], denied: bool = False,
          learned: LearnedSlots | None = None) -> list[Condemned]:
    """The sockets the job's state denies, with why (see the module doc);
    sockets of cgroups the job does not own are left alone. denied: the
    sockets were judged denied already (by the kernel): only named.
    learned: what the job's FQDN workloads learned (read_learned; None:
    FQDN destinations judged conservatively)."""
    cgroups = job.cgroups
    destination = _Destinations(job)
    allowed = job.evaluator.allowed
    fqdn_ids = _fqdn_ids(job) if learned is not None else {}
    # Sockets crowd on few destinations (a service, a database): judged once each.
    judged: dict[tuple, bool] = {}
    out = []
    for s in sockets:
        w = cgroups.get(s.cgroup_id)
        if w is None:
            continue
        addr, port, fe, service = destination(s)
        wid = fqdn_ids.get(w.name)
        patterns = None if wid is None or fe is not None else learned.get((wid, addr), frozenset())
        if not denied:
            key = (w.policy_set, addr, port, s.proto, patterns)
            ok = judged.get(key)
            if ok is None:
                ok = judged[key] = allowed(w.policy_set, fe, addr, port, s.proto, patterns)
            if ok:
                continue
        out.append(Condemned(s, w.name, addr, port, service, job.evaluator, w.policy_set, fe, patterns))
    return out


def _fqdn_ids(job: PolicyJob) -> dict[str, int]:
    """Workload name -> its id in the policy maps, for the job's workloads
    whose set has FQDN rules and whose id is known."""
    if job.fqdn is None:
        return {}
    ids = job.fqdn.workload_ids
    return {w.name: ids[w.name] for w in job.workloads if job.evaluator.has_fqdns(w.policy_set) and w.name in ids}


def read_learned(job: PolicyJob) -> LearnedSlots | None:
    """What the job's FQDN workloads learned, read once (I/O); None when the
    job has none or the read failed (then judged conservatively)."""
    ids = _fqdn_ids(job)
    if not ids:
        return None
    try:
        return job.fqdn.reader.learned_patterns(set(ids.values()))
    except OSError as e:
        log.warning("policy job %s: cannot read what the DNS learner learned (%s): FQDN destinations kept", job.id, e)
        return None


def condemn(job: PolicyJob, denied: Iterable[ListedSocket], learned: LearnedSlots | None = None) -> list[Condemned]:
    """The sockets the kernel judged denied, named as judge() names them
    (their reasons are worked out when asked; learned: for FQDN reasons)."""
    return judge(job, denied, denied=True, learned=learned)


def kernel_sets(job: PolicyJob, terminator) -> dict[int, int] | None:
    """Cgroup id -> kernel set id for the kernel judge, or None when the job
    is judged in user space (see the module doc)."""
    if job.dry_run or job.set_ids is None or not getattr(terminator, "kernel_judge", False):
        return None
    ids = job.set_ids
    if any(w.policy_set not in ids for w in job.workloads):
        return None
    # A set with FQDN rules: the kernel reads what the workload learned by
    # its id; without the ids (or a reader), judged here, conservatively.
    fqdn_ids = _fqdn_ids(job)
    if any(job.evaluator.has_fqdns(w.policy_set) and w.name not in fqdn_ids for w in job.workloads):
        return None
    return {cg: ids[w.policy_set] for cg, w in job.cgroups.items()}


def kernel_workloads(job: PolicyJob) -> dict[int, int]:
    """Cgroup id -> workload id for the kernel judge's FQDN decisions: the
    cgroups of the job's workloads whose set has FQDN rules."""
    fqdn_ids = _fqdn_ids(job)
    return {cg: fqdn_ids[w.name] for cg, w in job.cgroups.items() if w.name in fqdn_ids}


# --- running -----------------------------------------------------------------------------------

def run_policy_job(terminator, job: PolicyJob) -> PolicyRun:
    """Judge the sockets of the job's cgroups and destroy the condemned (not
    in a dry run): in the kernel in one walk when it can (kernel_sets),
    else listed (sockdestroy.Terminator), judged here, destroyed by cookie."""
    t0 = time.monotonic()
    sets = kernel_sets(job, terminator)
    destroyed = None
    if sets is not None:
        workloads = kernel_workloads(job)
        listing, destroyed = terminator.judge_cgroups(sets, cgroup_workloads=workloads)
        condemned = condemn(job, listing.sockets, read_learned(job) if workloads and listing.sockets else None)
    else:
        listing = terminator.list_cgroups(job.cgroups)
        condemned = judge(job, listing.sockets, learned=read_learned(job))
    run = PolicyRun(listing, condemned, "none" if job.dry_run else terminator.method.value,
                    judge="kernel" if sets is not None else "user")
    for c in condemned:
        run.workloads[c.workload] = run.workloads.get(c.workload, 0) + 1
    if destroyed is not None:
        run.destroyed = destroyed if condemned else None
    elif not job.dry_run and condemned:
        run.destroyed = terminator.destroy_cookies([c.socket for c in condemned])
    run.duration = time.monotonic() - t0
    return run


__all__ = ["Condemned", "FqdnSource", "LearnedReader", "LearnedSlots", "MemoryLearned", "PolicyJob", "PolicyRun",
           "TRIGGER", "WorkloadScope", "changed_workloads", "condemn", "judge", "kernel_sets", "kernel_workloads", "owned_cgroups",
           "policy_job", "read_learned", "run_policy_job", "state_frontends"]
