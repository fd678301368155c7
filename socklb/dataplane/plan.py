"""What is programmed, what should be, and the ordered map writes between
them. Pure: the writer in maps.py executes a plan, tests check it without a
kernel.

Make-before-break: a slot is written only after the backend it names, a
master entry only after its slots, and nothing is deleted before the entries
pointing at it are gone. A connect() racing the update therefore always
finds either the old or the new selection, never a dangling id.

Local redirects (redirect_desired.py) are frontends of the redirect table
with their own masters, slots and backends, planned like any other. Their
redirect-table masters are written before the service masters (or
placeholders) whose REDIRECTED flag sends connects to them, and deleted after
the flag is cleared. A master that gains the flag is written without it in
the plan's ops and with it in `late`, which the agent writes last, after the
policy entries (the exempt workloads' entries and redirect_exempt) are in.
"""
from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from itertools import islice
from typing import NamedTuple

from socklb.lb.frontends import BackendState, FrontendKey, FrontendTarget, Selection

from .layout import SvcFlag


class ProgrammedBackend(NamedTuple):
    id: int
    frontend_id: int
    addr: bytes
    port: int
    proto: int
    state: BackendState


@dataclass(frozen=True)
class ProgrammedFrontend:
    id: int
    key: FrontendKey
    selection: Selection
    affinity_timeout: int
    slots: tuple[int, ...]  # backend ids
    service: str = ""
    flags: int = 0  # layout.SvcFlag

    @property
    def placeholder(self) -> bool:
        """A redirect's stand-in for an address that is no service VIP."""
        return bool(self.flags & SvcFlag.NOT_SERVICE)


@dataclass
class Programmed:
    """The content of the services and backends maps, as data."""

    frontends: dict[FrontendKey, ProgrammedFrontend] = field(default_factory=dict)
    backends: dict[int, ProgrammedBackend] = field(default_factory=dict)
    next_frontend_id: int = 1
    next_backend_id: int = 1
    # frontend id -> its backend ids (never mutated in place: plans share sets).
    by_frontend: dict[int, frozenset[int]] = field(default_factory=dict)

    def __post_init__(self):
        if self.backends and not self.by_frontend:
            self.reindex()

    def reindex(self) -> None:
        index: dict[int, set[int]] = {}
        for b in self.backends.values():
            index.setdefault(b.frontend_id, set()).add(b.id)
        self.by_frontend = {k: frozenset(v) for k, v in index.items()}

    def copy(self) -> Programmed:
        # The records are immutable (by_frontend's sets too): the dicts only.
        return Programmed(dict(self.frontends), dict(self.backends), self.next_frontend_id,
                          self.next_backend_id, dict(self.by_frontend))

    def apply(self, changes: Changes) -> None:
        """Change this state in place by a partial plan's changes (idempotent:
        applied twice, the same state)."""
        for mine, changed, gone in ((self.frontends, changes.frontends, changes.gone_frontends),
                                    (self.backends, changes.backends, changes.gone_backends),
                                    (self.by_frontend, changes.by_frontend, changes.gone_ids)):
            for k in gone:
                mine.pop(k, None)
            mine.update(changed)  # in C: a first state's plan changes every entry
        self.next_frontend_id, self.next_backend_id = changes.next_frontend_id, changes.next_backend_id


class Changes(NamedTuple):
    """What a partial plan changes in the state it starts from: per dict of
    Programmed, the entries it writes and the keys that go (never both)."""
    frontends: dict
    backends: dict
    by_frontend: dict
    gone_frontends: frozenset
    gone_backends: frozenset
    gone_ids: frozenset  # of by_frontend
    next_frontend_id: int
    next_backend_id: int


# --- operations, in execution order ---------------------------------------
# Named tuples, as ProgrammedBackend: a full state's plan holds 200k+ ops.

class PutBackend(NamedTuple):
    backend: ProgrammedBackend


class PutSlot(NamedTuple):
    key: FrontendKey
    slot: int  # 1-based
    backend_id: int


class PutMaster(NamedTuple):
    frontend: ProgrammedFrontend


class DeleteSlot(NamedTuple):
    key: FrontendKey
    slot: int


class DeleteMaster(NamedTuple):
    key: FrontendKey


class DeleteBackend(NamedTuple):
    id: int


Op = PutBackend | PutSlot | PutMaster | DeleteSlot | DeleteMaster | DeleteBackend


