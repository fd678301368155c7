"""Socket termination over several network namespaces walked in parallel
threads (Terminator(workers=N), netns.in_each_netns) and with the forced
sequential path (workers=1, $SOCKLB_NETNS_WORKERS=1): the same sockets die
either way, every namespace is reported, the others live on.

Each test namespace has backends A and B listening on its loopback and a
client (started with `ip netns exec`, moved into the test cgroup) holding
load-balanced connections to both.
"""

from __future__ import annotations

import threading

import pytest

import netenv
from netenv import backend, frontend, node_state, service
from support import free_port

from socklb.dataplane import netns as dp_netns
from socklb.dataplane import sockdestroy as term
from socklb.dataplane.iterrun import Hooks

pytestmark = pytest.mark.agent

VIP = "127.96.0.64"
ADDR_A = "127.0.0.2"
ADDR_B = "127.0.0.3"
NAMESPACES = 4
MAX_TRIES = 200  # connections opened per namespace until both backends have two (random 50/50)
DEAD = {"ECONNABORTED", "ECONNRESET", "EPIPE"}


class Lab:
    """A TCP service VIP -> A, B; NAMESPACES namespaces with both backends
    and a client holding at least two connections to each."""

    def __init__(self, agent, backends, clients, netns_factory):
        netenv.require_bpf_build_tools()
        tA, tB = backends("A", ADDR_A), backends("B", ADDR_B)
        self.port = free_port(VIP)
        self.agent = agent(node_state(1, service("web", [frontend(VIP, self.port)], [backend(tA), backend(tB)])))
        [self.id_a] = [b["id"] for b in self.agent.dump("backends")["backends"]
                       if b["address"] == ADDR_A and b["port"] == tA.port]
        self.nss = [netns_factory() for _ in range(NAMESPACES)]
        self.conns: list[tuple[object, dict[str, str]]] = []  # (client, {id: backend}) per namespace
        for ns in self.nss:
            for b in (tA, tB):
                backends(b.label, b.addr, b.port, b.proto, ns)
            c = clients(ns, netns_exec=True)
            got: dict[str, str] = {}
            for i in range(MAX_TRIES):
                if min(sum(1 for b in got.values() if b == x) for x in "AB") >= 2:
                    break
                r = c.call("tcp_open", id=f"t{i}", addr=VIP, port=self.port)
                assert "error" not in r, r
                got[f"t{i}"] = r["backend"]
            assert {"A", "B"} <= set(got.values()), got
            self.conns.append((c, got))

    def paths(self) -> list[str]:
        return [str(ns.path) for ns in self.nss]

    def a_cookies(self) -> set[int]:
        out = set()
        for c, got in self.conns:
            ck = c.call("cookies")
            out |= {ck[i] for i, b in got.items() if b == "A"}
        return out

    def check_a_dead_b_alive(self) -> None:
        for c, got in self.conns:
            for i, b in got.items():
                r = c.call("tcp_ping", id=i)
                if b == "A":
                    assert r.get("error") in DEAD, (i, r)
                else:
                    assert r.get("backend") == "B", (i, r)


class Threads(Hooks):
    """Records the thread each namespace was walked in; with `meet` > 1 the
    first `meet` namespaces wait for each other (a barrier), which only
    passes if that many threads walk namespaces at the same time."""

    def __init__(self, meet: int = 1):
        self.names: dict[str, str] = {}  # netns ident -> thread name
        self.barrier = threading.Barrier(meet, timeout=30) if meet > 1 else None
        self._lock = threading.Lock()
        self._arrived = 0

    def netns(self, ns) -> None:
        with self._lock:
            self.names[ns.ident] = threading.current_thread().name
            self._arrived += 1
            wait = self.barrier is not None and self._arrived <= self.barrier.parties
        if wait:
            self.barrier.wait()


@pytest.fixture
def lab(agent, backends, clients, netns_factory):
    return Lab(agent, backends, clients, netns_factory)


