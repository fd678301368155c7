"""When and what the node terminates, and how it reports it.

Triggers:
  - a state change removes backends (or whole frontends): their flows die,
    except backends the service lists in keep_flows (removed with keep_sockets);
  - an explicit request (admin API, or the control plane's TerminateCommand).
TerminationService runs the work on one worker thread, after the maps were
updated, so applying and acknowledging a state never waits for it, and a
client that reconnects is balanced to a live backend. MemoryTerminations is
the part of a node whose maps are in memory (writer.MemoryMapWriter): it
keeps the jobs and destroys nothing.
"""
from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from google.protobuf import timestamp_pb2
from opentelemetry.trace import Status, StatusCode

from socklb.lb import protocols
from socklb.lb.addresses import addr_text, canonical_address, join_host_port
from socklb.observability import metrics, tracing
from socklb.v1 import node_pb2

from .catalog import Catalog, Index
from .plan import DeleteBackend, DeleteMaster, Plan
from .termtypes import Target

log = logging.getLogger(__name__)

MAX_REPORTED_SOCKETS = 100
MAX_DRY_RUN_SOCKETS = 1000  # a dry run lists sockets, bounded: the counts stay exact


@dataclass(frozen=True)
class Job:
    id: str
    service: str
    trigger: str
    dry_run: bool
    # What the run looks for; backend 0 = every flow of the frontend.
    targets: tuple[Target, ...]
    # What each target is, for the report: Target -> (address, port).
    names: dict[Target, tuple[str, int]]
    # W3C context of what caused the job (the node's apply span, the control
    # plane's command): the job's "terminate" span is its child.
    trace_context: dict | None = None
    # Every backend (address, port) the targets can point at, or None when
    # unknown: lets the iterators skip other sockets before reading their
    # flow record (see Terminator.run).
    dsts: tuple | None = None


def removed_targets(before: Index, plan: Plan, state: node_pb2.NodeState, version: int) -> list[Job]:
    """Jobs for the flows a plan orphans: one per service, trigger by cause.
    before: the state the plan started from."""
    gone_frontends = {op.key for op in plan.ops if isinstance(op, DeleteMaster)}
    gone_backends = [op.id for op in plan.ops if isinstance(op, DeleteBackend)]
    if not gone_frontends and not gone_backends:
        return []
    per_service: dict[str, dict] = {}
    for key in gone_frontends:
        fe = before.programmed.frontends[key]
        per_service.setdefault(fe.service, {})[Target.frontend(fe.id)] = (str(key), 0)
    keep = {s.name: {_norm(k.address, k.port) for k in s.keep_flows} for s in state.services if s.keep_flows}
    for backend_id in gone_backends:
        b = before.programmed.backends.get(backend_id)
        fe = before.frontend(b.frontend_id) if b else None
        if b is None or fe is None or fe.key in gone_frontends:
            continue  # covered by the whole-frontend target
        addr = addr_text(b.addr)
        if (addr, b.port) in keep.get(fe.service, ()):
            continue
        per_service.setdefault(fe.service, {})[Target(fe.id, b.id)] = (addr, b.port)
    names = {s.name for s in state.services}

    def dsts(t: dict) -> tuple | None:
        # A whole frontend may still have flows to backends removed long ago
        # (kept with keep_sockets): no prefilter then.
        if any(target.backend_id == 0 for target in t):
            return None
        return tuple(sorted(t.values()))
    return [Job(id=f"v{version}-{svc}", service=svc,
                trigger="backend-removed" if svc in names else "service-removed",
                dry_run=False, targets=tuple(sorted(t)), names=t, dsts=dsts(t))
            for svc, t in sorted(per_service.items())]


def _norm(address: str, port: int) -> tuple[str, int]:
    return canonical_address(address), port


def request_job(job_id: str, service: str, backends, dry_run: bool, catalog: Catalog) -> Job:
    """A job for an explicit request: the service's frontends, and the
    backends by address (also recently removed ones)."""
    index = catalog.current()
    frontends = index.of_service(service)
    wanted = [(b.address, b.port) for b in backends]
    removed = catalog.removed(service)
    targets: dict = {}
    if not wanted:
        for fe in frontends:
            targets[Target.frontend(fe.id)] = (str(fe.key), 0)
        for (fid, bid), name in removed.items():
            targets.setdefault(Target(fid, bid), (name.address, name.port))
    else:
        norm = {_norm(a, p) for a, p in wanted}
        ids = {fe.id for fe in frontends}
        for b in index.programmed.backends.values():
            name = (addr_text(b.addr), b.port)
            if b.frontend_id in ids and name in norm:
                targets[Target(b.frontend_id, b.id)] = name
        for (fid, bid), name in removed.items():
            if (name.address, name.port) in norm:
                targets.setdefault(Target(fid, bid), (name.address, name.port))
    whole = any(target.backend_id == 0 for target in targets)
    dsts = None if whole else tuple(sorted(set(targets.values())))
    return Job(job_id, service, "request", dry_run, tuple(sorted(targets)), targets, dsts=dsts)


