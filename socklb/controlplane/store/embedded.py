"""The embedded store: in-process, no server, state in one SQLite database.

Layout of the directory: ``store.db`` (+ its ``-wal``/``-shm``) and ``LOCK``.

- Durability: WAL journal with ``synchronous=FULL``: a txn that returned has
  been fsync'ed to the WAL, so it survives kill -9 and power loss.
- One process at a time: ``LOCK`` is held with ``fcntl.flock`` (exclusive,
  non-blocking) for the store's lifetime; a second open, from any process or
  from this one, fails with a StoreError naming the holder's pid. The lock goes
  with the process (kill -9 included).
- Watch history: every change is also appended to an event log; the log keeps
  the last ``history`` revisions (default 100000). A watch that needs older
  revisions gets Compacted(oldest kept revision).
- Thread-safe: one connection guarded by a lock; each watch has its own
  delivery thread, woken after every commit.
- Leadership: a single replica, so a campaign is granted at once (the leader
  key is written to the store so fence() works like etcd's); a second campaign
  for the same name in this process waits until the first resigns.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import threading
from pathlib import Path
from typing import Callable, Sequence

from .. import keys
from .base import (Compacted, Compare, Event, Full, KeyValue, Leadership, Store, StoreError, WatchBase,
                   check_key, check_txn, key_range, never_holds)

DEFAULT_HISTORY = 100_000
_SCHEMA = 1
_BATCH_REVISIONS = 1000  # at most this many revisions per delivered batch


class EmbeddedStore(Store):
    def __init__(self, path: str | os.PathLike, history: int = DEFAULT_HISTORY):
        if not isinstance(history, int) or history < 1:
            raise ValueError(f"history must be an int >= 1, got {history!r}")
        self.path = Path(path)
        self.history = history
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"embedded store: cannot create directory {self.path}: {e}") from e
        self._lock_fd = self._take_lock()
        self._mu = threading.RLock()  # guards the connection and all state below
        self._changed = threading.Condition(threading.Lock())
        self._closed = False
        self._watches: set[_EmbeddedWatch] = set()
        self._leaders: dict[str, _EmbeddedLeadership] = {}
        self._waiting: dict[str, list[_EmbeddedLeadership]] = {}
        try:
            self._db = self._open_db()
        except BaseException:
            os.close(self._lock_fd)
            raise
        self._rev, self._compact = self._read_meta()

    # --- opening ------------------------------------------------------------

    def _take_lock(self) -> int:
        lock_path = self.path / "LOCK"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"embedded store {self.path} is already open (lock {lock_path} "
                                 f"held by pid {holder}); only one process may open it at a time") from None
            raise StoreError(f"embedded store: cannot lock {lock_path}: {e}") from e
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def _open_db(self) -> sqlite3.Connection:
        db_path = self.path / "store.db"
        new = not db_path.exists()
        db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        try:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise StoreError(f"embedded store: cannot use WAL journal on {db_path} (got {mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
                       "create_revision INTEGER NOT NULL, mod_revision INTEGER NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS events (revision INTEGER NOT NULL, seq INTEGER NOT NULL, "
                       "type INTEGER NOT NULL, key BLOB NOT NULL, value BLOB, PRIMARY KEY (revision, seq))")
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?), ('revision', 1), ('compact', 1)",
                       (_SCHEMA,))
            schema = db.execute("SELECT value FROM meta WHERE name='schema'").fetchone()[0]
            db.execute("COMMIT")
        except sqlite3.Error as e:
            db.close()
            raise StoreError(f"embedded store: cannot open {db_path}: {e}") from e
        if schema != _SCHEMA:
            db.close()
            raise StoreError(f"embedded store {db_path}: schema {schema}, this code knows {_SCHEMA}")
        if new:  # make the new files' directory entries durable too
            dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        return db

    def _read_meta(self) -> tuple[int, int]:
        rows = dict(self._db.execute("SELECT name, value FROM meta").fetchall())
        return rows["revision"], rows["compact"]

    # --- reads --------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("embedded store is closed")

    def revision(self) -> int:
        with self._mu:
            self._check_open()
            return self._rev

    def get(self, key: str) -> KeyValue | None:
        k = check_key(key)
        with self._mu:
            self._check_open()
            row = self._db.execute("SELECT key, value, create_revision, mod_revision FROM kv WHERE key=?",
                                   (k,)).fetchone()
        return _kv(row) if row else None

    def range(self, prefix: str, end: str | None = None) -> tuple[list[KeyValue], int]:
        where, args = _range_where(*key_range(prefix, end))
        with self._mu:
            self._check_open()
            rows = self._db.execute(f"SELECT key, value, create_revision, mod_revision FROM kv WHERE {where} "
                                    "ORDER BY key", args).fetchall()
            rev = self._rev
        return [_kv(r) for r in rows], rev

    # --- the write ----------------------------------------------------------

    def txn(self, compares: Sequence[Compare], puts: Sequence[tuple[str, bytes]] = (),
            deletes: Sequence[str] = ()) -> int | None:
        cs, ps, ds = check_txn(compares, puts, deletes)
        with self._mu:
            self._check_open()
            db = self._db
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for c in cs:
                        row = db.execute("SELECT mod_revision FROM kv WHERE key=?", (c.key.encode(),)).fetchone()
                        if (row[0] if row else 0) != c.mod_revision:
                            db.execute("ROLLBACK")
                            return None
                    rev = self._rev + 1
                    seq = 0
                    for k, v in ps:
                        kb = k.encode()
                        db.execute("INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                                   "value=excluded.value, mod_revision=excluded.mod_revision", (kb, v, rev, rev))
                        db.execute("INSERT INTO events VALUES (?, ?, 0, ?, ?)", (rev, seq, kb, v))
                        seq += 1
                    for k in ds:
                        kb = k.encode()
                        if db.execute("DELETE FROM kv WHERE key=?", (kb,)).rowcount:
                            db.execute("INSERT INTO events VALUES (?, ?, 1, ?, NULL)", (rev, seq, kb))
                            seq += 1
                    if seq == 0:  # nothing changed: the revision stays
                        db.execute("ROLLBACK")
                        return self._rev
                    compact = max(self._compact, rev - self.history + 1)
                    db.execute("UPDATE meta SET value=? WHERE name='revision'", (rev,))
                    if compact != self._compact:
                        db.execute("UPDATE meta SET value=? WHERE name='compact'", (compact,))
                        db.execute("DELETE FROM events WHERE revision < ?", (compact,))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as e:
                if getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                    raise Full(f"embedded store {self.path}: {e}") from e
                raise StoreError(f"embedded store: txn failed: {e}") from e
            self._rev, self._compact = rev, compact
        self._notify()
        return rev

    def compact(self, revision: int) -> None:
        with self._mu:
            self._check_open()
            if revision > self._rev:
                raise ValueError(f"cannot compact to {revision}: the current revision is {self._rev}")
            if revision <= self._compact:
                return
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("UPDATE meta SET value=? WHERE name='compact'", (revision,))
                self._db.execute("DELETE FROM events WHERE revision < ?", (revision,))
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"embedded store: compact failed: {e}") from e
            self._compact = revision
        self._notify()

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    # --- watch --------------------------------------------------------------

    def watch(self, prefix: str, start_revision: int, callback: Callable[[list[Event]], None],
              end: str | None = None) -> "_EmbeddedWatch":
        w = _EmbeddedWatch(self, prefix, start_revision, callback, end)
        with self._mu:
            self._check_open()
            if start_revision < self._compact:
                raise Compacted(self._compact)
            self._watches.add(w)
        w._start()
        return w

    def _read_events(self, range_where: tuple[str, tuple], start: int) -> tuple[list[Event], int] | Compacted | None:
        """Events in [start, start + batch) in the watched keys, and the next
        start. None if nothing new; Compacted if start fell out of the history."""
        where, args = range_where
        with self._mu:
            if self._closed:
                return None
            if start < self._compact:
                return Compacted(self._compact)
            if start > self._rev:
                return None
            upper = min(self._rev, start + _BATCH_REVISIONS - 1)
            rows = self._db.execute(f"SELECT revision, type, key, value FROM events WHERE revision BETWEEN ? AND ? "
                                    f"AND {where} ORDER BY revision, seq", (start, upper, *args)).fetchall()
        return [Event("delete" if t else "put", k.decode(), None if t else v, r) for r, t, k, v in rows], upper + 1

    # --- leadership ---------------------------------------------------------

    def campaign(self, name: str, identity: str, ttl: float) -> "_EmbeddedLeadership":
        key = keys.leader(name)
        ld = _EmbeddedLeadership(self, name, identity, key)
        with self._mu:
            self._check_open()
            if name in self._leaders:
                self._waiting.setdefault(name, []).append(ld)
            else:
                self._elect(ld)
        return ld

    def _elect(self, ld: "_EmbeddedLeadership") -> None:
        # Called with _mu held. A leader key left by an earlier process is stale:
        # this process holds the directory lock, so nobody else can be leader.
        cur = self.get(ld.key)
        rev = self.txn([Compare(ld.key, cur.mod_revision if cur else 0)], [(ld.key, ld.identity.encode())])
        assert rev is not None  # _mu is held and the key is ours to take
        ld._rev = rev
        self._leaders[ld.name] = ld

    def _resign(self, ld: "_EmbeddedLeadership") -> None:
        with self._mu:
            waiting = self._waiting.get(ld.name, [])
            if ld in waiting:
                waiting.remove(ld)
            if self._leaders.get(ld.name) is not ld:
                return
            del self._leaders[ld.name]
            rev, ld._rev = ld._rev, None
            if self._closed:
                return
            self.txn([Compare(ld.key, rev)], deletes=[ld.key])
            if waiting:
                self._elect(waiting.pop(0))

    # --- closing ------------------------------------------------------------

    def close(self) -> None:
        with self._mu:
            if self._closed:
                return
            leaders = list(self._leaders.values()) + [w for ws in self._waiting.values() for w in ws]
        for ld in leaders:
            ld.resign()
        with self._mu:
            self._closed = True
            watches = list(self._watches)
        self._notify()
        for w in watches:
            w.cancel()
        with self._mu:
            self._db.close()
            os.close(self._lock_fd)  # releases the flock

    def _forget(self, w: "_EmbeddedWatch") -> None:
        with self._mu:
            self._watches.discard(w)


class _EmbeddedWatch(WatchBase):
    def __init__(self, store: EmbeddedStore, prefix: str, start_revision: int, callback, end: str | None):
        super().__init__(prefix, start_revision, callback, end)
        self._store = store
        self._where = _range_where(*self.span)

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"store-watch {self.what}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        st = self._store
        while not self._stopped.is_set():
            with st._changed:
                # Sleep until something was committed past what was delivered.
                while not self._stopped.is_set() and not st._closed and st._rev < self._next \
                        and self._next >= st._compact:
                    st._changed.wait()
            if self._stopped.is_set() or st._closed:
                return
            got = st._read_events(self._where, self._next)
            if isinstance(got, Compacted):
                self._fail(got)
                return
            if got is None:
                continue
            events, nxt = got
            if events and not self._deliver(events):
                return
            self._next = max(self._next, nxt)

    def cancel(self) -> None:
        self._stopped.set()
        with self._store._changed:
            self._store._changed.notify_all()
        self._stop_thread()
        self._store._forget(self)


class _EmbeddedLeadership(Leadership):
    def __init__(self, store: EmbeddedStore, name: str, identity: str, key: str):
        self._store = store
        self.name = name
        self.identity = identity
        self.key = key
        self._rev: int | None = None

    def is_leader(self) -> bool:
        return self._rev is not None

    def fence(self) -> Compare:
        rev = self._rev
        return Compare(self.key, rev) if rev is not None else never_holds(self.key)

    def resign(self) -> None:
        self._store._resign(self)

    def close(self) -> None:
        self.resign()


def _kv(row) -> KeyValue:
    return KeyValue(row[0].decode(), bytes(row[1]), row[2], row[3])


def _range_where(start: bytes, end: bytes | None) -> tuple[str, tuple]:
    """SQL for the keys in [start, end) (end None: no upper bound); BLOBs
    compare byte-wise, as the contract orders keys."""
    if end is None:
        return ("key >= ?", (start,)) if start else ("1", ())
    return "key >= ? AND key < ?", (start, end)
