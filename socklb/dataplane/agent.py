"""The node agent's core: owns the datapath and applies desired states to it,
all or nothing."""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass

from socklb.observability import metrics
from socklb.v1 import node_pb2

from . import layout
from .desired import FrontendTarget, InvalidState, Limits, frontend_targets, merge_delta
from .loader import Datapath
from .maps import MapStore
from .plan import DeleteBackend, DeleteMaster, Programmed, PutBackend, PutMaster, make_plan

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


class Agent:
    """With datapath None the agent validates, plans and keeps state but
    programs nothing: a node that "applies to nothing", for tests and the
    convergence benchmark."""

    def __init__(self, datapath: Datapath | None, node: str, terminate_method: str = "auto"):
        self.datapath = datapath
        self.node = node
        self.terminate_method = terminate_method
        self.terminations = None  # TerminationService, once the datapath is loaded
        self._stats_collector = None
        self.limits = (Limits(services=datapath.capacity.services, backends=datapath.capacity.backends)
                       if datapath is not None else Limits())
        self._lock = threading.Lock()
        self.store: MapStore | None = None
        self.programmed = Programmed()
        # Services of the last applied state; None after a restart until a
        # full state arrives (the maps hold addresses, not names and weights).
        self.applied: node_pb2.NodeState | None = None
        self.applied_version = 0

    def start(self) -> None:
        if self.datapath is None:
            return
        self.datapath.load()
        from .terminations import TerminationService

        self.terminations = TerminationService(self.datapath.pin_dir, self.node, self.terminate_method)
        # Build and load the termination programs now (the first build runs
        # clang for seconds), not when the first backend goes away.
        threading.Thread(target=self.terminations.capability, name="terminate-warmup", daemon=True).start()
        self.store = MapStore(self.datapath.maps)
        self.programmed = self.store.read_programmed()
        self.applied_version = self.store.meta_get(layout.Meta.VERSION)
        log.info("programmed state read back: %d frontends, %d backends, version %d",
                 len(self.programmed.frontends), len(self.programmed.backends), self.applied_version)

    def state(self) -> node_pb2.NodeState:
        with self._lock:
            if self.applied is not None:
                return node_pb2.NodeState.FromString(self.applied.SerializeToString())
            return node_pb2.NodeState(version=self.applied_version)

    def apply(self, state: node_pb2.NodeState) -> ApplyResult:
        """Validate, plan and write; on any error the maps are as before."""
        with _measured():
            start = time.monotonic()
            targets = frontend_targets(state, self.limits)  # raises InvalidState, nothing touched
            with self._lock:
                return self._apply_locked(state, targets, start)

    def apply_delta(self, delta: node_pb2.NodeStateDelta) -> ApplyResult:
        with _measured():
            return self._apply_delta(delta)

    def _apply_delta(self, delta: node_pb2.NodeStateDelta) -> ApplyResult:
        start = time.monotonic()
        with self._lock:
            if self.applied is None:
                raise StateUnknown("this node has not received a full state since it started; "
                                   "send a full state")
            merged = merge_delta(self.applied, delta)
            targets = frontend_targets(merged, self.limits)
            return self._apply_locked(merged, targets, start)

    def _apply_locked(self, state, targets: dict, start: float) -> ApplyResult:
        plan = make_plan(self.programmed, targets)
        if self.store is not None:
            try:
                self.store.execute(plan)
            except Exception:
                log.exception("map update failed; restoring the previous state")
                self._restore(self.programmed)
                raise
            self.store.meta_set(layout.Meta.VERSION, state.version)
        before, self.programmed = self.programmed, plan.result
        self._terminate_removed(before, plan, state)
        self.applied = node_pb2.NodeState.FromString(state.SerializeToString())
        self.applied_version = state.version
        metrics.programmed.labels("frontends").set(len(self.programmed.frontends))
        metrics.programmed.labels("backends").set(len(self.programmed.backends))
        result = ApplyResult(
            version=state.version,
            frontends_written=plan.count(PutMaster),
            frontends_removed=plan.count(DeleteMaster),
            backends_written=plan.count(PutBackend),
            backends_removed=plan.count(DeleteBackend),
            duration=time.monotonic() - start,
        )
        log.info("applied version %d: %s", state.version, result)
        return result

    def _terminate_removed(self, before: Programmed, plan, state) -> None:
        if self.terminations is None:
            return
        from .terminations import removed_targets

        for op in plan.ops:
            if isinstance(op, DeleteBackend) and op.id in before.backends:
                b = before.backends[op.id]
                fe = next((f for f in before.frontends.values() if f.id == b.frontend_id), None)
                if fe is not None:
                    self.terminations.graveyard.bury(fe.service, fe.id, b.id,
                                                     (layout.unpack_addr(layout.pack_addr(b.addr)), b.port))
        for job in removed_targets(before, plan, state, state.version):
            self.terminations.submit(job)

    def terminate(self, service: str, backends, dry_run: bool, job_id: str, wait: bool = True):
        """Terminate (or list) the flows of a service's backends on this node."""
        from .terminations import request_job, to_report

        with self._lock:
            job = request_job(job_id, service, backends, dry_run, self.programmed,
                              self.terminations.graveyard) if self.terminations else None
        if job is None:
            from .terminations import Job

            return to_report(Job(job_id, service, "request", dry_run, (), {}), self.node, None,
                             error="this node programs no datapath")
        if wait:
            return self.terminations.run_now(job)
        self.terminations.run_later(job)
        return None

    def socket_stats(self) -> list:
        """Socket statistics of load-balanced flows, per service and backend."""
        if self.datapath is None:
            return []
        from .sockstats import SocketStatsCollector, aggregate

        if self._stats_collector is None:
            self._stats_collector = SocketStatsCollector(self.datapath.pin_dir)
        with self._lock:
            names = {}
            if self.terminations is not None:
                for (fid, bid), (svc, name) in self.terminations.graveyard.items():
                    names[(fid, bid)] = (svc, *name)
            by_id = {fe.id: fe for fe in self.programmed.frontends.values()}
            for b in self.programmed.backends.values():
                fe = by_id.get(b.frontend_id)
                if fe is not None:
                    names[(fe.id, b.id)] = (fe.service, layout.unpack_addr(layout.pack_addr(b.addr)), b.port)
        return aggregate(self._stats_collector.collect(), names)

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
    from .desired import BackendTarget

    out = {}
    for key, fe in prog.frontends.items():
        mine = sorted((b for b in prog.backends.values() if b.frontend_id == fe.id), key=lambda b: b.id)
        index = {b.id: i for i, b in enumerate(mine)}
        backends = tuple(BackendTarget(b.addr, b.port, b.state, 1) for b in mine)
        out[key] = FrontendTarget(fe.service, key, fe.selection, fe.affinity_timeout, backends,
                                  tuple(index[s] for s in fe.slots if s in index))
    return out


__all__ = ["Agent", "ApplyResult", "InvalidState", "StateUnknown"]
