"""The control plane's storage contract, shared by the embedded and etcd stores
(opened by ``socklb.controlplane.store.open_store``; this module imports
neither).

A store is a flat, revisioned key-value space (the etcd v3 model):

- Keys are non-empty ``str`` (stored as UTF-8, ordered byte-wise), values ``bytes``.
- Every change is stamped with a store-wide revision. A fresh store is at
  revision 1; a successful txn that changes something moves it by exactly 1,
  and all of the txn's puts and deletes carry that revision.
- ``txn`` is the only write: compares on ``mod_revision`` (0 = "must not exist")
  guard a set of puts and deletes, applied atomically or not at all.
- ``range`` and ``watch`` take a prefix, or with ``end`` a key range
  [prefix, end): several prefixes that sort next to each other are read at
  one revision and watched in one revision order.
- ``watch`` delivers every change under a prefix (or in a range) from a start
  revision (inclusive), in revision order, in batches made of whole revisions.
- History kept for watches is finite: starting a watch before the oldest kept
  revision raises :class:`Compacted`; the caller re-lists with ``range`` and
  watches from the returned revision + 1.

Watch errors (one rule for both stores): if a watch cannot continue once it is
running (its start revision was compacted while it lagged or while it was
reconnecting, or the callback raised), ``Watch.error`` is set to the exception
FIRST, then the callback is called once with an empty list, and the watch
stops. An empty batch is never delivered otherwise. Problems known when
``watch()`` is called are raised by it (Compacted, Unavailable) and the callback
is never called. Connection loss alone is not an error for an etcd watch: it
reconnects and resumes after the last delivered revision.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from typing import Callable, Sequence


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class Event:
    type: str  # "put" | "delete"
    key: str
    value: bytes | None  # None for "delete"
    revision: int  # the mod_revision of the change


@dataclass(frozen=True)
class Compare:
    """Holds when ``key``'s current mod_revision equals ``mod_revision``.

    0 means "the key must not exist"; a negative value never holds.
    """

    key: str
    mod_revision: int


class StoreError(Exception):
    """Any store failure that is not one of the more specific kinds below."""


class Compacted(StoreError):
    """The requested start revision is older than the history the store keeps.

    ``compact_revision`` is the oldest revision a watch can start from now
    (0 if unknown).
    """

    def __init__(self, compact_revision: int, message: str | None = None):
        self.compact_revision = compact_revision
        super().__init__(message or f"revision compacted: the oldest revision kept is {compact_revision}")


class Full(StoreError):
    """The store has no room for the write (a full disk, etcd's space quota);
    nothing was written. Free space (etcd: compact, defragment, disarm the
    NOSPACE alarm), then retry."""


class Unavailable(StoreError):
    """The backend cannot be reached right now; retry later.

    For a write (txn) the outcome is unknown: the change may or may not have
    been applied. Re-read before retrying; mod_revision compares make retries
    safe.
    """


class Watch(abc.ABC):
    """A running watch. ``error`` is None until the watch stopped on an error."""

    error: Exception | None = None

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the watch. Idempotent. Once it returns (when called from
        another thread than the callback's) the callback is not called again."""


class Leadership(abc.ABC):
    """One campaign for a named singleton duty, from ``Store.campaign``."""

    name: str
    identity: str

    @abc.abstractmethod
    def is_leader(self) -> bool:
        """Non-blocking. True while this campaign holds the leadership (etcd:
        and its lease was refreshed recently enough that it cannot have
        expired). Re-campaigns automatically after losing it."""

    @abc.abstractmethod
    def fence(self) -> Compare:
        """A compare that holds only while this campaign is still the leader:
        the leader key's mod_revision as created by this campaign (the key is
        never modified after creation, so this equals its create_revision).
        Put it in every leader-only txn. When not leader: a compare that
        never holds."""

    @abc.abstractmethod
    def resign(self) -> None:
        """Give up the leadership now (if held) and stop campaigning. To stand
        again, call ``Store.campaign`` again. Idempotent."""

    @abc.abstractmethod
    def close(self) -> None:
        """``resign()`` and release the campaign's resources (thread, lease)."""


class Store(abc.ABC):
    @abc.abstractmethod
    def revision(self) -> int:
        """The store's current revision."""

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None: ...

    @abc.abstractmethod
    def range(self, prefix: str, end: str | None = None) -> tuple[list[KeyValue], int]:
        """Every key starting with ``prefix`` (all keys for ""), sorted by key,
        and the revision the snapshot was read at. With ``end``: every key in
        [prefix, end) instead (ValueError unless end sorts after prefix)."""

    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], puts: Sequence[tuple[str, bytes]] = (),
            deletes: Sequence[str] = ()) -> int | None:
        """Atomically: if every compare holds, apply puts and deletes and return
        the new revision (the current one if nothing changed, e.g. no
        puts/deletes or only deletes of absent keys); else change nothing and
        return None. A key may appear only once across puts and deletes
        (ValueError otherwise)."""

    @abc.abstractmethod
    def watch(self, prefix: str, start_revision: int,
              callback: Callable[[list[Event]], None], end: str | None = None) -> Watch:
        """Deliver every event with revision >= start_revision under prefix
        (with ``end``: in [prefix, end), as ``range``), in order, from a
        background thread, one batch per revision or more. Raises Compacted if
        start_revision is older than the kept history (see the module
        docstring for errors found later)."""

    @abc.abstractmethod
    def campaign(self, name: str, identity: str, ttl: float) -> Leadership:
        """Stand for leader of ``name`` (leader key ``/socklb/leader/<name>``,
        value ``identity``). Returns at once; poll ``is_leader()``."""

    def compact(self, revision: int) -> None:
        """Drop history before ``revision``: watches can start from ``revision``
        on. A no-op if already compacted that far; ValueError for a future
        revision."""
        raise NotImplementedError

    @abc.abstractmethod
    def close(self) -> None:
        """Resign every campaign, cancel every watch (without calling their
        callbacks), release resources. Idempotent."""

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- helpers shared by the implementations ---------------------------------

