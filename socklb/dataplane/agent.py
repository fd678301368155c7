"""The node agent's core: applies desired states to the node's maps, all or
nothing, through the parts it is given (map writer, terminations,
statistics, cgroups): the services, the local redirects (programmed as
services-map targets, redirect_desired.py), and the workloads and policy
sets (policy.py), in one update. Once a change is written, the terminations
part is told what it removed (backends, frontends), what its policy denies
(the open sockets of the workloads it concerns) and what new redirects take
over."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from socklb.lb.errors import InvalidState
from socklb.lb.frontends import BackendTarget, FrontendTarget, service_targets
from socklb.lb.names import check_name
from socklb.observability import metrics
from socklb.v1 import node_pb2

from . import desired
from .catalog import Catalog
from .desired import check_capacity_delta, frontend_targets, totals
from .layout import SvcFlag, Table
from .plan import (DeleteBackend, DeleteMaster, Plan, Programmed, PutBackend, PutMaster, collector_paused,
                   make_plan)
from .policy import PolicyPart, PolicyStep
from .policy_desired import NodePolicy, apply_policy_delta, node_policy
from .policy_plan import (DeletePrefix, DeleteVerdict, DeleteWorkload, PolicyEntries, PutPrefix, PutVerdict,
                          PutWorkload, make_policy_plan)
from .redirect_desired import (TRIGGER as REDIRECT_TRIGGER, changed_keys, live_redirects, redirect_name,
                               redirect_targets)
from .redirectjobs import RedirectJob
from .stats import MemoryStatistics, Statistics
from .termjobs import MemoryTerminations, Terminations
from .workloads import Cgroups, MemoryCgroups
from .writer import MapWriter

log = logging.getLogger(__name__)


class StateUnknown(RuntimeError):
    """A delta arrived but the node does not hold the full state it builds on."""


@dataclass(frozen=True)
class ApplyResult:
    version: int
    frontends_written: int
    frontends_removed: int
    backends_written: int
    backends_removed: int
    duration: float
    # Services left at their previous version (or out) because they could not
    # be applied -> why (apply(isolate=True) only).
    rejected: dict = field(default_factory=dict)
    policy_written: int = 0  # policy map entries written (workloads, verdicts, prefixes)
    policy_removed: int = 0


class Agent:
    """Applies desired states to its map writer, all or nothing, and keeps
    what it applied: the desired services (by name) and, in its catalog,
    what is programmed. Its parts are given to it:

    writer        where plans are written (writer.MapWriter: maps.BpfMapWriter,
                  or writer.MemoryMapWriter for a node that programs no kernel)
    terminations  told what each apply removed and what each policy change
                  (or a workload's cgroup found) denies, asked for explicit
                  requests (termjobs.Terminations; MemoryTerminations by default)
    statistics    counters, flows and socket statistics (stats.Statistics;
                  MemoryStatistics by default)
    cgroups       where workloads' cgroups are (workloads.Cgroups; by default
                  MemoryCgroups: every cgroup exists)
    capabilities  the probed kernel features and each duty's way, as reported

    kernel_agent.load_agent() builds the agent of a real node."""

    def __init__(self, writer: MapWriter, node: str, terminations: Terminations | None = None,
                 statistics: Statistics | None = None, capabilities: Mapping[str, str] | None = None,
                 cgroups: Cgroups | None = None):
        self.writer = writer
        self.node = node
        self.terminations = terminations if terminations is not None else MemoryTerminations(node)
        self.statistics = statistics if statistics is not None else MemoryStatistics()
        self._capabilities = dict(capabilities or {})
        self.limits = writer.limits
        self._lock = threading.Lock()
        # What the maps hold, read back (after a restart: what the previous
        # agent programmed, with no service names), and published to readers.
        self._programmed = writer.read_programmed()
        self.applied_version = writer.read_version()
        self.catalog = Catalog()
        self.catalog.publish(self._programmed)
        self.policy = PolicyPart(writer.read_policy(), cgroups if cgroups is not None else MemoryCgroups())
        # Services of the last applied state by name; None after a restart
        # until a full state arrives (the maps hold addresses, not names and
        # weights). With them the targets, and which service owns which
        # frontend, so that a delta is checked and planned for what it
        # touches only.
        self.services: dict[str, node_pb2.ServiceState] | None = None
        self.targets: dict = {}
        self.keys_of: dict[str, tuple] = {}
        # The targets the local redirects add or flag (redirect_desired.redirect_targets).
        self.overlay: dict = {}
        self._totals = (0, 0)
        self._pending_totals = (0, 0)
        # Deletes expired DNS-learned entries (fqdn_prune.LearnedPruner; None:
        # no learner).
        self.pruner = None
        # Attaches the DNS learner's per-packet programs while FQDN rules are
        # applied (learner_hooks.LearnerHooks; None: no kernel learner).
        self.learner_hooks = None

    def capabilities(self) -> dict[str, str]:
        """The probed kernel features and each duty's way (none given: empty),
        with whether the DNS learner's programs are attached now."""
        out = dict(self._capabilities)
        if self.learner_hooks is not None:
            out["fqdn_learner_hooks"] = self.learner_hooks.status()
        return out

    @property
    def applied(self) -> node_pb2.NodeState | None:
        """The last applied state, or None when the node holds no full state."""
        return self.state() if self.services is not None else None

    def state(self) -> node_pb2.NodeState:
        with self._lock:
            services = self.services or {}
            return _node_state(self.applied_version, (services[n] for n in sorted(services)), self.policy.given)

    def apply(self, state: node_pb2.NodeState, isolate: bool = False) -> ApplyResult:
        """Validate, plan and write; on any error the maps are as before.

        isolate: a state that is invalid as a whole is applied without the
        services that cannot be (they stay at their previous version, see
        desired.isolate; ApplyResult.rejected names them), so one bad service
        does not hold back every other change. Only where the node holds its
        previous state: after a restart it cannot tell what to keep."""
        # The collector off throughout: a full state makes 100k+ objects, and
        # each 700 would start a collection walking what the agent holds.
        with _measured(), collector_paused():
            start = time.monotonic()
            rejected: dict[str, str] = {}
            given = node_policy(state, self.policy.given)  # raises InvalidState, nothing touched; never isolated
            reuse = self._reuse()
            try:
                targets = frontend_targets(state, self.limits, reuse)  # raises InvalidState, nothing touched
            except InvalidState:
                if not isolate or self.services is None:
                    raise
                state, rejected = desired.isolate(state, self.services, self.limits)
                targets = frontend_targets(state, self.limits, reuse)
            with self._lock:
                resolved = self.policy.resolve(given)
                overlay = redirect_targets(self._live(given, resolved), targets.get, _redirect_fields(state))
                planned = {**targets, **overlay}
                desired.check_capacity(planned.values(), self.limits)
                before_prog = self._programmed
                # Where this agent applied the last state, the plan looks
                # at the frontends whose target changed only: an unchanged
                # service's targets are the very objects it applied (reuse),
                # and what the maps hold is what that apply wrote. Else (the
                # first state since the agent started: the maps were read
                # back) the whole state, stray entries included.
                touched = None
                if self.services is not None:
                    before_planned = {**self.targets, **self.overlay}
                    touched = {k for k, t in planned.items() if before_planned.get(k) is not t}
                    touched.update(k for k in before_planned if k not in planned)
                plan = make_plan(before_prog, planned, only=touched)
                step = self.policy.prepare(given, _frontend_ids(plan.frontend), resolved=resolved)
                before, found = self.policy.given, self.policy.found(step)
                created = _created_redirects(before_prog, plan)
                # The first state since the agent started: what the previous one
                # applied (and whether its job ran) is unknown, so every
                # restricted workload is judged, under an id of this node's own.
                job_id = f"v{state.version}-policy-start-{self.node}" if self.services is None else ""
                result = self._execute(plan, state.version, state, start, step)
                self.services = {s.name: s for s in state.services}
                self.targets = targets
                keys: dict[str, list] = {}
                for k, t in targets.items():
                    keys.setdefault(t.service, []).append(k)
                self.keys_of = {n: tuple(v) for n, v in keys.items()}
                self._totals = totals(planned.values())
                self.overlay = overlay
                self._judge_open_sockets(before, step, found, job_id)
                self._take_over(created, plan, step)
                if rejected:
                    log.error("applied version %d without %d service(s) it cannot take: %s", state.version,
                              len(rejected), "; ".join(rejected.values()))
                return replace(result, rejected=rejected)

    def _reuse(self):
        """desired.frontend_targets' reuse: the targets this agent applied
        for a service whose message is the same as then (None: changed, new,
        or no state applied since the agent started)."""
        services, targets, keys_of = self.services, self.targets, self.keys_of
        if not services:
            return None

        def reuse(svc: node_pb2.ServiceState):
            old = services.get(svc.name)
            if old is None or old != svc:  # message equality: every field, in C
                return None
            return [targets[k] for k in keys_of.get(svc.name, ())]
        return reuse

    def apply_delta(self, delta: node_pb2.NodeStateDelta) -> ApplyResult:
        with _measured(), collector_paused():
            return self._apply_delta(delta)

    def _apply_delta(self, delta: node_pb2.NodeStateDelta) -> ApplyResult:
        start = time.monotonic()
        with self._lock:
            if self.services is None:
                raise StateUnknown("this node has not received a full state since it started; "
                                   "send a full state")
            changed, new_targets = self._check_delta(delta)
            given = apply_policy_delta(self.policy.given, delta)
            old_keys = {k for name in changed for k in self.keys_of.get(name, ())}

            def service_target(key):
                t = new_targets.get(key)
                return t if t is not None or key in old_keys else self.targets.get(key)
            resolved = self.policy.resolve(given, resolve=[w.name for w in delta.workload_upserts])
            overlay = redirect_targets(self._live(given, resolved), service_target)
            # The entries redirects add (their tables, placeholders) count against the maps too.
            self._pending_totals = check_capacity_delta(self._pending_totals, _added(self.overlay), _added(overlay),
                                                        self.limits)
            touched = old_keys | set(new_targets) | changed_keys(self.overlay, overlay)
            planned = {}
            for k in touched:
                t = overlay.get(k) or service_target(k)
                if t is not None:
                    planned[k] = t
            before_prog = self._programmed
            plan = make_plan(before_prog, planned, only=touched)
            step = self.policy.prepare(given, _frontend_ids(plan.frontend), resolved=resolved)
            before, found = self.policy.given, self.policy.found(step)
            created = _created_redirects(before_prog, plan)
            upserts = node_pb2.NodeState(version=delta.version, services=delta.upserts)
            result = self._execute(plan, delta.version, upserts, start, step)
            for name in delta.removals:
                self.services.pop(name, None)
                self.keys_of.pop(name, None)
            for k in old_keys:
                self.targets.pop(k, None)
            for svc in delta.upserts:
                self.services[svc.name] = svc
            keys: dict[str, list] = {}
            for k, t in new_targets.items():
                self.targets[k] = t
                keys.setdefault(t.service, []).append(k)
            for svc in delta.upserts:
                self.keys_of[svc.name] = tuple(keys.get(svc.name, ()))
            self._totals = self._pending_totals
            self.overlay = overlay
            self._judge_open_sockets(before, step, found)
            self._take_over(created, plan, step)
            return result

    def _check_delta(self, delta: node_pb2.NodeStateDelta) -> tuple[set[str], dict]:
        """Validate a delta against the current state, touching nothing: the
        changed service names and the targets of the upserted services."""
        if delta.from_version != self.applied_version:
            raise InvalidState("from_version", f"delta applies to version {delta.from_version}, "
                               f"the node is at {self.applied_version}")
        upserted: dict[str, int] = {}
        for i, svc in enumerate(delta.upserts):
            check_name(svc.name, f"upserts[{i}].name")
            if svc.name in upserted:
                raise InvalidState(f"upserts[{i}].name", f"{svc.name!r} appears twice")
            upserted[svc.name] = i
        both = set(delta.removals) & upserted.keys()
        if both:
            raise InvalidState("removals", f"{sorted(both)[0]!r} is both upserted and removed")
        changed = set(delta.removals) | upserted.keys()
        new_targets: dict = {}
        for i, svc in enumerate(delta.upserts):
            for t in service_targets(svc, f"upserts[{i}]", self.limits.maglev_size):
                owner = new_targets[t.key].service if t.key in new_targets else None
                if owner is None and t.key in self.targets and self.targets[t.key].service not in changed:
                    owner = self.targets[t.key].service
                if owner is not None:
                    raise InvalidState(f"upserts[{i}].frontends", f"frontend {t.key} is already used by "
                                                                  f"service {owner!r}")
                new_targets[t.key] = t
        old_keys = [k for name in changed for k in self.keys_of.get(name, ())]
        self._pending_totals = check_capacity_delta(
            self._totals, [self.targets[k] for k in old_keys if k in self.targets], new_targets.values(), self.limits)
        return changed, new_targets

    def workload_cgroups_by_id(self) -> dict[int, set[int]]:
        """Workload id (of the policy maps, as `dns_learned` keys it) -> the
        ids of its cgroup and of those below it, for the workloads found on
        this node."""
        with self._lock:
            specs, ids, resolved = self.policy.given.specs, dict(self.policy.ids.workloads), dict(self.policy.resolved)
        return {ids[name]: self.policy.cgroups.tree(spec.cgroup) for name, spec in specs.items()
                if name in ids and resolved.get(name) is not None}

    def prune_learned(self) -> int:
        """Delete the expired DNS-learned entries no open socket holds on to
        (fqdn_prune.py): how many."""
        return self.pruner.run() if self.pruner is not None else 0

    def recheck_workloads(self) -> bool:
        """Resolve every workload's cgroup again and program what changed (a
        cgroup that appeared, went, or was made anew; with exact matching
        also the cgroups below it). True when something was written. Called
        every few seconds: a workload registered before its cgroup exists is
        picked up without a new state."""
        with self._lock:
            if self.services is None:
                return False
            given = self.policy.given
            resolved = self.policy.resolve(given)
            if resolved == self.policy.resolved:
                return False
            # A redirect whose local workloads' cgroups all went leaves the
            # maps (one that comes back returns): a services plan as well.
            overlay = redirect_targets(self._live(given, resolved), self.targets.get)
            touched = changed_keys(self.overlay, overlay)
            if touched:
                return self._recheck_redirects(given, resolved, overlay, touched)
            step = self.policy.prepare(given, _frontend_ids(self._programmed.frontends.get), resolved=resolved)
            found = self.policy.found(step)
            self._learner_before(step)
            try:
                self.writer.execute_policy(step.plan.ops)  # no service changes: one go
            except Exception:
                log.exception("workload update failed; restoring the previous state")
                self._restore(self._programmed, self.policy.programmed)
                self._learner_after()
                raise
            self.policy.commit(step)
            self._learner_after()
            self.catalog.publish_workloads(self.policy.names())
            log.info("workload cgroups changed: %d policy entries written, %d removed",
                     *_policy_counts(step))
            # This node's own job, not a state's: an id no other job has.
            job_id = f"v{self.applied_version}-policy-cgroup-{self.node}-{time.time_ns() // 1_000_000}"
            self._judge_open_sockets(step.given, step, found, job_id)
            return True

    def _recheck_redirects(self, given: NodePolicy, resolved: dict, overlay: dict, touched: set) -> bool:
        """recheck_workloads when redirects start or end with their local
        workloads' cgroups: the services plan of the keys they touch, the
        policy step, written together; their terminations under ids of this
        node's own."""
        start = time.monotonic()
        pending = check_capacity_delta(self._totals, _added(self.overlay), _added(overlay), self.limits)
        planned = {}
        for k in touched:
            t = overlay.get(k) or self.targets.get(k)
            if t is not None:
                planned[k] = t
        before_prog = self._programmed
        plan = make_plan(before_prog, planned, only=touched)
        step = self.policy.prepare(given, _frontend_ids(plan.frontend), resolved=resolved)
        found = self.policy.found(step)
        created = _created_redirects(before_prog, plan)
        version = self.applied_version
        suffix = f"-cgroup-{self.node}-{time.time_ns() // 1_000_000}"
        self._execute(plan, version, node_pb2.NodeState(version=version), start, step, suffix)
        self._totals = pending
        self.overlay = overlay
        log.info("workload cgroups changed: redirects now programmed: %s", sorted(
            {redirect_name(t.service) for k, t in overlay.items() if k.table == Table.REDIRECT}) or "none")
        self._judge_open_sockets(step.given, step, found, f"v{version}-policy{suffix}")
        self._take_over(created, plan, step, suffix)
        return True

    def _live(self, given: NodePolicy, resolved: Mapping) -> dict:
        """The redirects to program: those with a local workload on the node."""
        return live_redirects(given.redirects, lambda name: resolved.get(name) is not None)

    def _judge_open_sockets(self, before: NodePolicy, step: PolicyStep, found: list[str],
                            job_id: str = "") -> None:
        """Once a step is written and the services it goes with kept: when
        the policy changed (workloads, sets) or workloads' cgroups were found
        (their processes' sockets were never judged), have the terminations
        destroy the open sockets the new policy denies. The job is built on
        their worker: it compiles the new sets and walks the workloads'
        cgroup trees, which applying and acknowledging must not wait for.
        job_id: "" for the state's (v<version>-policy, the same on every
        node)."""
        after = step.given
        if not found and before.workloads == after.workloads and before.policy_sets == after.policy_sets:
            return
        version, services = self.applied_version, list(self.services.values())
        cgroups, terminations = self.policy.cgroups, self.terminations
        # Only cgroups the step found: a workload not programmed loses nothing.
        paths = {name: after.specs[name].cgroup for name, c in step.resolved.items() if c is not None}
        policy, set_ids, wids = self.policy, dict(step.ids.sets), dict(step.ids.workloads)

        def judge() -> None:
            ids = {name: cgroups.tree(path) for name, path in paths.items()}
            # The kernel judges by the maps: only sets whose id still names
            # them there (a set gone since may have left its id to another).
            now = policy.ids.sets
            kernel_ids = {name: i for name, i in set_ids.items() if now.get(name) == i}
            # Likewise the workload ids what the DNS learner learned is keyed by.
            now_w = policy.ids.workloads
            workload_ids = {name: i for name, i in wids.items() if now_w.get(name) == i}
            terminations.after_policy_change(_node_state(version, (), before), _node_state(version, services, after),
                                             ids, job_id=job_id, workloads=found, set_ids=kernel_ids,
                                             workload_ids=workload_ids)
        terminations.later(judge)

    def _take_over(self, created: list, plan: Plan, step: PolicyStep, suffix: str = "") -> None:
        """Once redirects are created (created: their redirect-table
        frontends, new in the maps, _created_redirects), have the
        terminations destroy the open sockets they take over
        (redirect_desired.taken_over), so that clients reconnect to the
        local workloads. Built on the terminations' worker: it walks the
        exempt and bypassing workloads' cgroup trees."""
        if not created:
            return
        frontend_ids, addresses, redirects = [], [], set()
        for k in created:
            svc = plan.frontend(k.in_table(Table.SERVICE))
            if svc is None:
                continue
            if svc.placeholder:
                addresses.append(svc.key)
            else:
                frontend_ids.append(svc.id)
            redirects.add(redirect_name(plan.frontend(k).service))
        given = step.given
        keep = {n for r in redirects if r in given.redirects for n in given.redirects[r].exempt}
        keep |= {n for n, w in given.specs.items() if w.bypass}
        paths = {n: given.specs[n].cgroup for n in keep if step.resolved.get(n) is not None}
        cgroups, terminations = self.policy.cgroups, self.terminations
        job_id = f"v{self.applied_version}-{REDIRECT_TRIGGER}{suffix}"
        names = ", ".join(sorted(r for r in redirects if r))

        def build() -> None:
            kept = {cg for path in paths.values() for cg in cgroups.tree(path)}
            terminations.submit(RedirectJob(job_id, names, tuple(frontend_ids), tuple(addresses), frozenset(kept)))
        terminations.later(build)

    def _learner_before(self, step: PolicyStep) -> None:
        """Make before break: the learner's programs run before the FQDN
        entries they serve are written."""
        if self.learner_hooks is not None:
            self.learner_hooks.before(step.plan.result.fqdn)

    def _learner_after(self) -> None:
        """...and leave once what the maps hold has no FQDN rules."""
        if self.learner_hooks is not None:
            self.learner_hooks.after(self.policy.programmed.fqdn)

    def _write(self, plan: Plan, step: PolicyStep) -> None:
        self.writer.execute_policy(step.plan.before)
        self.writer.execute(plan, late=False)
        self.writer.execute_policy(step.plan.after)
        self.writer.execute_late(plan)

    def _execute(self, plan, version: int, state, start: float, step: PolicyStep,
                 suffix: str = "") -> ApplyResult:
        """Write a plan and its policy step, publish their result and tell the
        terminations what it removed (suffix: of the terminations' ids, for a
        change of this node's own). Until the writes succeed nothing the
        agent holds changes: a partial plan is applied to its state (in
        place, by the catalog) only then."""
        self._learner_before(step)
        try:
            self._write(plan, step)
        except Exception:
            log.exception("map update failed; restoring the previous state")
            self._restore(self._programmed, self.policy.programmed)
            self._learner_after()
            raise
        self.writer.write_version(version)
        self.policy.commit(step)
        self._learner_after()
        self.catalog.publish_workloads(self.policy.names())
        if plan.changes is None:
            self._programmed = plan.result
        before = self.catalog.publish(self._programmed, plan)
        self.terminations.after_apply(before, plan, state, suffix)
        self.applied_version = version
        metrics.programmed.labels("frontends").set(len(self._programmed.frontends))
        metrics.programmed.labels("backends").set(len(self._programmed.backends))
        written, removed = _policy_counts(step)
        result = ApplyResult(
            version=version,
            frontends_written=plan.count(PutMaster),
            frontends_removed=plan.count(DeleteMaster),
            backends_written=plan.count(PutBackend),
            backends_removed=plan.count(DeleteBackend),
            duration=time.monotonic() - start,
            policy_written=written,
            policy_removed=removed,
        )
        log.info("applied version %d: %s", version, result)
        return result

    def terminate(self, service: str, backends, dry_run: bool, job_id: str, wait: bool = True):
        """Terminate (or list) the flows of a service's backends on this node:
        the report, or None when not waiting (it goes to the terminations'
        listeners)."""
        return self.terminations.request(job_id, service, backends, dry_run, self.catalog, wait)

    def preview(self, job_id: str, preview) -> None:
        """A preview of a policy or redirect write (a sync_pb2.NodePolicyPreview:
        trigger, workloads, policy_sets, redirects): this node's policy part
        as the write would make it, checked as a state's is, with the
        services this node applied. The terminations then list, on their
        worker, the open sockets it would terminate and report them under
        `job_id`; a part the node cannot check or judge is reported as an
        error, never left unanswered. Nothing is applied, written or
        destroyed."""
        trigger = preview.trigger or "policy"
        try:
            with self._lock:
                if self.services is None:
                    self.terminations.preview_failed(job_id, trigger, "this node holds no full state yet (it "
                                                                      "restarted): nothing to judge against")
                    return
                services = [self.services[n] for n in sorted(self.services)]
                before = _node_state(self.applied_version, services, self.policy.given)
                after = node_pb2.NodeState(version=self.applied_version, services=services,
                                           workloads=preview.workloads, policy_sets=preview.policy_sets,
                                           redirects=preview.redirects)
                given = node_policy(after, self.policy.given)  # InvalidState naming the field
                paths = {name: spec.cgroup for name, spec in given.specs.items()}
                # A snapshot: the agent's own state changes in place.
                cgroups, programmed = self.policy.cgroups, self.catalog.current().programmed
        except InvalidState as e:
            self.terminations.preview_failed(job_id, trigger, f"the previewed state is not valid here: {e}")
            return
        except Exception as e:  # noqa: BLE001 - a bug costs this preview, answered, not the stream
            log.exception("preview %s failed", job_id)
            self.terminations.preview_failed(job_id, trigger, f"internal error: {e!r}")
            return
        self.terminations.preview(job_id, trigger, before, after,
                                  lambda: {name: cgroups.tree(path) for name, path in paths.items()}, programmed)

    def stats_parts(self) -> dict:
        """The parts of the node's statistics report (stats.StatsReporter)."""
        return self.statistics.report_parts(self.catalog)

    def close(self) -> None:
        self.terminations.close()
        self.statistics.close()

    def _restore(self, previous: Programmed, previous_policy: PolicyEntries) -> None:
        current = self.writer.read_programmed()
        policy = make_policy_plan(self.writer.read_policy(), previous_policy)
        plan = make_plan(current, targets_of(previous))
        self.writer.execute_policy(policy.before)
        self.writer.execute(plan, late=False)
        self.writer.execute_policy(policy.after)
        self.writer.execute_late(plan)


