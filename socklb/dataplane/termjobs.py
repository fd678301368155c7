"""When and what the node terminates, and how it reports it.

Triggers:
  - a state change removes backends (or whole frontends): their flows die,
    except backends the service lists in keep_flows (removed with keep_sockets);
  - an explicit request (admin API, or the control plane's TerminateCommand);
  - a policy change (after_policy_change; policyjobs.py): the open sockets of
    the workloads it concerns that the new state denies, whatever they are
    connected to; its dry run, against a state not applied, only lists them;
  - a local redirect created (redirectjobs.py, the agent submits the job):
    the open sockets of its frontends that do not go to the local workloads;
    one deleted: the flows of its redirect-table frontend (removed_targets).
TerminationService runs the work on one worker thread, after the maps were
updated, so applying and acknowledging a state never waits for it, and a
client that reconnects is balanced to a live backend; what a policy job takes
to build runs there too (later). MemoryTerminations is the part of a node
whose maps are in memory (writer.MemoryMapWriter): it keeps the jobs and
destroys nothing.
"""
from __future__ import annotations

import logging
import queue
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from google.protobuf import timestamp_pb2
from opentelemetry.trace import Status, StatusCode

from socklb.lb import protocols
from socklb.lb.addresses import addr_text, canonical_address, join_host_port
from socklb.observability import metrics, tracing
from socklb.v1 import node_pb2

from .catalog import Catalog, Index
from .plan import Plan, Programmed
from .policyjobs import TRIGGER as POLICY, FqdnSource, LearnedReader, PolicyJob, PolicyRun, policy_job, run_policy_job
from .redirect_desired import TRIGGER as REDIRECT, redirect_name
from .redirectjobs import RedirectJob, RedirectRun, preview_job, preview_keep, run_redirect_job
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

    @property
    def empty(self) -> bool:
        return not self.targets


