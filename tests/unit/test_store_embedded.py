"""The store contract, run against the embedded store; embedded-only behaviour
(restart, kill -9 durability, the lock file, history trimming, URLs).

The ``test_contract_*`` functions use only the fixtures ``store`` (a Store) and
``ns`` (a key prefix of their own); tests/integration/test_store_etcd.py runs
the same functions against a real etcd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from socklb.controlplane.store import (Compacted, Compare, Event, KeyValue, Store, StoreError, open_store)
from socklb.controlplane.store.embedded import EmbeddedStore

REPO = Path(__file__).resolve().parents[2]


def wait_for(cond, timeout: float = 15.0, interval: float = 0.02) -> bool:
    """Poll cond() until true or the (generous) bound; the caller asserts."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


class Collector:
    """A watch callback that records batches."""

    def __init__(self):
        self.batches: list[list[Event]] = []
        self.lock = threading.Lock()

    def __call__(self, events):
        with self.lock:
            self.batches.append(list(events))

    @property
    def events(self) -> list[Event]:
        with self.lock:
            return [e for b in self.batches for e in b]

    def has(self, n: int) -> bool:
        return len(self.events) >= n

    def saw(self, revision: int) -> bool:
        return any(e.revision == revision for e in self.events)


def witnessed_write(store: Store, prefix: str, key: str) -> int:
    """Write `key` (under `prefix`) and return its revision once a watch of the
    prefix, opened for the purpose, has delivered it: by then any other watch
    of the prefix had its chance to deliver it too. What a negative check
    waits for, instead of a pause."""
    witness = Collector()
    w = store.watch(prefix, store.revision() + 1, witness)
    try:
        rev = store.txn([], [(key, b"witnessed")])
        assert wait_for(lambda: witness.saw(rev)), f"the witness never saw revision {rev}"
    finally:
        w.cancel()
    return rev