@dataclass
class Plan:
    """A whole plan (make_plan with only=None) carries its result; a partial
    one the changes from its base instead (copying a 100k-backend state for a
    one-service change would cost more than the change): `result` makes the
    whole state on demand, `frontend()` looks one up, and the agent changes
    its state in place once the plan is written (Programmed.apply)."""
    ops: list[Op]
    _result: Programmed | None
    # Masters gaining SvcFlag.REDIRECTED, written after everything else
    # (the ops write them without the flag).
    late: list[Op] = field(default_factory=list)
    base: Programmed | None = None  # partial: the state the changes apply to
    changes: Changes | None = None
    # What the plan deletes, for those who name it (the catalog, the
    # terminations) without a walk over every op: the frontends removed,
    # the backends removed from frontends that stay (the others go with
    # their frontend), and how many DeleteBackend ops end `ops`.
    removed_frontends: list[FrontendKey] = field(default_factory=list)
    dropped_backends: list[int] = field(default_factory=list)
    backend_deletes: int = 0
    _counts: Counter | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def result(self) -> Programmed:
        """The state after the plan (a partial plan's is made here, a copy
        of its base: O(state))."""
        if self._result is None:
            self._result = self.base.copy()
            self._result.apply(self.changes)
        return self._result

    @property
    def next_frontend_id(self) -> int:
        return (self.changes or self._result).next_frontend_id

    @property
    def next_backend_id(self) -> int:
        return (self.changes or self._result).next_backend_id

    def deleted_backends(self) -> Iterator[int]:
        """The ids of every backend the plan deletes, last first."""
        return (op.id for op in islice(reversed(self.ops), self.backend_deletes))

    def frontend(self, key: FrontendKey) -> ProgrammedFrontend | None:
        """The frontend at `key` after the plan."""
        if self.changes is None:
            return self._result.frontends.get(key)
        changes = self.changes
        if key in changes.frontends:
            return changes.frontends[key]
        return None if key in changes.gone_frontends else self.base.frontends.get(key)

    def frontend_keys(self) -> Iterable[FrontendKey]:
        """The keys of the frontends the plan writes or keeps: a partial
        plan's are those it writes (it creates none but those)."""
        if self.changes is None:
            return self._result.frontends.keys()
        return self.changes.frontends.keys()

    def count(self, kind: type) -> int:
        """How many ops of one type (op types have no subclasses: by exact
        type, counted once for all kinds, as a full state has 200k+ ops)."""
        if self._counts is None:
            self._counts = Counter(map(type, self.ops))
        return self._counts[kind]


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off for the block. A full state's plan
    makes 400k+ objects (none in a cycle: reference counting frees them);
    each 700 of them would start a collection, and the older generations'
    passes walk every object the agent holds (the targets, the programmed
    state): at 10k services they cost more than the plan itself."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _frontend_order(key: FrontendKey) -> tuple:
    # FrontendKey's own order (its fields in turn), compared in C.
    return key.addr, key.port, key.proto, key.table


def make_plan(current: Programmed, targets: dict[FrontendKey, FrontendTarget],
              only: set[FrontendKey] | None = None) -> Plan:
    """Ops from `current` to `targets`.

    only=None: `targets` is the whole desired state (frontends absent from it
    are removed, stray backends too). Otherwise only the frontends in `only`
    are looked at: those in `targets` are written, the others removed, and the
    rest of `current` is carried over untouched, so a one-service delta costs
    the same whatever the number of services.
    """
    with collector_paused():
        return _make_plan(current, targets, only)