def to_report(job: Job, node: str, rep=None, error: str = "") -> node_pb2.TerminationReport:
    at = timestamp_pb2.Timestamp()
    at.GetCurrentTime()
    out = node_pb2.TerminationReport(id=job.id, node=node, service=job.service, trigger=job.trigger,
                                     dry_run=job.dry_run, error=error, at=at)
    if rep is None:
        return out
    out.method = rep.method
    out.found, out.destroyed, out.failed = rep.found, rep.destroyed, rep.failed
    out.duration_seconds = rep.duration
    out.namespaces = rep.netns_scanned
    per_backend: dict[tuple[str, int], list[int]] = {}
    for t, c in rep.per_target.items():
        name = job.names.get(t)
        if name is None:
            continue
        acc = per_backend.setdefault(name, [0, 0])
        acc[0] += c.found
        acc[1] += c.destroyed
    for (addr, port), (found, destroyed) in sorted(per_backend.items()):
        out.backends.append(node_pb2.BackendTermination(address=addr, port=port, found=found, destroyed=destroyed))
    limit = MAX_DRY_RUN_SOCKETS if job.dry_run else MAX_REPORTED_SOCKETS
    for s in rep.sockets[:limit]:
        ts = node_pb2.TerminatedSocket(netns=s.netns, cookie=s.cookie, protocol=protocols.pb_of_name(s.proto),
                                       state=protocols.state_name(s.proto, s.state),
                                       source=join_host_port(s.src, s.sport), destination=join_host_port(s.dst, s.dport))
        if s.result is not None:
            ts.result = s.result
        out.sockets.append(ts)
    return out


class Terminations(ABC):
    """A node's termination part: runs the jobs an apply causes (after_apply)
    and explicit requests (request), keeps the recent reports and hands each
    to the listeners (the sync client sends them to the control plane)."""

    def __init__(self, node: str):
        self.node = node
        self._listeners: list[Callable[[node_pb2.TerminationReport], None]] = []
        self._recent: list[node_pb2.TerminationReport] = []

    def listen(self, listener: Callable[[node_pb2.TerminationReport], None]) -> None:
        self._listeners.append(listener)

    def recent(self) -> list[node_pb2.TerminationReport]:
        """The last 100 reports, oldest first."""
        return list(self._recent)

    def after_apply(self, before: Index, plan: Plan, state: node_pb2.NodeState) -> None:
        """Terminate the flows a plan orphaned (before: the state it started from)."""
        for job in removed_targets(before, plan, state, state.version):
            self.submit(job)

    def request(self, job_id: str, service: str, backends, dry_run: bool, catalog: Catalog,
                wait: bool = True) -> node_pb2.TerminationReport | None:
        """Terminate (or list) the flows of a service's backends on this
        node: the report, or None when not waiting (it goes to the listeners)."""
        job = request_job(job_id, service, backends, dry_run, catalog)
        if wait:
            return self.run_now(job)
        self.run_later(job)
        return None

    def _remember(self, report: node_pb2.TerminationReport) -> None:
        self._recent = (self._recent + [report])[-100:]

    def _tell(self, report: node_pb2.TerminationReport) -> None:
        for listener in list(self._listeners):
            try:
                listener(report)
            except Exception:
                log.exception("termination report listener failed")

    @abstractmethod
    def submit(self, job: Job) -> None:
        """Run in the background if there is anything to do."""

    @abstractmethod
    def run_later(self, job: Job) -> None:
        """Run in the background and report even when nothing matched."""

    @abstractmethod
    def run_now(self, job: Job) -> node_pb2.TerminationReport:
        """Run a job and wait for its report."""

    @abstractmethod
    def capability(self) -> str:
        """"kfunc", "netlink", or "none: <why>"."""

    def close(self) -> None:
        pass


