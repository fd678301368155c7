"""The node agent's core: owns the datapath and applies desired states to it,
all or nothing."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field, replace

from socklb.lb.errors import InvalidState
from socklb.lb.frontends import BackendTarget, FrontendTarget, service_targets
from socklb.lb.names import check_name
from socklb.observability import metrics
from socklb.v1 import node_pb2

from . import desired, features, layout, stats
from .desired import Limits, check_capacity_delta, frontend_targets, totals
from .loader import Datapath
from .maps import MapStore
from .plan import DeleteBackend, DeleteMaster, Programmed, PutBackend, PutMaster, make_plan
from .sockstats import aggregate
from .terminations import Job, TerminationService, removed_targets, request_job, to_report

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


class Agent:
    """With datapath None the agent validates, plans and keeps state but
    programs nothing: a node that "applies to nothing", for tests and the
    convergence benchmark."""

    def __init__(self, datapath: Datapath | None, node: str, terminate_method: str = "auto",
                 flow_method: str = "auto"):
        self.datapath = datapath
        self.node = node
        self.terminate_method = terminate_method
        self.flow_method = flow_method
        self.terminations: TerminationService | None = None  # once the datapath is loaded
        self.parts: features.Parts | None = None              # the iterator parts, probed at start
        self.limits = (Limits(services=datapath.capacity.services, backends=datapath.capacity.backends)
                       if datapath is not None else Limits())
        self._lock = threading.Lock()
        self.store: MapStore | None = None
        self.programmed = Programmed()
        # Services of the last applied state by name; None after a restart
        # until a full state arrives (the maps hold addresses, not names and
        # weights). With them the targets, and which service owns which
        # frontend, so that a delta is checked and planned for what it
        # touches only.
        self.services: dict[str, node_pb2.ServiceState] | None = None
        self.targets: dict = {}
        self.keys_of: dict[str, tuple] = {}
        self._totals = (0, 0)
        self._pending_totals = (0, 0)
        self.applied_version = 0

    def start(self) -> None:
        if self.datapath is None:
            return
        self.datapath.load()
        self.store = MapStore(self.datapath.maps)
        self.programmed = self.store.read_programmed()
        self.applied_version = self.store.meta_get(layout.Meta.VERSION)
        log.info("programmed state read back: %d frontends, %d backends, version %d",
                 len(self.programmed.frontends), len(self.programmed.backends), self.applied_version)
        # Each optional kernel feature is probed once, here: the duties
        # (flows, termination, socket statistics) take their way from the
        # answers, and one refused feature leaves the others running.
        self.parts = features.load(self.datapath.pin_dir, self.flow_method, self.terminate_method)
        self.terminations = TerminationService(
            self.node, self.parts.terminator, self.parts.errors.get("sock_destroy", "").removeprefix("none: "))
        log.info("kernel features: %s", self.parts.features.summary())

    def capabilities(self) -> dict[str, str]:
        """The probed kernel features and each duty's way (empty without a datapath)."""
        return self.parts.features.capabilities() if self.parts is not None else {}

    @property
    def applied(self) -> node_pb2.NodeState | None:
        """The last applied state, or None when the node holds no full state."""
        return self.state() if self.services is not None else None

    def state(self) -> node_pb2.NodeState:
        with self._lock:
            out = node_pb2.NodeState(version=self.applied_version)
            for name in sorted(self.services or {}):
                out.services.append(self.services[name])
            return out

    def apply(self, state: node_pb2.NodeState, isolate: bool = False) -> ApplyResult:
        """Validate, plan and write; on any error the maps are as before.

        isolate: a state that is invalid as a whole is applied without the
        services that cannot be (they stay at their previous version, see
        desired.isolate; ApplyResult.rejected names them), so one bad service
        does not hold back every other change. Only where the node holds its
        previous state: after a restart it cannot tell what to keep."""
        with _measured():
            start = time.monotonic()
            rejected: dict[str, str] = {}
            try:
                targets = frontend_targets(state, self.limits)  # raises InvalidState, nothing touched
            except InvalidState:
                if not isolate or self.services is None:
                    raise
                state, rejected = desired.isolate(state, self.services, self.limits)
                targets = frontend_targets(state, self.limits)
            with self._lock:
                plan = make_plan(self.programmed, targets)
                result = self._execute(plan, state.version, state, start)
                self.services = {s.name: s for s in state.services}
                self.targets = targets
                keys: dict[str, list] = {}
                for k, t in targets.items():
                    keys.setdefault(t.service, []).append(k)
                self.keys_of = {n: tuple(v) for n, v in keys.items()}
                self._totals = totals(targets.values())
                if rejected:
                    log.error("applied version %d without %d service(s) it cannot take: %s", state.version,
                              len(rejected), "; ".join(rejected.values()))
                return replace(result, rejected=rejected)

    def apply_delta(self, delta: node_pb2.NodeStateDelta) -> ApplyResult:
        with _measured():
            return self._apply_delta(delta)

    def _apply_delta(self, delta: node_pb2.NodeStateDelta) -> ApplyResult:
        start = time.monotonic()
        with self._lock:
            if self.services is None:
                raise StateUnknown("this node has not received a full state since it started; "
                                   "send a full state")
            changed, new_targets = self._check_delta(delta)
            old_keys = {k for name in changed for k in self.keys_of.get(name, ())}
            plan = make_plan(self.programmed, new_targets, only=old_keys | set(new_targets))
            upserts = node_pb2.NodeState(version=delta.version, services=delta.upserts)
            result = self._execute(plan, delta.version, upserts, start)
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

    def _execute(self, plan, version: int, state, start: float) -> ApplyResult:
        if self.store is not None:
            try:
                self.store.execute(plan)
            except Exception:
                log.exception("map update failed; restoring the previous state")
                self._restore(self.programmed)
                raise
            self.store.meta_set(layout.Meta.VERSION, version)
        before, self.programmed = self.programmed, plan.result
        self._terminate_removed(before, plan, state)
        self.applied_version = version
        metrics.programmed.labels("frontends").set(len(self.programmed.frontends))
        metrics.programmed.labels("backends").set(len(self.programmed.backends))
        result = ApplyResult(
            version=version,
            frontends_written=plan.count(PutMaster),
            frontends_removed=plan.count(DeleteMaster),
            backends_written=plan.count(PutBackend),
            backends_removed=plan.count(DeleteBackend),
            duration=time.monotonic() - start,
        )
        log.info("applied version %d: %s", version, result)
        return result

    def _terminate_removed(self, before: Programmed, plan, state) -> None:
        if self.terminations is None:
            return
        by_id = None
        for op in plan.ops:
            if isinstance(op, DeleteBackend) and op.id in before.backends:
                if by_id is None:
                    by_id = {f.id: f for f in before.frontends.values()}
                b = before.backends[op.id]
                fe = by_id.get(b.frontend_id)
                if fe is not None:
                    self.terminations.graveyard.bury(fe.service, fe.id, b.id,
                                                     (layout.addr_text(b.addr), b.port))
        for job in removed_targets(before, plan, state, state.version):
            self.terminations.submit(job)

    def terminate(self, service: str, backends, dry_run: bool, job_id: str, wait: bool = True):
        """Terminate (or list) the flows of a service's backends on this node."""
        with self._lock:
            job = request_job(job_id, service, backends, dry_run, self.programmed,
                              self.terminations.graveyard) if self.terminations else None
        if job is None:
            return to_report(Job(job_id, service, "request", dry_run, (), {}), self.node, None,
                             error="this node programs no datapath")
        if wait:
            return self.terminations.run_now(job)
        self.terminations.run_later(job)
        return None

    def counters(self) -> node_pb2.Counters:
        """The datapath's counters, summed over CPUs (zero without a datapath)."""
        if self.store is None:
            return node_pb2.Counters()
        c = self.store.counters_sum()
        C = layout.Counter
        return node_pb2.Counters(
            translations=c[C.TRANSLATED], affinity_hits=c[C.AFFINITY_HIT], affinity_misses=c[C.AFFINITY_MISS],
            no_backend=c[C.NO_BACKEND], policy_denies=c[C.POLICY_DENY], rev_nat_hits=c[C.RNAT_HIT],
            rev_nat_misses=c[C.RNAT_MISS], rev_nat_cleaned=c[C.RNAT_CLEANED])

    def _part(self, duty: str):
        part = getattr(self.parts, duty, None) if self.parts is not None else None
        if part is None:
            why = self.parts.errors.get(duty, "not loaded") if self.parts is not None else "no datapath"
            raise features.Unavailable(why.removeprefix("none: "))
        return part

    def flow_dump(self):
        """Every live flow record on the node (flows.FlowDump)."""
        return self._part("flows").read()

    def flow_counts(self) -> list:
        """Open flows per service and backend (sync_pb2.FlowCount)."""
        counted = self._part("flows").count()
        with self._lock:
            names = {fe.id: fe.service for fe in self.programmed.frontends.values()}
        return stats.flow_counts(counted.counts, names)

    def socket_stats(self) -> list:
        """Socket statistics of load-balanced flows, per service and backend."""
        collector = self._part("socket_stats")
        with self._lock:
            names = {}
            if self.terminations is not None:
                for (fid, bid), (svc, name) in self.terminations.graveyard.items():
                    names[(fid, bid)] = (svc, *name)
            by_id = {fe.id: fe for fe in self.programmed.frontends.values()}
            for b in self.programmed.backends.values():
                fe = by_id.get(b.frontend_id)
                if fe is not None:
                    names[(fe.id, b.id)] = (fe.service, layout.addr_text(b.addr), b.port)
        return aggregate(collector.collect(), names)

    def stats_parts(self) -> dict:
        """The parts of the node's statistics report (stats.StatsReporter);
        none without a datapath."""
        if self.datapath is None:
            return {}
        return {"counters": self.counters, "flows": self.flow_counts, "socket_stats": self.socket_stats}

    def close(self) -> None:
        if self.terminations is not None:
            self.terminations.close()
        if self.parts is not None:
            self.parts.close()

    def _restore(self, previous: Programmed) -> None:
        current = self.store.read_programmed()
        plan = make_plan(current, targets_of(previous))
        self.store.execute(plan)


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


def targets_of(prog: Programmed) -> dict:
    """Targets that reproduce a programmed state exactly (same ids, same slots)."""
    out = {}
    for key, fe in prog.frontends.items():
        mine = sorted((b for b in prog.backends.values() if b.frontend_id == fe.id), key=lambda b: b.id)
        index = {b.id: i for i, b in enumerate(mine)}
        backends = tuple(BackendTarget(b.addr, b.port, b.state, 1) for b in mine)
        out[key] = FrontendTarget(fe.service, key, fe.selection, fe.affinity_timeout, backends,
                                  tuple(index[s] for s in fe.slots if s in index))
    return out


__all__ = ["Agent", "ApplyResult", "StateUnknown"]