def _make_plan(current: Programmed, targets: dict[FrontendKey, FrontendTarget],
               only: set[FrontendKey] | None) -> Plan:
    full = only is None
    # A whole plan fills a new state; a partial one records what it writes
    # in `result`'s dicts instead (and what goes in Changes).
    result = Programmed(next_frontend_id=current.next_frontend_id, next_backend_id=current.next_backend_id)
    if full:
        keys = sorted(set(targets) | set(current.frontends), key=_frontend_order)
    else:
        keys = sorted(only, key=_frontend_order)

    put_backends: list[Op] = []
    put_slots: list[Op] = []
    put_masters: list[Op] = []
    del_slots: list[Op] = []
    removed: list[Op] = []
    late: list[Op] = []
    gone_backends: set[int] = set()
    gone_frontends: list[FrontendKey] = []
    gone_ids: list[int] = []
    dropped: list[int] = []
    new = tuple.__new__

    for key in keys:
        t = targets.get(key)
        old = current.frontends.get(key)
        old_ids = current.by_frontend.get(old.id, frozenset()) if old is not None else frozenset()
        if t is None:
            if old is None:
                continue
            removed.append(new(DeleteMaster, (key,)))
            gone_frontends.append(key)
            removed += [new(DeleteSlot, (key, i)) for i in range(1, len(old.slots) + 1)]
            gone_ids.append(old.id)
            gone_backends |= old_ids
            continue
        if old is not None:
            fe_id = old.id
        else:
            fe_id = result.next_frontend_id
            result.next_frontend_id += 1
        proto = key.proto
        if old is None:
            # A new frontend (every one of a first state): new backends with
            # consecutive ids, every slot written. Records made with
            # tuple.__new__ (a named tuple's own __new__ is a Python call).
            base = result.next_backend_id
            result.next_backend_id += len(t.backends)
            ids = range(base, result.next_backend_id)
            pbs = [new(ProgrammedBackend, (be_id, fe_id, b.addr, b.port, proto, b.state))
                   for be_id, b in zip(ids, t.backends)]
            put_backends += [new(PutBackend, (pb,)) for pb in pbs]
            result.backends.update(zip(ids, pbs))
            result.by_frontend[fe_id] = frozenset(ids)
            slots = tuple([ids[i] for i in t.table])
            put_slots += [new(PutSlot, (key, i, be_id)) for i, be_id in enumerate(slots, 1)]
        else:
            # Existing backend ids by identity, so unchanged backends keep their
            # ids (and with them their flows' and affinity entries' meaning).
            by_ident = {(current.backends[i].addr, current.backends[i].port): current.backends[i] for i in old_ids}
            ids = []
            for b in t.backends:
                prev = by_ident.get((b.addr, b.port))
                if prev is not None:
                    be_id = prev.id
                else:
                    be_id = result.next_backend_id
                    result.next_backend_id += 1
                pb = new(ProgrammedBackend, (be_id, fe_id, b.addr, b.port, proto, b.state))
                if prev is None or prev != pb:
                    put_backends.append(new(PutBackend, (pb,)))
                result.backends[be_id] = pb
                ids.append(be_id)
            dropped += old_ids - set(ids)
            result.by_frontend[fe_id] = frozenset(ids)
            slots = tuple([ids[i] for i in t.table])
            old_slots = old.slots
            for i, be_id in enumerate(slots):
                if i >= len(old_slots) or old_slots[i] != be_id:
                    put_slots.append(PutSlot(key, i + 1, be_id))
        fe = ProgrammedFrontend(fe_id, key, t.selection, t.affinity_timeout, slots, t.service, t.flags)
        if old is None or replace(old, service="") != replace(fe, service=""):
            gains = fe.flags & SvcFlag.REDIRECTED and not (old is not None and old.flags & SvcFlag.REDIRECTED)
            if gains:
                late.append(PutMaster(fe))
                fe_now = replace(fe, flags=fe.flags & ~SvcFlag.REDIRECTED)
                if old is None or replace(old, service="") != replace(fe_now, service=""):
                    put_masters.append(PutMaster(fe_now))
            else:
                put_masters.append(PutMaster(fe))
        if old is not None:
            del_slots += [DeleteSlot(key, i + 1) for i in range(len(slots), len(old.slots))]
        result.frontends[key] = fe

    gone_backends.update(dropped)
    if full:
        # Also backends no frontend owns (left by an interrupted update).
        gone_backends = {i for i in current.backends if i not in result.backends}
    del_backends = [new(DeleteBackend, (i,)) for i in sorted(gone_backends)]
    # Redirect-table masters before service-table ones: a frontend's redirect
    # exists before the flag that leads to it (keys sort by table last).
    if any(op.frontend.key.table for op in put_masters):
        put_masters.sort(key=lambda op: -op.frontend.key.table)
    ops = put_backends + put_slots + put_masters + del_slots + removed + del_backends
    deleted = {"removed_frontends": gone_frontends, "dropped_backends": dropped, "backend_deletes": len(del_backends)}
    if full:
        return Plan(ops, result, late, **deleted)
    changes = Changes(result.frontends, result.backends, result.by_frontend, frozenset(gone_frontends),
                      frozenset(gone_backends), frozenset(gone_ids), result.next_frontend_id, result.next_backend_id)
    return Plan(ops, None, late, base=current, changes=changes, **deleted)