@pytest.fixture
def store(tmp_path):
    s = EmbeddedStore(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def ns():
    return "/t/"


# --- the contract (also run against etcd) -----------------------------------

def test_contract_txn_compares(store: Store, ns: str):
    a, b = ns + "a", ns + "b"
    r1 = store.txn([Compare(a, 0)], [(a, b"1")])
    assert r1 is not None
    assert store.get(a) == KeyValue(a, b"1", r1, r1)
    assert store.txn([Compare(a, 0)], [(a, b"again")]) is None, "0 means: must not exist"
    assert store.txn([Compare(a, r1 + 1000)], [(a, b"x")]) is None
    assert store.get(a).value == b"1"

    r2 = store.txn([Compare(a, r1)], [(a, b"2")])
    assert r2 == r1 + 1
    assert store.get(a) == KeyValue(a, b"2", r1, r2), "create_revision stays, mod_revision moves"
    assert store.txn([Compare(a, r1)], [(a, b"3")]) is None, "stale mod_revision"

    # one failing compare: nothing at all is applied
    assert store.txn([Compare(a, r2), Compare(b, 5)], [(a, b"x"), (b, b"y")]) is None
    assert store.get(a).value == b"2" and store.get(b) is None
    assert store.revision() == r2

    # compares only: the current revision, nothing changes
    assert store.txn([Compare(a, r2), Compare(b, 0)]) == r2
    assert store.txn([Compare(b, 0)], deletes=[ns + "absent"]) == r2, "deleting an absent key changes nothing"
    assert store.txn([Compare(a, -1)]) is None, "a negative revision never holds"

    r3 = store.txn([Compare(a, r2)], deletes=[a])
    assert r3 == r2 + 1 and store.get(a) is None
    assert store.txn([Compare(a, r2)]) is None
    r4 = store.txn([Compare(a, 0)], [(a, b"new")])
    assert store.get(a) == KeyValue(a, b"new", r4, r4), "re-created: a new create_revision"


def test_contract_revisions(store: Store, ns: str):
    r0 = store.revision()
    assert r0 >= 1
    r1 = store.txn([], [(ns + "x", b"1"), (ns + "y", b"2"), (ns + "z", b"3")])
    assert r1 == r0 + 1, "one revision per txn, however many keys"
    for k in "xyz":
        assert store.get(ns + k).mod_revision == r1
    r2 = store.txn([], [(ns + "x", b"1b")], [ns + "y", ns + "nope"])
    assert r2 == r1 + 1
    assert store.revision() == r2
    assert store.txn([]) == r2
    assert store.revision() == r2


def test_contract_range(store: Store, ns: str):
    keys = [ns + k for k in ["b", "a", "a/1", "a/0", "ab", "a0", "é", "z"]]
    rev = store.txn([], [(k, k.encode()) for k in keys])
    store.txn([], [(ns[:-1] + "~outside", b"")])  # just past the prefix
    kvs, at = store.range(ns)
    assert [kv.key for kv in kvs] == sorted(keys), "sorted by key (byte order)"
    assert at == store.revision() == rev + 1
    assert all(kv.value == kv.key.encode() and kv.mod_revision == rev for kv in kvs)
    sub, _ = store.range(ns + "a/")
    assert [kv.key for kv in sub] == [ns + "a/0", ns + "a/1"]
    sub, _ = store.range(ns + "a")
    assert [kv.key for kv in sub] == [ns + "a", ns + "a/0", ns + "a/1", ns + "a0", ns + "ab"]
    assert store.range(ns + "nothing/") == ([], rev + 1)
    everything, _ = store.range("")
    assert set(keys) <= {kv.key for kv in everything}


def test_contract_range_between_keys(store: Store, ns: str):
    """With `end`: the keys in [prefix, end), across the prefixes in between,
    at one revision; the start is a key, not a prefix."""
    keys = [ns + k for k in ["a/1", "b", "b/1", "b/2", "c", "c/1", "d", "d/1"]]
    rev = store.txn([], [(k, k.encode()) for k in keys])
    kvs, at = store.range(ns + "b/", end=ns + "d")
    assert [kv.key for kv in kvs] == [ns + "b/1", ns + "b/2", ns + "c", ns + "c/1"], "start in, end out"
    assert at == store.revision() == rev and all(kv.value == kv.key.encode() for kv in kvs)
    assert [kv.key for kv in store.range(ns + "b", end=ns + "b/2")[0]] == [ns + "b", ns + "b/1"]
    assert store.range(ns + "e", end=ns + "f") == ([], rev)
    for start, end in ((ns + "b", ns + "b"), (ns + "c", ns + "b"), (ns, 7)):
        with pytest.raises(ValueError):
            store.range(start, end=end)
        with pytest.raises(ValueError):
            store.watch(start, 1, lambda evs: None, end=end)


def test_contract_watch_key_range(store: Store, ns: str):
    """A watch of [start, end) sees exactly the changes of the keys in it,
    of several prefixes written concurrently, in one revision order."""
    start = store.revision() + 1
    got = Collector()
    w = store.watch(ns + "b/", start, got, end=ns + "d")
    writes: dict[str, list[int]] = {}

    def write(prefix: str, n: int) -> None:
        revs = writes.setdefault(prefix, [])
        for i in range(n):
            revs.append(store.txn([], [(f"{ns}{prefix}{i % 3}", str(i).encode())]))

    try:
        threads = [threading.Thread(target=write, args=(p, 12)) for p in ("a/", "b/", "c/", "c", "d/")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        r_del = store.txn([], deletes=[ns + "b/0", ns + "a/0"])
        last = store.txn([], [(ns + "d", b"the end is out"), (ns + "c/9", b"in")])
        assert wait_for(lambda: got.saw(last))
        inside = sorted(writes["b/"] + writes["c/"] + writes["c"] + [r_del, last])
        assert [e.revision for e in got.events] == inside, "every change in the range once, in revision order"
        assert all(e.key.startswith((ns + "b/", ns + "c")) for e in got.events)
        assert got.events[-2:] == [Event("delete", ns + "b/0", None, r_del), Event("put", ns + "c/9", b"in", last)]
        # What the events add up to is what the range holds.
        held: dict[str, bytes] = {}
        for e in got.events:
            if e.type == "delete":
                del held[e.key]
            else:
                held[e.key] = e.value
        kvs, _ = store.range(ns + "b/", end=ns + "d")
        assert {kv.key: kv.value for kv in kvs} == held
        assert w.error is None
    finally:
        w.cancel()


def test_contract_watch_key_range_compacted(store: Store, ns: str):
    first = store.txn([], [(ns + "b/k", b"0")])
    for i in range(1, 4):
        store.txn([], [(ns + ("b/k" if i % 2 else "c/k"), str(i).encode())])
    cut = store.revision() - 1
    store.compact(cut)
    called = []
    with pytest.raises(Compacted) as exc:
        store.watch(ns + "b/", first, called.append, end=ns + "d")
    assert exc.value.compact_revision == cut and called == []
    got = Collector()
    w = store.watch(ns + "b/", cut, got, end=ns + "d")
    try:
        assert wait_for(lambda: got.has(2))
        assert [(e.key, e.value) for e in got.events] == [(ns + "c/k", b"2"), (ns + "b/k", b"3")]
    finally:
        w.cancel()


def test_contract_txn_arguments(store: Store, ns: str):
    k = ns + "k"
    with pytest.raises(ValueError):
        store.txn([], [(k, b"1"), (k, b"2")])
    with pytest.raises(ValueError):
        store.txn([], [(k, b"1")], [k])
    with pytest.raises(TypeError):
        store.txn([], [(k, "not bytes")])
    with pytest.raises(ValueError):
        store.txn([], [("", b"1")])
    with pytest.raises(ValueError):
        store.watch(ns, 0, lambda evs: None)
    assert store.get(k) is None


def test_contract_watch_from_past_and_live(store: Store, ns: str):
    w_ns = ns + "w/"
    r1 = store.txn([], [(w_ns + "a", b"1")])
    store.txn([], [(ns + "elsewhere", b"x")])
    r3 = store.txn([], [(w_ns + "b", b"2"), (w_ns + "c", b"3")])
    r4 = store.txn([], deletes=[w_ns + "a"])

    got = Collector()
    w = store.watch(w_ns, r1, got)
    try:
        assert wait_for(lambda: got.has(4))
        assert got.events == [Event("put", w_ns + "a", b"1", r1), Event("put", w_ns + "b", b"2", r3),
                              Event("put", w_ns + "c", b"3", r3), Event("delete", w_ns + "a", None, r4)]
        # live
        r5 = store.txn([], [(w_ns + "d", b"4"), (w_ns + "e", b"5"), (ns + "elsewhere", b"y")])
        r6 = store.txn([], [(w_ns + "d", b"4b")])
        assert wait_for(lambda: got.has(7))
        assert got.events[4:] == [Event("put", w_ns + "d", b"4", r5), Event("put", w_ns + "e", b"5", r5),
                                  Event("put", w_ns + "d", b"4b", r6)]
        for batch in got.batches:
            assert batch, "no empty batches while the watch is healthy"
            revs = [e.revision for e in batch]
            assert revs == sorted(revs)
        # a revision is never split over two batches
        for earlier, later in zip(got.batches, got.batches[1:]):
            assert earlier[-1].revision < later[0].revision
        assert w.error is None
    finally:
        w.cancel()
    n = len(got.events)
    witnessed_write(store, w_ns, w_ns + "after-cancel")
    assert len(got.events) == n, "nothing after cancel()"
    w.cancel()  # idempotent


def test_contract_watch_start_inclusive_and_future(store: Store, ns: str):
    r1 = store.txn([], [(ns + "a", b"1")])
    r2 = store.txn([], [(ns + "a", b"2")])
    got, fut = Collector(), Collector()
    w = store.watch(ns, r2, got)
    wf = store.watch(ns, r2 + 2, fut)
    try:
        r3 = store.txn([], [(ns + "a", b"3")])
        r4 = store.txn([], [(ns + "a", b"4")])
        assert wait_for(lambda: got.has(3) and fut.has(1))
        assert [e.revision for e in got.events] == [r2, r3, r4], "start_revision is inclusive"
        assert [e.revision for e in fut.events] == [r4]
        assert r1 < r2
    finally:
        w.cancel()
        wf.cancel()


def test_contract_watch_compacted(store: Store, ns: str):
    first = store.txn([], [(ns + "c", b"0")])
    for i in range(1, 5):
        store.txn([], [(ns + "c", str(i).encode())])
    cut = store.revision() - 1
    store.compact(cut)
    store.compact(cut - 1)  # already compacted further: a no-op
    with pytest.raises(ValueError):
        store.compact(store.revision() + 10)
    called = []
    with pytest.raises(Compacted) as exc:
        store.watch(ns, first, called.append)
    assert exc.value.compact_revision == cut
    assert called == [], "a Compacted raised by watch() never reaches the callback"
    # the usual recovery: re-list, then watch from the list's revision + 1
    kvs, at = store.range(ns)
    assert [kv.value for kv in kvs] == [b"4"]
    got = Collector()
    w = store.watch(ns, cut, got)
    w2 = store.watch(ns, at + 1, Collector())
    try:
        assert wait_for(lambda: got.has(2))
        assert [e.value for e in got.events] == [b"3", b"4"]
    finally:
        w.cancel()
        w2.cancel()


def test_contract_callback_error_stops_watch(store: Store, ns: str):
    calls = []

    def cb(events):
        calls.append(list(events))
        if events:
            raise RuntimeError("boom")

    w = store.watch(ns, store.revision() + 1, cb)
    try:
        store.txn([], [(ns + "a", b"1")])
        assert wait_for(lambda: len(calls) >= 2)
        assert isinstance(w.error, RuntimeError)
        assert calls[1] == [], "the callback is told once, with an empty batch"
        witnessed_write(store, ns, ns + "a")
        assert len(calls) == 2, "the watch stopped"
    finally:
        w.cancel()


def test_contract_concurrent_writers(store: Store, ns: str):
    """Threads doing read-compare-write increments: no lost update, and a
    watch sees every increment once, in revision order."""
    k = ns + "counter"
    start = store.txn([Compare(k, 0)], [(k, b"0")])
    got = Collector()
    w = store.watch(ns, start + 1, got)
    threads, per_thread = 4, 15

    def work():
        for _ in range(per_thread):
            while True:
                kv = store.get(k)
                if store.txn([Compare(k, kv.mod_revision)], [(k, str(int(kv.value) + 1).encode())]) is not None:
                    break

    ts = [threading.Thread(target=work) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    n = threads * per_thread
    assert store.get(k).value == str(n).encode()
    try:
        assert wait_for(lambda: got.has(n))
        assert [e.value for e in got.events] == [str(i).encode() for i in range(1, n + 1)]
        assert [e.revision for e in got.events] == list(range(start + 1, start + n + 1))
    finally:
        w.cancel()


def test_contract_leadership(store: Store, ns: str):
    """Who leads is read from the store (the leader key, a fenced write), not
    from is_leader() at some instant: on etcd that turns False by itself when
    a lease refresh is late (a busy machine), which is its purpose. The TTL is
    long enough that the lease itself cannot run out here."""
    name = "lead-" + ns.strip("/").replace("/", "-")
    a = store.campaign(name, "a", ttl=5)
    assert wait_for(a.is_leader)
    fa = a.fence()
    b = store.campaign(name, "b", ttl=5)
    # b campaigns while a holds the key: never two leaders, whenever b tries.
    for _ in range(40):
        assert not b.is_leader(), "only one leader"
        time.sleep(0.025)
    assert store.get("/socklb/leader/" + name).value == b"a"
    assert store.txn([fa], [(ns + "leader-write", b"a")]) is not None, "a still leads"
    assert store.txn([b.fence()], [(ns + "leader-write", b"b")]) is None, "a follower's fence never holds"

    a.resign()
    assert not a.is_leader()
    assert wait_for(b.is_leader)
    assert store.txn([fa], [(ns + "leader-write", b"stale a")]) is None, "the old leader's fence fails"
    assert store.txn([b.fence()], [(ns + "leader-write", b"b")]) is not None
    assert store.get(ns + "leader-write").value == b"b"
    a.resign()  # idempotent
    b.close()
    assert not b.is_leader()
    assert store.txn([b.fence()]) is None


def test_contract_closed_store_refuses(store: Store, ns: str):
    store.close()
    for op in (store.revision, lambda: store.get(ns + "a"), lambda: store.range(ns),
               lambda: store.txn([], [(ns + "a", b"")]), lambda: store.watch(ns, 1, lambda e: None),
               lambda: store.campaign("x", "me", 1)):
        with pytest.raises(StoreError):
            op()


# --- embedded only ----------------------------------------------------------

def test_restart_keeps_state_and_history(tmp_path):
    d = tmp_path / "s"
    s = EmbeddedStore(d)
    r1 = s.txn([], [("/k/a", b"1"), ("/k/b", b"2")])
    r2 = s.txn([Compare("/k/a", r1)], [("/k/a", b"1b")], ["/k/b"])
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.get("/k/a")
    s.close()  # idempotent

    s = EmbeddedStore(d)
    try:
        assert s.revision() == r2
        assert s.get("/k/a") == KeyValue("/k/a", b"1b", r1, r2)
        assert s.get("/k/b") is None
        got = Collector()
        w = s.watch("/k/", r1, got)
        assert wait_for(lambda: got.has(4))
        assert [(e.type, e.key, e.revision) for e in got.events] == [
            ("put", "/k/a", r1), ("put", "/k/b", r1), ("put", "/k/a", r2), ("delete", "/k/b", r2)]
        w.cancel()
        assert s.txn([], [("/k/c", b"3")]) == r2 + 1
    finally:
        s.close()


def test_history_is_trimmed(tmp_path):
    s = EmbeddedStore(tmp_path / "s", history=3)
    try:
        revs = [s.txn([], [("/h/k", str(i).encode())]) for i in range(6)]
        # the last 3 revisions are kept
        with pytest.raises(Compacted) as exc:
            s.watch("/h/", revs[2], Collector())
        assert exc.value.compact_revision == revs[3]
        got = Collector()
        w = s.watch("/h/", revs[3], got)
        assert wait_for(lambda: got.has(3))
        assert [e.value for e in got.events] == [b"3", b"4", b"5"]
        w.cancel()
    finally:
        s.close()


def test_lagging_watch_gets_compacted(tmp_path):
    """A watch that falls behind the kept history stops with Compacted:
    .error is set first, then the callback gets [] once."""
    s = EmbeddedStore(tmp_path / "s", history=3)
    gate = threading.Event()
    seen_error = []
    batches = []

    def slow(events):
        batches.append(events)
        if not events:
            seen_error.append(w.error)
            return
        gate.wait(10)

    try:
        w = s.watch("/l/", s.revision() + 1, slow)
        s.txn([], [("/l/k", b"0")])
        assert wait_for(lambda: len(batches) == 1)  # stuck in the callback
        for i in range(1, 8):
            s.txn([], [("/l/k", str(i).encode())])
        gate.set()
        assert wait_for(lambda: seen_error)
        assert isinstance(seen_error[0], Compacted) and isinstance(w.error, Compacted)
        assert w.error.compact_revision == s.revision() - 2
        assert batches[-1] == []
        w.cancel()
    finally:
        gate.set()
        s.close()


def test_batches_are_whole_revisions_in_order(tmp_path, monkeypatch):
    from socklb.controlplane.store import embedded
    monkeypatch.setattr(embedded, "_BATCH_REVISIONS", 3)  # a backlog longer than one batch
    s = EmbeddedStore(tmp_path / "s")
    try:
        start = s.revision() + 1
        expect = []
        for i in range(20):
            if i % 4 == 3:
                s.txn([], [("/other", str(i).encode())])  # a revision with nothing under the prefix
                continue
            rev = s.txn([], [(f"/m/{i}/a", b"a"), (f"/m/{i}/b", b"b")])
            expect += [(rev, f"/m/{i}/a"), (rev, f"/m/{i}/b")]
        got = Collector()
        w = s.watch("/m/", start, got)
        assert wait_for(lambda: got.has(len(expect)))
        assert [(e.revision, e.key) for e in got.events] == expect
        for batch in got.batches:
            assert batch and batch[-1].revision - batch[0].revision < 3
            assert len(batch) % 2 == 0, "both keys of a revision travel together"
        w.cancel()
    finally:
        s.close()


_WRITER = r"""
import sys
from socklb.controlplane.store import open_store
s = open_store(sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    rev = s.txn([], [(f"/ack/{i:06d}", str(i).encode())])
    print(i, rev, flush=True)
    i += 1
"""


def test_kill_9_loses_nothing_acknowledged(tmp_path):
    d = tmp_path / "s"
    p = subprocess.Popen([sys.executable, "-c", _WRITER, str(d)], stdout=subprocess.PIPE, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    lines = []
    try:
        assert p.stdout.readline() == b"ready\n"
        while len(lines) < 60:  # let it run for a while, then kill it mid-loop
            line = p.stdout.readline()
            assert line.endswith(b"\n")
            lines.append(line)
    finally:
        p.send_signal(signal.SIGKILL)
        rest = p.stdout.read()  # printed (so acknowledged) before the kill, still in the pipe
        p.wait()
        p.stdout.close()
    assert p.returncode == -signal.SIGKILL
    tail = rest.split(b"\n")
    lines += [x for x in tail[:-1]]  # a last line without "\n" was cut by the kill: not acknowledged
    acked = dict(tuple(map(int, line.split())) for line in lines)
    assert sorted(acked) == list(range(len(acked)))
    s = EmbeddedStore(d)  # the lock died with the process
    try:
        for i, rev in acked.items():
            kv = s.get(f"/ack/{i:06d}")
            assert kv is not None, f"acknowledged write {i} (revision {rev}) lost"
            assert kv.value == str(i).encode() and kv.mod_revision == rev
        kvs, _ = s.range("/ack/")
        assert len(kvs) in (len(acked), len(acked) + 1), "at most one unacknowledged write on top"
        assert s.revision() == kvs[-1].mod_revision
    finally:
        s.close()


_HOLDER = r"""
import sys
from socklb.controlplane.store import open_store
s = open_store(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
s.close()
"""


def test_lock_file_excludes_a_second_opener(tmp_path):
    d = tmp_path / "s"
    s = EmbeddedStore(d)
    with pytest.raises(StoreError, match=f"already open.*pid {os.getpid()}"):
        EmbeddedStore(d)
    s.close()

    p = subprocess.Popen([sys.executable, "-c", _HOLDER, str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert p.stdout.readline() == b"locked\n"
        with pytest.raises(StoreError, match=f"already open.*pid {p.pid}"):
            open_store(f"embedded://{d}")
    finally:
        p.stdin.close()
        p.wait(10)
        p.stdout.close()
    s = open_store(str(d))
    s.close()


def test_close_cancels_watches_and_resigns(tmp_path):
    s = EmbeddedStore(tmp_path / "s")
    calls = []
    w = s.watch("/w/", 1, calls.append)
    ld = s.campaign("x", "me", 1)
    assert ld.is_leader()
    s.txn([], [("/w/a", b"1")])
    assert wait_for(lambda: calls)
    s.close()
    assert not ld.is_leader() and w.error is None
    assert len(calls) == 1 and calls[0], "closing the store does not call the callback"
    s = EmbeddedStore(tmp_path / "s")
    try:
        assert s.get("/socklb/leader/x") is None
    finally:
        s.close()


def test_stale_leader_key_is_taken_over(tmp_path):
    s = EmbeddedStore(tmp_path / "s")
    r = s.txn([], [("/socklb/leader/x", b"crashed-process")])
    s.close()
    s = EmbeddedStore(tmp_path / "s")
    try:
        ld = s.campaign("x", "me", 1)
        assert ld.is_leader()
        assert s.txn([Compare("/socklb/leader/x", r)]) is None
        assert s.txn([ld.fence()]) is not None
        assert s.get("/socklb/leader/x").value == b"me"
    finally:
        s.close()


def test_open_store_urls(tmp_path):
    for url in (f"embedded://{tmp_path}/a", str(tmp_path / "b"), f"embedded://{tmp_path}/c?history=10"):
        s = open_store(url)
        assert isinstance(s, EmbeddedStore)
        s.close()
    s = open_store(f"embedded://{tmp_path}/c?history=10")
    assert s.history == 10
    s.close()
    from socklb.controlplane.store.etcd import EtcdStore
    e = open_store("etcd://127.0.0.1:1,[::1]:2,localhost?timeout=0.5")
    assert isinstance(e, EtcdStore)
    assert [ep.netloc for ep in e._eps] == ["127.0.0.1:1", "[::1]:2", "localhost:2379"] and e.timeout == 0.5
    e.close()
    for bad in ("", "redis://x", "embedded://", "etcd://", "etcd://h:notaport", "etcd://h:0", "etcd://h:1,",
                "etcd://h:1/path", "etcd://::1:2379", f"embedded://{tmp_path}/d?hist=3",
                f"embedded://{tmp_path}/d?history=x", "etcd://h:1?timeout=-1", "127.0.0.1:2379"):
        with pytest.raises(ValueError):
            open_store(bad)