@contextlib.contextmanager
def _measured():
    start = time.monotonic()
    result = "ok"
    try:
        yield
    except (InvalidState, StateUnknown):
        result = "invalid"
        raise
    except Exception:
        result = "error"
        raise
    finally:
        metrics.applies.labels(result).inc()
        metrics.apply_seconds.observe(time.monotonic() - start)


def _node_state(version: int, services: Iterable[node_pb2.ServiceState], given: NodePolicy) -> node_pb2.NodeState:
    """A node state of these services and this policy, items by name."""
    out = node_pb2.NodeState(version=version, services=services)
    for kind, items in (("workloads", given.workloads), ("policy_sets", given.policy_sets),
                        ("redirects", given.redirects)):
        getattr(out, kind).extend(items[n] for n in sorted(items))
    return out


def _added(overlay: Mapping) -> list:
    """The targets of an overlay that are no service's: redirect tables and placeholders."""
    return [t for t in overlay.values() if t.key.table or t.flags & SvcFlag.NOT_SERVICE]


def _redirect_fields(state: node_pb2.NodeState) -> dict[str, str]:
    """Redirect name -> its field in a whole state, for errors."""
    return {r.name: f"redirects[{i}]" for i, r in enumerate(state.redirects)}


def _frontend_ids(frontend):
    """The programmed id of a frontend key (None: not programmed), from a
    lookup of its frontend (Plan.frontend, a Programmed's frontends.get)."""
    def frontend_id(key):
        fe = frontend(key)
        return fe.id if fe is not None else None
    return frontend_id