def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest byte string greater than every key starting with prefix;
    None if there is none (empty prefix or all 0xff): the range is open-ended."""
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return None


def key_range(prefix: str, end: str | None) -> tuple[bytes, bytes | None]:
    """The bytes [start, end) that ``range``/``watch`` arguments cover; end
    None: up to the last key."""
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be str, got {prefix!r}")
    start = prefix.encode()
    if end is None:
        return start, prefix_end(start)
    if not isinstance(end, str) or end.encode() <= start:
        raise ValueError(f"end must be a str that sorts after {prefix!r}, got {end!r}")
    return start, end.encode()


def describe_range(prefix: str, end: str | None) -> str:
    """A prefix or a range as logs and errors name it."""
    return repr(prefix) if end is None else f"[{prefix!r}, {end!r})"


def check_key(key: str) -> bytes:
    if not isinstance(key, str) or not key:
        raise ValueError(f"store keys are non-empty str, got {key!r}")
    return key.encode()


def check_value(value) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"store values are bytes, got {type(value).__name__}")


def check_txn(compares: Sequence[Compare], puts: Sequence[tuple[str, bytes]],
              deletes: Sequence[str]) -> tuple[list[Compare], list[tuple[str, bytes]], list[str]]:
    cs = list(compares)
    for c in cs:
        if not isinstance(c, Compare):
            raise TypeError(f"compares are Compare, got {type(c).__name__}")
        check_key(c.key)
    ps = [(k, check_value(v)) for k, v in puts]
    ds = list(deletes)
    seen: set[str] = set()
    for k in [k for k, _ in ps] + ds:
        check_key(k)
        if k in seen:
            raise ValueError(f"key {k!r} appears more than once in the txn's puts/deletes")
        seen.add(k)
    return cs, ps, ds


def never_holds(key: str) -> Compare:
    return Compare(key, -1)


class WatchBase(Watch):
    """Delivery bookkeeping shared by both stores' watches."""

    def __init__(self, prefix: str, start_revision: int, callback: Callable[[list[Event]], None],
                 end: str | None = None):
        if not isinstance(start_revision, int) or start_revision < 1:
            raise ValueError(f"start_revision must be an int >= 1, got {start_revision!r}")
        self.prefix = prefix
        self.end = end
        self.span = key_range(prefix, end)  # the bytes [start, end) watched; checks the arguments
        self.error = None
        self._callback = callback
        self._next = start_revision  # next revision not yet delivered
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def what(self) -> str:
        """What is watched, for thread names and logs."""
        return describe_range(self.prefix, self.end)

    @property
    def next_revision(self) -> int:
        """The first revision not delivered yet (resume a new watch from here)."""
        return self._next

    def _deliver(self, events: list[Event]) -> bool:
        """Hand a non-empty batch to the callback; False if the watch must stop."""
        if self._stopped.is_set():
            return False
        try:
            self._callback(events)
        except Exception as e:  # a callback that raises stops the watch loudly
            self._fail(e)
            return False
        self._next = events[-1].revision + 1
        return True

    def _fail(self, err: Exception) -> None:
        with self._lock:
            if self._stopped.is_set():
                return
            self.error = err
            self._stopped.set()
        try:
            self._callback([])
        except Exception:
            pass

    def _stop_thread(self) -> None:
        self._stopped.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