class TerminationService(Terminations):
    """Runs termination jobs on one worker with the node's Terminator (loaded
    at start, see features.py; closed with the service), or reports each job
    as not possible with `unavailable` when the node has no way to destroy
    sockets."""

    def __init__(self, node: str, terminator=None, unavailable: str = ""):
        super().__init__(node)
        self._terminator = terminator
        self._unavailable = unavailable or ("" if terminator is not None else "no terminator")
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="terminations", daemon=True)
        self._thread.start()

    def capability(self) -> str:
        t = self._terminator
        return t.method.value if t is not None else f"none: {self._unavailable}"

    def submit(self, job: Job) -> None:
        if job.targets:
            self._jobs.put((_traced(job), None))

    def run_later(self, job: Job) -> None:
        self._jobs.put((_traced(job), None))

    def run_now(self, job: Job) -> node_pb2.TerminationReport:
        """Run a job on the worker and wait for its report."""
        done: queue.Queue = queue.Queue(1)
        self._jobs.put((_traced(job), done))
        return done.get()

    def _work(self) -> None:
        while True:
            job, done = self._jobs.get()
            if job is None:
                return
            span = _start_span(job)
            t = self._terminator
            if not job.targets:
                report = to_report(job, self.node, None)
            elif t is None:
                report = to_report(job, self.node, None, error=f"cannot terminate: {self._unavailable}")
            else:
                try:
                    rep = t.run(list(job.targets), dry_run=job.dry_run,
                                dsts=job.dsts, max_records=MAX_DRY_RUN_SOCKETS if job.dry_run else MAX_REPORTED_SOCKETS)
                    report = to_report(job, self.node, rep)
                    if not job.dry_run:
                        metrics.terminations.labels(job.trigger, rep.method).inc()
                        metrics.terminated_sockets.labels(rep.method).inc(rep.destroyed)
                        metrics.termination_seconds.observe(rep.duration)
                    log.info("termination %s (%s, %s): %s", job.id, job.service, job.trigger, rep.summary())
                except Exception as e:  # a failed run must not kill the worker
                    log.exception("termination %s failed", job.id)
                    report = to_report(job, self.node, None, error=str(e))
            self._remember(report)
            _end_span(span, report)
            if done is not None:
                done.put(report)
            self._tell(report)

    def close(self) -> None:
        self._jobs.put((None, None))
        self._thread.join(timeout=5)
        if self._terminator is not None:
            self._terminator.close()


class MemoryTerminations(Terminations):
    """The termination part of a node whose maps are in memory: it has no
    sockets, destroys nothing and keeps the jobs it is given (`jobs`, the
    last MEMORY_JOBS) for tests to read. Jobs an apply causes are kept
    silently; an explicit request is answered with a report that says the
    node cannot terminate."""

    MEMORY_JOBS = 100
    WHY = "this node programs no datapath (its maps are in memory)"

    def __init__(self, node: str):
        super().__init__(node)
        self.jobs: deque[Job] = deque(maxlen=self.MEMORY_JOBS)

    def capability(self) -> str:
        return f"none: {self.WHY}"

    def submit(self, job: Job) -> None:
        if job.targets:
            self.jobs.append(job)

    def run_later(self, job: Job) -> None:
        self.run_now(job)

    def run_now(self, job: Job) -> node_pb2.TerminationReport:
        self.jobs.append(job)
        report = to_report(job, self.node, None, error=self.WHY)
        self._remember(report)
        self._tell(report)
        return report


def _traced(job: Job) -> Job:
    """The job with the submitter's trace context (its thread's current span)."""
    if job.trace_context is not None:
        return job
    carrier = tracing.inject()
    return replace(job, trace_context=carrier) if carrier else job


def _start_span(job: Job):
    return tracing.TRACER.start_span("terminate", context=tracing.extract(job.trace_context), attributes={
        "socklb.termination": job.id, "socklb.service": job.service, "socklb.trigger": job.trigger,
        "socklb.dry_run": job.dry_run, "socklb.targets": len(job.targets)})


def _end_span(span, report: node_pb2.TerminationReport) -> None:
    if span.is_recording():
        span.set_attributes({"socklb.method": report.method, "socklb.found": report.found,
                             "socklb.destroyed": report.destroyed, "socklb.failed": report.failed,
                             "socklb.namespaces": report.namespaces})
        if report.error:
            span.set_status(Status(StatusCode.ERROR, report.error))
    span.end()


__all__ = ["Job", "MemoryTerminations", "TerminationService", "Terminations", "removed_targets", "request_job",
           "to_report"]