def removed_targets(before: Index, plan: Plan, state: node_pb2.NodeState, version: int,
                    suffix: str = "") -> list[Job]:
    """Jobs for the flows a plan orphans: one per service, trigger by cause.
    before: the state the plan started from; suffix: of the jobs' ids."""
    # Backends removed with their frontend are covered by its target: the others only.
    gone_frontends = set(plan.removed_frontends)
    gone_backends = sorted(plan.dropped_backends)
    if not gone_frontends and not gone_backends:
        return []
    per_service: dict[str, dict] = {}
    for key in gone_frontends:
        fe = before.programmed.frontends[key]
        if fe.placeholder:
            continue  # a redirect's stand-in for an address: it never translated anything
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
    def trigger(svc: str) -> str:
        if redirect_name(svc) is not None:
            return REDIRECT  # a redirect left (or a local workload of it): its flows move back
        return "backend-removed" if svc in names else "service-removed"

    def job_id(svc: str) -> str:
        r = redirect_name(svc)
        return (f"v{version}-{svc}" if r is None else f"v{version}-{REDIRECT}-{r}") + suffix
    return [Job(id=job_id(svc), service=redirect_name(svc) or svc, trigger=trigger(svc),
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


def _report(job_id: str, service: str, trigger: str, dry_run: bool, node: str,
            error: str = "") -> node_pb2.TerminationReport:
    """A report's heading, made now."""
    at = timestamp_pb2.Timestamp()
    at.GetCurrentTime()
    return node_pb2.TerminationReport(id=job_id, node=node, service=service, trigger=trigger, dry_run=dry_run,
                                      error=error, at=at)


def _socket_pb(netns: str, cookie: int, proto: str, state: int, source: str, destination: str,
               result: int | None) -> node_pb2.TerminatedSocket:
    ts = node_pb2.TerminatedSocket(netns=netns, cookie=cookie, protocol=protocols.pb_of_name(proto),
                                   state=protocols.state_name(proto, state), source=source,
                                   destination=destination)
    if result is not None:
        ts.result = result
    return ts


def to_report(job: Job, node: str, rep=None, error: str = "") -> node_pb2.TerminationReport:
    out = _report(job.id, job.service, job.trigger, job.dry_run, node, error)
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
        out.sockets.append(_socket_pb(s.netns, s.cookie, s.proto, s.state, join_host_port(s.src, s.sport),
                                      join_host_port(s.dst, s.dport), s.result))
    return out


@dataclass(frozen=True)
class PreviewJob(PolicyJob):
    """The policy job of a preview (PreviewPolicy, PreviewLocalRedirect): a
    dry run against a policy part the node was sent and never applies,
    reported under the preview's trigger."""

    preview_trigger: str = POLICY

    @property
    def trigger(self) -> str:  # type: ignore[override]
        return self.preview_trigger


def _served(state: node_pb2.NodeState, cgroup_ids: Mapping[str, Iterable[int]]) -> node_pb2.NodeState:
    """`state` with only the redirects the node would program: those with a
    local workload whose cgroup is on the node (the agent programs no other)."""
    out = node_pb2.NodeState()
    out.CopyFrom(state)
    del out.redirects[:]
    out.redirects.extend(r for r in state.redirects if any(cgroup_ids.get(w) for w in r.exempt))
    return out


def policy_report(job: PolicyJob, node: str, run: PolicyRun | None = None,
                  error: str = "") -> node_pb2.TerminationReport:
    """The report of a policy job: found = the open sockets its state denies
    (still open when they were destroyed), per destination as judged (in
    `backends`: a frontend's VIP, else the peer), and the sockets (their
    real peers), each with its workload and why the new state denies it."""
    out = _report(job.id, job.service, job.trigger, job.dry_run, node, error)
    if run is None:
        return out
    _cookie_report(out, job.dry_run, run.method, run.duration, run.listing.netns_scanned, run.destroyed,
                   [(c.socket, c.address, c.port, c) for c in run.condemned])
    return out


def redirect_report(job: RedirectJob, node: str, run: RedirectRun | None = None,
                    error: str = "") -> node_pb2.TerminationReport:
    """The report of a redirect creation's job: found = the sockets it took
    over (still open when they were destroyed), per destination as the
    application addressed it (the frontend), and the sockets."""
    out = _report(job.id, job.service, job.trigger, job.dry_run, node, error)
    if run is None:
        return out
    _cookie_report(out, job.dry_run, run.method, run.duration, run.listing.netns_scanned, run.destroyed,
                   [(s, *run.destination(s), None) for s in run.chosen])
    return out


def _cookie_report(out: node_pb2.TerminationReport, dry_run: bool, method: str, duration: float, namespaces: int,
                   destroyed, chosen: list) -> None:
    """Fill a report of sockets chosen from a listing and destroyed by
    cookie: chosen = (ListedSocket, destination address, port, the policy's
    Condemned or None) each."""
    out.method = method
    out.duration_seconds = duration
    out.namespaces = namespaces
    results = destroyed.results if destroyed is not None else {}
    if not dry_run:
        chosen = [c for c in chosen if c[0].cookie in results]
    per_destination: dict[tuple[str, int], list[int]] = {}
    for s, address, port, _ in chosen:
        result = results.get(s.cookie)
        acc = per_destination.setdefault((address, port), [0, 0])
        acc[0] += 1
        acc[1] += result == 0
        out.destroyed += result == 0
        out.failed += result is not None and result != 0
    out.found = len(chosen)
    for (addr, port), (found, n) in sorted(per_destination.items()):
        out.backends.append(node_pb2.BackendTermination(address=addr, port=port, found=found, destroyed=n))
    for s, _, _, why in chosen[:MAX_DRY_RUN_SOCKETS if dry_run else MAX_REPORTED_SOCKETS]:
        ts = _socket_pb(s.netns, s.cookie, s.protocol, s.state, s.source, s.destination, results.get(s.cookie))
        if why is not None:  # a policy's condemned socket: whose it is and why
            ts.workload, ts.reason = why.workload, why.reason
        out.sockets.append(ts)


class Terminations(ABC):
    """A node's termination part: runs the jobs an apply causes (after_apply)
    and explicit requests (request), keeps the recent reports and hands each
    to the listeners (the sync client sends them to the control plane)."""

    # Where a policy job reads what the DNS learner learned (dns.DnsLearner;
    # None: no learner, FQDN destinations judged conservatively).
    learned_reader: LearnedReader | None = None

    def __init__(self, node: str):
        self.node = node
        self._listeners: list[Callable[[node_pb2.TerminationReport], None]] = []
        self._recent: list[node_pb2.TerminationReport] = []

    def listen(self, listener: Callable[[node_pb2.TerminationReport], None]) -> None:
        self._listeners.append(listener)

    def recent(self) -> list[node_pb2.TerminationReport]:
        """The last 100 reports, oldest first."""
        return list(self._recent)

    def after_apply(self, before: Index, plan: Plan, state: node_pb2.NodeState, suffix: str = "") -> None:
        """Terminate the flows a plan orphaned (before: the state it started
        from; suffix: of the jobs' ids, for a change of the node's own)."""
        for job in removed_targets(before, plan, state, state.version, suffix):
            self.submit(job)

    def after_policy_change(self, before: node_pb2.NodeState, after: node_pb2.NodeState,
                            cgroup_ids: Mapping[str, Iterable[int]], dry_run: bool = False, wait: bool = False,
                            job_id: str = "", workloads: Iterable[str] = (),
                            set_ids: Mapping[str, int] | None = None,
                            workload_ids: Mapping[str, int] | None = None) -> node_pb2.TerminationReport | None:
        """Terminate the open sockets that `after` denies, of the workloads
        whose policy changed from `before` (see policyjobs.py); dry_run: list
        them, destroy nothing (`after` may be a state the node never
        applies: nothing is written).

        Call it after `after` is in the maps (new sockets already obey it),
        with cgroup_ids: workload name -> the ids of its cgroup and of every
        cgroup below it (cgroupids.workload_cgroup_ids), for at least the
        workloads of `after`; workloads: more to judge again (e.g. whose
        cgroup just appeared). job_id: default "v<after.version>-policy",
        the same on every node. wait: run now and return the report (a
        report with nothing found when there is nothing to look at); else
        the job runs on the worker, its report goes to the listeners, and
        None is returned. set_ids: set name -> kernel id, when `after` is
        the policy the maps hold: the kernel may judge (policyjobs.py).
        workload_ids: workload name -> id in the policy maps, when `after`
        is the policy the maps hold: FQDN destinations are judged by what
        the workloads learned (learned_reader).
        InvalidState (KeyError for a set the state lacks) when `after` is
        not a state the node could apply."""
        job_id = job_id or f"v{after.version}-{POLICY}"
        reader = self.learned_reader
        fqdn = FqdnSource(dict(workload_ids), reader) if workload_ids is not None and reader is not None else None
        job = policy_job(job_id, before, after, cgroup_ids, dry_run, workloads, set_ids, fqdn)
        if job is None:
            return _report(job_id, "", POLICY, dry_run, self.node) if wait else None
        if wait:
            return self.run_now(job)
        self.submit(job)
        return None

    def preview(self, job_id: str, trigger: str, before: node_pb2.NodeState, after: node_pb2.NodeState,
                cgroup_ids: Callable[[], Mapping[str, Iterable[int]]], programmed: Programmed) -> None:
        """The dry run of a preview: on the worker, list the open sockets that
        going from `before` (applied; `programmed` holds it) to `after` (a
        policy part the node was sent, checked, never applied) would end;
        destroy nothing. A change of redirects: the sockets the redirects
        that start would take over and the flows of those that end
        (redirectjobs.preview_job); else those of the workloads whose policy
        differs that `after` denies. cgroup_ids() (called there): as for
        after_policy_change. Always reported, under `trigger` and `job_id`:
        nothing found, the sockets, or the error that stopped it."""
        def work() -> None:
            try:
                ids = cgroup_ids()
                served = _served(after, ids)
                keep = {cg for name in preview_keep(before, served) for cg in ids.get(name, ())}
                moved = preview_job(job_id, before, served, programmed, keep)
                job = moved if moved is not None else policy_job(job_id, before, after, ids, dry_run=True)
            except Exception as e:  # noqa: BLE001 - the control plane is told, not left waiting
                log.warning("preview %s: cannot judge: %s", job_id, e)
                self.preview_failed(job_id, trigger, f"cannot judge the preview: {e}")
                return
            if job is None:  # nothing on this node to look at: reported as such
                job = PreviewJob(job_id, True, (), None, {}, preview_trigger=trigger)
            elif isinstance(job, PolicyJob):
                job = PreviewJob(job_id, True, job.workloads, job.evaluator, job.frontends, preview_trigger=trigger)
            self.run_later(job)
        self.later(work)

    def preview_failed(self, job_id: str, trigger: str, error: str) -> None:
        """Report a preview this node cannot run (dry run, nothing found)."""
        report = _report(job_id, "", trigger, True, self.node, error)
        self._remember(report)
        self._tell(report)

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
    def later(self, work: Callable[[], None]) -> None:
        """Run `work` in the background, after what was given before, in the
        caller's trace context (a job it submits is the caller's child):
        for what a job takes to build, e.g. after_policy_change, which
        compiles the new state's sets and walks the workloads' cgroups."""

    @abstractmethod
    def submit(self, job: Job | PolicyJob) -> None:
        """Run in the background if there is anything to do."""

    @abstractmethod
    def run_later(self, job: Job | PolicyJob) -> None:
        """Run in the background and report even when nothing matched."""

    @abstractmethod
    def run_now(self, job: Job | PolicyJob) -> node_pb2.TerminationReport:
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

    def later(self, work: Callable[[], None]) -> None:
        self._jobs.put((_Later(work, tracing.inject()), None))

    def submit(self, job: Job | PolicyJob) -> None:
        if not job.empty:
            self._jobs.put((_traced(job), None))

    def run_later(self, job: Job | PolicyJob) -> None:
        self._jobs.put((_traced(job), None))

    def run_now(self, job: Job | PolicyJob) -> node_pb2.TerminationReport:
        """Run a job on the worker and wait for its report."""
        done: queue.Queue = queue.Queue(1)
        self._jobs.put((_traced(job), done))
        return done.get()

    def _work(self) -> None:
        while True:
            job, done = self._jobs.get()
            if job is None:
                return
            if isinstance(job, _Later):
                job.run()
                continue
            span = _start_span(job)
            report = self._execute(job)
            self._remember(report)
            _end_span(span, report)
            if done is not None:
                done.put(report)
            self._tell(report)

    def _execute(self, job: Job | PolicyJob | RedirectJob) -> node_pb2.TerminationReport:
        policy = isinstance(job, PolicyJob)
        build = _builder(job)
        t = self._terminator
        if job.empty:
            return build(job, self.node, None)
        if t is None:
            return build(job, self.node, None, error=f"cannot terminate: {self._unavailable}")
        try:  # a failed run must not kill the worker
            if isinstance(job, RedirectJob):
                run = run_redirect_job(t, job)
                report, summary = redirect_report(job, self.node, run), run.summary()
            elif policy:
                run = run_policy_job(t, job)
                report, summary = policy_report(job, self.node, run), run.summary()
                _log_condemned(job, run)
            else:
                rep = t.run(list(job.targets), dry_run=job.dry_run, dsts=job.dsts,
                            max_records=MAX_DRY_RUN_SOCKETS if job.dry_run else MAX_REPORTED_SOCKETS)
                report, summary = to_report(job, self.node, rep), rep.summary()
        except Exception as e:
            log.exception("termination %s failed", job.id)
            return build(job, self.node, None, error=str(e))
        if not job.dry_run:
            metrics.terminations.labels(job.trigger, report.method).inc()
            metrics.terminated_sockets.labels(report.method).inc(report.destroyed)
            metrics.termination_seconds.observe(report.duration_seconds)
        what = _workload_names(job) if policy else job.service
        log.info("termination %s (%s, %s): %s", job.id, what, job.trigger, summary)
        return report

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

    def later(self, work: Callable[[], None]) -> None:
        _Later(work, tracing.inject()).run()  # at once: tests read the jobs right after the apply

    def submit(self, job: Job | PolicyJob) -> None:
        if not job.empty:
            self.jobs.append(job)

    def run_later(self, job: Job | PolicyJob) -> None:
        self.run_now(job)

    def run_now(self, job: Job | PolicyJob) -> node_pb2.TerminationReport:
        self.jobs.append(job)
        report = _builder(job)(job, self.node, None, error=self.WHY)
        self._remember(report)
        self._tell(report)
        return report


@dataclass(frozen=True)
class _Later:
    """Work for the worker (Terminations.later), with the trace context it
    was given in."""

    work: Callable[[], None]
    trace_context: dict | None

    def run(self) -> None:
        try:  # a failure must not kill the worker, nor fail an apply already written
            with tracing.attached(tracing.extract(self.trace_context)):
                self.work()
        except Exception:
            log.exception("termination work failed")


LOGGED_DENIALS = 20  # condemned sockets whose reason a policy job logs, one line each


def _workload_names(job: PolicyJob) -> str:
    names = [w.name for w in job.workloads]
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _log_condemned(job: PolicyJob, run: PolicyRun) -> None:
    """Why sockets were condemned, in the node's log as well: the first
    lines of a job there, next to what caused it."""
    for c in run.condemned[:LOGGED_DENIALS]:
        log.info("termination %s: %s socket %s -> %s of workload %s: %s", job.id, c.socket.protocol,
                 c.socket.source, c.destination, c.workload, c.reason)
    if len(run.condemned) > LOGGED_DENIALS:
        log.info("termination %s: %d more sockets denied", job.id, len(run.condemned) - LOGGED_DENIALS)


def _traced(job: Job | PolicyJob) -> Job | PolicyJob:
    """The job with the submitter's trace context (its thread's current span)."""
    if job.trace_context is not None:
        return job
    carrier = tracing.inject()
    return replace(job, trace_context=carrier) if carrier else job


def _builder(job):
    """The report builder of a job's kind."""
    if isinstance(job, RedirectJob):
        return redirect_report
    return policy_report if isinstance(job, PolicyJob) else to_report


def _start_span(job: Job | PolicyJob | RedirectJob):
    if isinstance(job, PolicyJob):
        size = {"socklb.workloads": len(job.workloads)}
    elif isinstance(job, RedirectJob):
        size = {"socklb.targets": len(job.frontend_ids) + len(job.addresses)}
    else:
        size = {"socklb.targets": len(job.targets)}
    return tracing.TRACER.start_span("terminate", context=tracing.extract(job.trace_context), attributes={
        "socklb.termination": job.id, "socklb.service": job.service, "socklb.trigger": job.trigger,
        "socklb.dry_run": job.dry_run, **size})


def _end_span(span, report: node_pb2.TerminationReport) -> None:
    if span.is_recording():
        span.set_attributes({"socklb.method": report.method, "socklb.found": report.found,
                             "socklb.destroyed": report.destroyed, "socklb.failed": report.failed,
                             "socklb.namespaces": report.namespaces})
        if report.error:
            span.set_status(Status(StatusCode.ERROR, report.error))
    span.end()


__all__ = ["Job", "MemoryTerminations", "PreviewJob", "TerminationService", "Terminations", "policy_report",
           "redirect_report", "removed_targets", "request_job", "to_report"]
