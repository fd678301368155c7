"""The etcd store against a real etcd: the same contract tests as the embedded
store, then what only a cluster store has: several replicas, leader election
with fencing, etcd restarts, connection loss, several endpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from support import free_port

from socklb.controlplane.store import Compacted, Compare, Event, Unavailable, open_store
from socklb.controlplane.store.etcd import EtcdStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
import test_store_embedded as contract  # noqa: E402
from test_store_embedded import Collector, wait_for  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

# The store contract (tests/unit/test_store_embedded.py), run here against etcd
# through the `store` and `ns` fixtures below.
globals().update({name: getattr(contract, name) for name in dir(contract) if name.startswith("test_contract_")})


@pytest.fixture
def store(etcd_server):
    s = open_store(etcd_server.url)
    assert isinstance(s, EtcdStore)
    yield s
    s.close()


@pytest.fixture
def ns():
    """A prefix of the test's own on the shared etcd."""
    return f"/t/{uuid.uuid4().hex[:12]}/"


def raises_unavailable(fn) -> bool:
    try:
        fn()
    except Unavailable:
        return True
    return False


def test_two_replicas_see_each_other(etcd_server, ns):
    a, b = open_store(etcd_server.url), open_store(etcd_server.url)
    try:
        k = ns + "k"
        got_a, got_b = Collector(), Collector()
        wa = a.watch(ns, a.revision() + 1, got_a)
        wb = b.watch(ns, b.revision() + 1, got_b)

        r1 = a.txn([Compare(k, 0)], [(k, b"from a")])
        assert b.get(k).value == b"from a"
        assert b.txn([Compare(k, 0)], [(k, b"from b")]) is None, "b's compare sees a's write"
        r2 = b.txn([Compare(k, r1)], [(k, b"from b")])
        assert r2 == r1 + 1 and a.get(k).mod_revision == r2

        # optimistic concurrency across replicas: exactly one of two racing writers wins
        barrier = threading.Barrier(2)
        results = {}

        def race(name, s):
            barrier.wait()
            results[name] = s.txn([Compare(k, r2)], [(k, name.encode())])

        ts = [threading.Thread(target=race, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        winners = [n for n, r in results.items() if r is not None]
        assert len(winners) == 1 and a.get(k).value == winners[0].encode()

        expect = [(r1, b"from a"), (r2, b"from b"), (r2 + 1, winners[0].encode())]
        for got in (got_a, got_b):
            assert wait_for(lambda: got.has(3))
            assert [(e.revision, e.value) for e in got.events] == expect
        wa.cancel()
        wb.cancel()
    finally:
        a.close()
        b.close()


def test_leadership_moves_between_replicas(etcd_server, ns):
    """Who leads is read from the leader key, then confirmed by is_leader()
    and a fenced write: never from is_leader() at one instant, which turns
    False by itself when a lease refresh is late on a busy machine. The TTL
    is long enough that the lease cannot run out while the test looks."""
    name = "lead-" + ns.split("/")[2]
    key = "/socklb/leader/" + name
    a, b = open_store(etcd_server.url), open_store(etcd_server.url)
    try:
        la, lb = a.campaign(name, "replica-a", ttl=5), b.campaign(name, "replica-b", ttl=5)
        assert wait_for(lambda: a.get(key) is not None)
        holder = a.get(key).value
        (leader, lstore), (follower, fstore) = ((la, a), (lb, b)) if holder == b"replica-a" else ((lb, b), (la, a))
        assert holder == leader.identity.encode()
        assert wait_for(leader.is_leader)
        for _ in range(50):  # over ~1 s, the follower trying at least twice: never two leaders
            assert not (la.is_leader() and lb.is_leader())
            assert not follower.is_leader()
            threading.Event().wait(0.02)
        old = leader.fence()
        assert lstore.txn([old], [(ns + "duty", b"old leader")]) is not None
        assert fstore.txn([follower.fence()], [(ns + "duty", b"follower")]) is None

        leader.close()
        assert not leader.is_leader()
        assert wait_for(follower.is_leader)
        assert lstore.txn([old], [(ns + "duty", b"old leader again")]) is None, "fenced out"
        assert fstore.txn([follower.fence()], [(ns + "duty", b"new leader")]) is not None
        assert a.get(ns + "duty").value == b"new leader"
        assert fstore.get("/socklb/leader/" + name).value == follower.identity.encode()
    finally:
        a.close()
        b.close()


_CAMPAIGNER = r"""
import sys, time
from socklb.controlplane.store import open_store
s = open_store(sys.argv[1])
ld = s.campaign(sys.argv[2], "child", ttl=int(sys.argv[3]))
while not ld.is_leader():
    time.sleep(0.01)
print("leader", ld.fence().mod_revision, flush=True)
sys.stdin.read()
"""


def test_crashed_leader_is_replaced_and_fenced(etcd_server, ns):
    """kill -9 of the leader: no resign; its lease expires, the other replica
    takes over, and a write fenced with the dead leader's fence fails."""
    name = "crash-" + ns.split("/")[2]
    # A lease of 3 s: a child slowed down by a busy machine still refreshes it in time (the test is
    # about the lease running out after the kill, not before); the survivor takes over <= 3 s after it.
    p = subprocess.Popen([sys.executable, "-c", _CAMPAIGNER, etcd_server.url, name, "3"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    s = open_store(etcd_server.url)
    try:
        line = p.stdout.readline().split()
        assert line[0] == b"leader"
        dead_fence = Compare("/socklb/leader/" + name, int(line[1]))
        ld = s.campaign(name, "survivor", ttl=3)
        for _ in range(25):  # the survivor campaigns (every 0.5 s) while the child holds the key
            assert not ld.is_leader()
            threading.Event().wait(0.04)
        assert s.txn([dead_fence]) is not None, "the child leads for now"
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert wait_for(ld.is_leader, timeout=30)
        assert s.txn([dead_fence], [(ns + "duty", b"zombie")]) is None
        assert s.txn([ld.fence()], [(ns + "duty", b"survivor")]) is not None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdin.close()
        p.stdout.close()
        s.close()


def test_store_recovers_after_etcd_restart(etcd_factory, ns):
    srv = etcd_factory()
    s = open_store(srv.url)
    try:
        r1 = s.txn([], [(ns + "a", b"1")])
        got = Collector()
        w = s.watch(ns, r1, got)
        assert wait_for(lambda: got.has(1))

        srv.stop()
        k = ns + "a"
        for op in (s.revision, lambda: s.get(k), lambda: s.range(ns), lambda: s.txn([], [(k, b"x")]),
                   lambda: s.watch(ns, r1, Collector())):
            assert wait_for(lambda: raises_unavailable(op), timeout=10), op

        srv.start()  # same member, same data dir, same port
        assert wait_for(lambda: not raises_unavailable(lambda: s.get(k)))
        assert s.get(k).value == b"1"
        r2 = s.txn([Compare(k, r1)], [(k, b"2")])
        assert r2 == r1 + 1, "state and revisions survived the restart"
        assert wait_for(lambda: got.has(2)), "the same Watch resumed by itself"
        assert got.events == [Event("put", k, b"1", r1), Event("put", k, b"2", r2)]
        assert w.error is None
        w.cancel()
    finally:
        s.close()


def test_watch_resumes_after_connection_loss(etcd_server, tcp_proxy, ns):
    proxy = tcp_proxy(("127.0.0.1", etcd_server.client_port))
    via_proxy, direct = open_store(f"etcd://{proxy.endpoint}"), open_store(etcd_server.url)
    try:
        got = Collector()
        w = via_proxy.watch(ns, direct.revision() + 1, got)
        r1 = direct.txn([], [(ns + "a", b"1")])
        assert wait_for(lambda: got.has(1))

        proxy.unplug()
        assert wait_for(lambda: raises_unavailable(lambda: via_proxy.get(ns + "a")), timeout=10)
        r2 = direct.txn([], [(ns + "b", b"2")])
        r3 = direct.txn([], deletes=[ns + "a"])
        proxy.plug()

        # A later write, once delivered, proves that whatever the resumed watch was going to
        # deliver before it (a change twice, say) has been delivered.
        r4 = direct.txn([], [(ns + "c", b"later")])
        assert wait_for(lambda: got.saw(r4))
        assert got.events == [Event("put", ns + "a", b"1", r1), Event("put", ns + "b", b"2", r2),
                              Event("delete", ns + "a", None, r3), Event("put", ns + "c", b"later", r4)], \
            "every change once, in order"
        assert w.error is None
        w.cancel()
    finally:
        via_proxy.close()
        direct.close()


def test_watch_compacted_while_disconnected(etcd_server, tcp_proxy, ns):
    """The resume revision was compacted while the watch was cut off:
    .error = Compacted, then the callback gets [] once, and the watch stops."""
    proxy = tcp_proxy(("127.0.0.1", etcd_server.client_port))
    via_proxy, direct = open_store(f"etcd://{proxy.endpoint}"), open_store(etcd_server.url)
    try:
        errors_seen = []
        got = Collector()

        def cb(events):
            got(events)
            if not events:
                errors_seen.append(w.error)

        w = via_proxy.watch(ns, direct.revision() + 1, cb)
        direct.txn([], [(ns + "a", b"1")])
        assert wait_for(lambda: got.has(1))
        proxy.unplug()
        direct.txn([], [(ns + "a", b"2")])
        cut = direct.txn([], [(ns + "a", b"3")])
        direct.compact(cut)
        proxy.plug()
        assert wait_for(lambda: errors_seen)
        assert isinstance(errors_seen[0], Compacted) and errors_seen[0].compact_revision == cut
        assert got.batches[-1] == [] and len(got.events) == 1
        w.cancel()
    finally:
        via_proxy.close()
        direct.close()


def test_several_endpoints_fail_over(etcd_server, tcp_proxy, ns):
    dead = free_port()
    s = open_store(f"etcd://127.0.0.1:{dead},{etcd_server.endpoint}")
    try:
        for _ in range(3):  # a read tries the next endpoint within the call
            assert s.revision() >= 1
            assert s.range(ns)[0] == []
        for i in range(3):  # ... and later calls stay on the endpoint that works
            assert s.txn([], [(ns + f"k{i}", b"1")]) is not None
    finally:
        s.close()

    proxy = tcp_proxy(("127.0.0.1", etcd_server.client_port))
    s, direct = open_store(f"etcd://{proxy.endpoint},{etcd_server.endpoint}"), open_store(etcd_server.url)
    try:
        got = Collector()
        w = s.watch(ns, direct.revision() + 1, got)
        r1 = direct.txn([], [(ns + "a", b"1")])
        assert wait_for(lambda: got.has(1))
        proxy.unplug()  # the first endpoint goes away for good
        r2 = direct.txn([], [(ns + "a", b"2")])
        for _ in range(3):
            assert s.get(ns + "a").mod_revision == r2
        assert wait_for(lambda: got.has(2)), "the watch moved to the other endpoint"
        assert [e.revision for e in got.events] == [r1, r2] and w.error is None
        assert s.txn([Compare(ns + "a", r2)], [(ns + "a", b"3")]) == r2 + 1
        w.cancel()
    finally:
        s.close()
        direct.close()


def test_client_tls_with_certificates_from_socklb_certs(etcd_factory, tmp_path, ns):
    """etcd as deploy/k8s runs it (TLS, --client-cert-auth): the control
    plane's certificate reads and writes; no certificate, a certificate of
    another CA, or none at all cannot even read (nothing past the control
    plane's validation can reach the store)."""
    from socklb import certs
    from socklb.controlplane.store import StoreError

    pki, other = tmp_path / "pki", tmp_path / "other"
    certs.ensure(certs.DirSecrets(pki))
    certs.ensure(certs.DirSecrets(other))
    srv = etcd_factory(tls=pki)
    cp = pki / "socklb-controlplane-tls"
    url = f"{srv.url}?timeout=3&ca={cp / 'ca.crt'}"
    good = open_store(f"{url}&cert={cp / 'tls.crt'}&key={cp / 'tls.key'}")
    assert "tls" in repr(good)
    try:
        rev = good.txn([Compare(f"{ns}/k", 0)], [(f"{ns}/k", b"v")])
        assert rev and good.get(f"{ns}/k").value == b"v"
    finally:
        good.close()
    stranger = other / "socklb-controlplane-tls"
    for bad_url in (url, f"{url}&cert={stranger / 'tls.crt'}&key={stranger / 'tls.key'}", srv.url + "?timeout=3"):
        s = open_store(bad_url)
        try:
            with pytest.raises(StoreError):
                s.get(f"{ns}/k")
        finally:
            s.close()
    for bad, msg in ((f"{url}&cert={cp / 'tls.crt'}", "go together"),
                     (f"{srv.url}?cert={cp / 'tls.crt'}&key={cp / 'tls.key'}", "needs `ca`"),
                     (f"{srv.url}?ca={tmp_path / 'missing.crt'}", "missing.crt"),
                     (f"{srv.url}?tls=1", "unknown option")):
        with pytest.raises(ValueError, match=msg):
            open_store(bad)
