"""What the node's ids stand for: the read model that statistics,
terminations and the admin API name things with.

The maps and the flow records speak in numeric ids (a flow holds a frontend
id and a backend id); reports speak in services and addresses. The agent
publishes each state it programs here; readers ask:

    index = agent.catalog.current()      # one programmed state, by id
    index.frontend_name(7)               # FrontendName(service, address, port, protocol) or None
    index.frontend_services()            # frontend id -> service
    agent.catalog.backend_names()        # (frontend id, backend id) -> BackendName, removed ones too
    agent.catalog.workloads()            # workload name -> WorkloadName (its ids, whether its cgroup is here)

Backends removed by an apply stay named for a while (the graveyard: the
last REMEMBERED of them): flows kept with keep_sockets still point at them,
so they can still be counted and terminated by address.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import NamedTuple

from socklb.lb.addresses import addr_text
from socklb.lb.frontends import FrontendKey

from .plan import Plan, Programmed, ProgrammedBackend, ProgrammedFrontend

REMEMBERED = 4096  # removed (frontend, backend) ids kept named


class FrontendName(NamedTuple):
    service: str
    address: str  # text, IPv4 for v4-mapped addresses
    port: int
    protocol: int  # socket.IPPROTO_TCP / IPPROTO_UDP


class BackendName(NamedTuple):
    service: str
    address: str
    port: int


class WorkloadName(NamedTuple):
    name: str
    id: int          # its index in workload_denies
    cgroup: str      # relative to the cgroup2 mount
    cgroup_id: int   # 0: the cgroup is not on this node (nothing programmed)
    policy_set: str  # "": unrestricted
    set_id: int      # the set's kernel id; 0: none, or not programmed
    bypass: bool


class Index:
    """One programmed state, looked up by id (the by-id table is built on
    first use)."""

    def __init__(self, programmed: Programmed):
        self.programmed = programmed
        self._by_id: dict[int, ProgrammedFrontend] | None = None

    def frontend(self, frontend_id: int) -> ProgrammedFrontend | None:
        if self._by_id is None:
            self._by_id = {fe.id: fe for fe in self.programmed.frontends.values()}
        return self._by_id.get(frontend_id)

    def frontend_name(self, frontend_id: int) -> FrontendName | None:
        """What a frontend id stands for: the one mapping of frontend ids to
        names on the node."""
        fe = self.frontend(frontend_id)
        return None if fe is None else FrontendName(fe.service, addr_text(fe.key.addr), fe.key.port, fe.key.proto)

    def frontend_services(self) -> dict[int, str]:
        """Frontend id -> service, of every programmed frontend."""
        return {fe.id: fe.service for fe in self.programmed.frontends.values()}

    def backend_name(self, b: ProgrammedBackend) -> BackendName | None:
        """A backend's service and address; None for a backend whose frontend
        is not programmed (left by an interrupted update)."""
        fe = self.frontend(b.frontend_id)
        return None if fe is None else BackendName(fe.service, addr_text(b.addr), b.port)

    def backend_names(self) -> dict[tuple[int, int], BackendName]:
        """(frontend id, backend id) -> name, of every programmed backend."""
        out = {}
        for b in self.programmed.backends.values():
            name = self.backend_name(b)
            if name is not None:
                out[(b.frontend_id, b.id)] = name
        return out

    def frontends(self) -> list[ProgrammedFrontend]:
        return sorted(self.programmed.frontends.values(), key=lambda f: f.id)

    def backends(self) -> list[ProgrammedBackend]:
        return sorted(self.programmed.backends.values(), key=lambda b: b.id)

    def of_service(self, service: str) -> list[ProgrammedFrontend]:
        return [fe for fe in self.programmed.frontends.values() if fe.service == service]

    @classmethod
    def of_keys(cls, programmed: Programmed, keys: Iterable[FrontendKey]) -> Index:
        """An index of the frontends at `keys` and their backends only (a
        copy: `programmed` may change after): enough to name what a partial
        plan over those keys removed, without a walk over every frontend."""
        frontends = {k: fe for k, fe in zip(keys, map(programmed.frontends.get, keys)) if fe is not None}
        backends, by_frontend = programmed.backends, programmed.by_frontend
        mine = {i: backends[i] for fe in frontends.values() for i in by_frontend.get(fe.id, ()) if i in backends}
        return cls(Programmed(frontends, mine, by_frontend={fe.id: by_frontend.get(fe.id, frozenset())
                                                            for fe in frontends.values()}))


class Catalog:
    """The agent's published state and the names of recently removed
    backends. Readers on other threads (statistics, admin, terminations)
    see one whole state that never changes under them: current() is a
    snapshot, copied (under the lock) from the agent's state when it changed
    since the last one. The agent's own state is changed in place by a
    partial plan (publish, under the same lock), so that a small change
    costs what it changes, not a copy of every entry; the readers pay one
    copy per change they look at."""

    def __init__(self, remembered: int = REMEMBERED):
        self.remembered = remembered
        self._live = Programmed()  # the agent's: changed in place by publish()
        self._index: Index | None = Index(Programmed())  # a snapshot of _live; None: to be copied
        self._removed: OrderedDict[tuple[int, int], BackendName] = OrderedDict()
        self._workloads: dict[str, WorkloadName] = {}
        self._lock = threading.Lock()

    def current(self) -> Index:
        with self._lock:
            if self._index is None:
                self._index = Index(self._live.copy())
            return self._index

    def publish(self, programmed: Programmed, plan: Plan | None = None) -> Index:
        """Make `programmed` current. plan: the ops that led to it, whose
        removed backends are remembered. A partial plan (plan.changes) is
        applied here to `programmed`, its base, in place. Returns the
        previous state, indexed to name what the plan removed (of a partial
        plan: the frontends it looked at only)."""
        partial = plan is not None and plan.changes is not None
        with self._lock:
            if partial:
                assert plan.base is programmed is self._live, "a partial plan applies to the published state"
                before = Index.of_keys(programmed, [*plan.changes.frontends, *plan.changes.gone_frontends])
            else:
                # The state a whole plan replaces is not changed again.
                before = self._index if self._index is not None else Index(self._live)
            if plan is not None:
                self._remember(plan.deleted_backends(), before)
            if partial:
                programmed.apply(plan.changes)
            self._live, self._index = programmed, None
        return before

    def _remember(self, gone: Iterable[int], before: Index) -> None:
        """Name the deleted backends (`gone`: ids, last first) that stay
        remembered: the last `remembered` of them, however many a plan
        deletes (removing a whole state deletes every backend)."""
        named = []
        backends = before.programmed.backends
        for i in gone:
            if len(named) >= self.remembered:
                break
            b = backends.get(i)
            name = before.backend_name(b) if b is not None else None
            if name is not None:
                named.append(((b.frontend_id, b.id), name))
        for k, name in reversed(named):
            self._removed[k] = name
        while len(self._removed) > self.remembered:
            self._removed.popitem(last=False)

    def publish_workloads(self, workloads: dict[str, WorkloadName]) -> None:
        self._workloads = workloads

    def workloads(self) -> dict[str, WorkloadName]:
        """Every workload of the applied state, by name."""
        return self._workloads

    def removed(self, service: str | None = None) -> dict[tuple[int, int], BackendName]:
        """(frontend id, backend id) -> name of the remembered removed
        backends (of one service, or all)."""
        with self._lock:
            return {k: n for k, n in self._removed.items() if service is None or n.service == service}

    def backend_names(self) -> dict[tuple[int, int], BackendName]:
        """Every backend a flow may still point at: the removed ones
        remembered, then the programmed ones."""
        names = self.removed()
        names.update(self.current().backend_names())
        return names


__all__ = ["BackendName", "Catalog", "FrontendName", "Index", "REMEMBERED", "WorkloadName"]