def _created_redirects(before: Programmed, plan: Plan) -> list:
    """The redirect-table frontends a plan creates (not in `before`, which
    it starts from): looked at before the plan is written, as a partial
    plan then changes `before` in place."""
    return [k for k in plan.frontend_keys() if k.table == Table.REDIRECT and k not in before.frontends]


def _policy_counts(step: PolicyStep) -> tuple[int, int]:
    """(entries written, entries removed) of a policy step."""
    plan = step.plan
    return (plan.count(PutVerdict) + plan.count(PutPrefix) + plan.count(PutWorkload),
            plan.count(DeleteVerdict) + plan.count(DeletePrefix) + plan.count(DeleteWorkload))


def targets_of(prog: Programmed) -> dict:
    """Targets that reproduce a programmed state exactly (same ids, same slots)."""
    out = {}
    for key, fe in prog.frontends.items():
        mine = sorted((b for b in prog.backends.values() if b.frontend_id == fe.id), key=lambda b: b.id)
        index = {b.id: i for i, b in enumerate(mine)}
        backends = tuple(BackendTarget(b.addr, b.port, b.state, 1) for b in mine)
        out[key] = FrontendTarget(fe.service, key, fe.selection, fe.affinity_timeout, backends,
                                  tuple(index[s] for s in fe.slots if s in index), fe.flags)
    return out


__all__ = ["Agent", "ApplyResult", "StateUnknown"]