@pytest.mark.parametrize("method", ["kfunc", "netlink"])
@pytest.mark.parametrize("workers", [1, 3])
def test_terminate_in_parallel_and_sequential_namespaces(lab, method, workers):
    want = lab.a_cookies()
    target = [term.Target.backend(lab.id_a)]
    with term.Terminator(lab.agent.pin_dir, method=method, netns=lab.paths(), workers=workers) as t:
        assert t.method.value == method and t.workers == workers
        seen = t.count(target)
        assert seen.found == len(want) and seen.netns_scanned == NAMESPACES, seen
        hooks = Threads(meet=workers)
        rep = t.run(target, hooks=hooks)
    assert rep.errors == [] and rep.failed == 0, rep
    assert {r.cookie for r in rep.sockets} == want and rep.destroyed == rep.found == len(want), rep
    # every namespace walked once, in the order given, and had victims
    assert rep.netns_scanned == NAMESPACES and len(rep.per_netns) == NAMESPACES, rep.per_netns
    assert [nc.path for nc in rep.per_netns.values()] == lab.paths()
    assert all(nc.found >= 2 and nc.destroyed == nc.found for nc in rep.per_netns.values()), rep.per_netns
    assert len({r.netns for r in rep.sockets}) == NAMESPACES
    threads = set(hooks.names.values())
    if workers == 1:
        assert threads == {term.Terminator.thread_name}, threads
    else:
        # the barrier passed: `workers` threads walked namespaces at once
        assert len(threads) == workers and all(n.startswith(f"{term.Terminator.thread_name}-") for n in threads)
    lab.check_a_dead_b_alive()


def test_workers_setting(lab, monkeypatch):
    """No workers given: $SOCKLB_NETNS_WORKERS, else one per CPU; 1 forces
    the sequential path, which finds the same sockets as the parallel one."""
    monkeypatch.setenv(dp_netns.WORKERS_ENV, "1")
    target = [term.Target.backend(lab.id_a)]
    with term.Terminator(lab.agent.pin_dir, netns=lab.paths()) as seq:
        assert seq.workers == 1
        one = seq.run(target, dry_run=True)
    monkeypatch.delenv(dp_netns.WORKERS_ENV)
    with term.Terminator(lab.agent.pin_dir, netns=lab.paths(), workers=NAMESPACES) as par:
        assert par.workers == NAMESPACES
        many = par.run(target, dry_run=True)
    with term.Terminator(lab.agent.pin_dir, netns=lab.paths()) as auto:
        assert auto.workers == dp_netns.netns_workers() >= 1
    assert {r.cookie for r in one.sockets} == {r.cookie for r in many.sockets} == lab.a_cookies()
    assert list(one.per_netns) == list(many.per_netns)
    monkeypatch.setenv(dp_netns.WORKERS_ENV, "0")
    with pytest.raises(ValueError):
        term.Terminator(lab.agent.pin_dir, netns=lab.paths())


class Reads(Hooks):
    """The iterator reads (key) made in each namespace, by thread."""

    def __init__(self):
        self.current: dict[int, str] = {}  # thread -> netns ident
        self.reads: dict[str, list[str]] = {}

    def netns(self, ns) -> None:
        self.current[threading.get_ident()] = ns.ident
        self.reads.setdefault(ns.ident, [])

    def read(self, key: str, seconds: float, size: int) -> None:
        self.reads[self.current[threading.get_ident()]].append(key)


@pytest.mark.parametrize("workers", [1, 2])
def test_namespace_without_sockets_is_not_walked(lab, netns_factory, workers):
    """A namespace whose sockstat counts no TCP or UDP socket is entered
    but no iterator is read there; the others are walked as before."""
    empty = netns_factory()
    target = [term.Target.backend(lab.id_a)]
    with dp_netns.entered(empty.path) as ns:
        assert dp_netns.sockets_in_use() == {"tcp": 0, "udp": 0}
        ident = ns.ident
    with term.Terminator(lab.agent.pin_dir, netns=[*lab.paths(), str(empty.path)], workers=workers) as t:
        hooks = Reads()
        rep = t.run(target, dry_run=True, hooks=hooks)
        listing = t.list_cgroups(None, hooks=(sock_hooks := Reads()))
    assert rep.netns_scanned == NAMESPACES + 1 and rep.per_netns[ident].found == 0, rep.per_netns
    assert {r.cookie for r in rep.sockets} == lab.a_cookies()
    assert hooks.reads[ident] == [] and sock_hooks.reads[ident] == [], (hooks.reads, sock_hooks.reads)
    # the namespaces with TCP sockets had their TCP iterators read
    assert all("tcp" in hooks.reads[i] for i in rep.per_netns if i != ident), hooks.reads
    assert all("sock_tcp" in sock_hooks.reads[i] for i in listing.per_netns if i != ident), sock_hooks.reads
