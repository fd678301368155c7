"""Socket termination (socklb/dataplane/sockdestroy.py): the sockets of flows to
a target backend die, in the host and in a test network namespace; flows to
other backends and direct connections to the same backend address live on.

Clients are client.py with a few operations of these tests (held connected
UDP sockets, an active TCP connection pinging in a thread) added by a
wrapper script (EXTRA). The namespace client is started with `ip netns
exec` and moved into the test cgroup before it creates a socket.
"""

from __future__ import annotations

import os
import socket

import pytest

import netenv
from netenv import backend, frontend, node_state, poll, service
from support import free_port

from socklb.dataplane import sockdestroy as term

pytestmark = pytest.mark.agent

VIP = "127.96.0.60"
ADDR_A = "127.0.0.2"
ADDR_B = "127.0.0.3"
DEAD = {"ECONNABORTED", "ECONNRESET", "EPIPE"}
MAX_TRIES = 200  # connections opened until both backends have enough (random 50/50)

# Client operations of these tests, added to client.py's.
EXTRA = r'''
import socket, sys, threading, time
sys.path.insert(0, sys.argv.pop(1))
import client

def op_udp_open(self, id, addr, port):
    s = socket.socket(client.family(addr), socket.SOCK_DGRAM)
    s.settimeout(client.IO_TIMEOUT)
    s.connect((addr, port))
    self.socks[id] = s
    s.send(b"ping")
    return {"backend": s.recv(65535).decode(), "peer": client.peer_str(s.getpeername())}

def op_udp_ping(self, id):
    s = self.socks[id]
    try:
        s.send(b"ping")
        return {"backend": s.recv(65535).decode()}
    except Exception as e:
        return {"error": client.errname(e)}

def op_tcp_active(self, id, interval=0.01):
    s = self.socks[id]
    st = self.active[id] = {"ok": 0, "error": None}
    def run():
        while True:
            try:
                s.sendall(b"ping\n")
                client.readline(s)
                st["ok"] += 1
            except Exception as e:
                st["error"] = client.errname(e)
                return
            time.sleep(interval)
    threading.Thread(target=run, daemon=True).start()
    return {}

def op_active_status(self, id):
    return dict(self.active[id])

def op_ping_many(self, prefix):
    ok, errors = 0, {}
    for k, s in list(self.socks.items()):
        if not k.startswith(prefix):
            continue
        try:
            s.sendall(b"ping\n")
            client.readline(s)
            ok += 1
        except Exception as e:
            errors[client.errname(e)] = errors.get(client.errname(e), 0) + 1
    return {"ok": ok, "errors": errors}

client.main(globals())
'''


@pytest.fixture
def xclients(clients):
    """xclients(netns=None, netns_exec=False): client.py plus EXTRA, in the
    test cgroup. netns_exec: started with `ip netns exec NAME` and moved into
    the cgroup by the test before it makes any socket."""
    return lambda netns=None, netns_exec=False: clients(netns, extra=EXTRA, netns_exec=netns_exec)


# --------------------------------------------------------------------------
# the scenario


class Scenario:
    """A TCP and a UDP service on one VIP, backends A and B (servers in the
    host and, on the same ports, in a test namespace), and clients holding
    connections in both."""

    def __init__(self, agent, backends, xclients, netns):
        netenv.require_bpf_build_tools()
        self.ns = netns
        tA, tB = backends("A", ADDR_A), backends("B", ADDR_B)
        uA, uB = backends("A", ADDR_A, proto="udp"), backends("B", ADDR_B, proto="udp")
        for b in (tA, tB, uA, uB):  # the same servers inside the namespace
            backends(b.label, b.addr, b.port, b.proto, netns)
        self.tport = free_port(VIP)
        self.uport = free_port(VIP, socket.SOCK_DGRAM)
        self.tA, self.uA, self.tB = tA, uA, tB
        self.agent = agent(node_state(1,
                                      service("web", [frontend(VIP, self.tport)], [backend(tA), backend(tB)]),
                                      service("dns", [frontend(VIP, self.uport, "udp")], [backend(uA), backend(uB)])))
        bes = self.agent.dump("backends")["backends"]

        def be(addr, port):
            [b] = [b for b in bes if b["address"] == addr and b["port"] == port]
            return b

        self.id_tA, self.id_uA = be(ADDR_A, tA.port)["id"], be(ADDR_A, uA.port)["id"]
        self.id_tB = be(ADDR_B, tB.port)["id"]
        self.fe_tcp = be(ADDR_A, tA.port)["frontendId"]
        self.fe_udp = be(ADDR_A, uA.port)["frontendId"]
        assert self.fe_tcp != self.fe_udp and be(ADDR_B, tB.port)["frontendId"] == self.fe_tcp
        self.host = xclients()
        self.inns = xclients(netns, netns_exec=True)
        assert self.inns.hello["netns"] != self.host.hello["netns"]
        self.conns = {}  # client name -> {id: (kind, backend)}
        for name, c in (("host", self.host), ("ns", self.inns)):
            self.conns[name] = self._open(c)

    def _open(self, c):
        conns, tcp, udp = {}, {"A": 0, "B": 0}, {"A": 0, "B": 0}
        for i in range(MAX_TRIES):
            if min(tcp.values()) >= 2:
                break
            r = c.call("tcp_open", id=f"t{i}", addr=VIP, port=self.tport)
            assert "error" not in r and r["peer"] == [VIP, self.tport], r
            b = r["backend"]
            tcp[b] += 1
            # the second connection to each backend stays busy, the others idle
            kind = "active" if tcp[b] == 2 else "idle"
            conns[f"t{i}"] = (f"tcp-{kind}", b)
            if kind == "active":
                c.call("tcp_active", id=f"t{i}")
        assert min(tcp.values()) >= 2, tcp
        for i in range(MAX_TRIES):
            if min(udp.values()) >= 1:
                break
            r = c.call("udp_open", id=f"u{i}", addr=VIP, port=self.uport)
            assert r["peer"] == [VIP, self.uport], r
            udp[r["backend"]] += 1
            conns[f"u{i}"] = ("udp", r["backend"])
        assert min(udp.values()) >= 1, udp
        # direct connections to backend A's own address: never the LB's
        r = c.call("tcp_open", id="direct-tcp", addr=ADDR_A, port=self.tA.port)
        assert r["backend"] == "A" and r["peer"] == [ADDR_A, self.tA.port], r
        conns["direct-tcp"] = ("direct-tcp", "A")
        r = c.call("udp_open", id="direct-udp", addr=ADDR_A, port=self.uA.port)
        assert r["backend"] == "A", r
        conns["direct-udp"] = ("direct-udp", "A")
        return conns

    def clients(self):
        return (("host", self.host), ("ns", self.inns))

    def targets_a(self):
        T = term.Target
        return [T.backend(self.id_tA), T.backend(self.id_uA)]

    def lb_to_a(self):
        """(client, id) of every load-balanced socket to backend A."""
        return {(n, i) for n, _ in self.clients() for i, (k, b) in self.conns[n].items()
                if b == "A" and not k.startswith("direct")}

    def cookies(self, which):
        out = set()
        for n, c in self.clients():
            ck = c.call("cookies")
            out |= {ck[i] for (m, i) in which if m == n}
        return out

    def check_all_alive(self):
        for n, c in self.clients():
            for i, (kind, b) in self.conns[n].items():
                if kind == "tcp-active":
                    st = c.call("active_status", id=i)
                    assert st["error"] is None, (n, i, st)
                elif kind.endswith("udp"):
                    assert c.call("udp_ping", id=i) == {"backend": b}, (n, i)
                else:
                    r = c.call("tcp_ping", id=i)
                    assert r.get("backend") == b, (n, i, r)

    def check_a_dead_rest_alive(self):
        for n, c in self.clients():
            for i, (kind, b) in self.conns[n].items():
                dead = b == "A" and not kind.startswith("direct")
                if kind == "tcp-active":
                    if dead:
                        st = poll(lambda: c.call("active_status", id=i)["error"], timeout=20)
                        assert st in DEAD, (n, i, st)
                    else:
                        st = c.call("active_status", id=i)
                        assert st["error"] is None and st["ok"] > 0, (n, i, st)
                elif kind.endswith("udp"):
                    r = c.call("udp_ping", id=i)
                    if dead:
                        # the socket was disconnected: send fails (EDESTADDRREQ) or recv reports the abort
                        assert "error" in r, (n, i, r)
                    else:
                        assert r == {"backend": b}, (n, i, r)
                else:
                    r = c.call("tcp_ping", id=i)
                    if dead:
                        assert r.get("error") in DEAD, (n, i, r)
                    else:
                        assert r.get("backend") == b, (n, i, r)
        # new connections through the VIP still work (A is still in the service)
        for n, c in self.clients():
            r = c.call("tcp_many", addr=VIP, port=self.tport, n=10)
            assert r["errors"] == {} and sum(r["counts"].values()) == 10, (n, r)


@pytest.fixture
def scenario(agent, backends, xclients, netns):
    return Scenario(agent, backends, xclients, netns)


# --------------------------------------------------------------------------
# tests


@pytest.mark.parametrize("method", ["kfunc", "netlink"])
def test_terminate_backend_flows(scenario, method):
    s = scenario
    want = s.lb_to_a()
    want_cookies = s.cookies(want)
    assert len(want_cookies) == len(want)
    with term.Terminator(s.agent.pin_dir, method=method) as t:
        assert t.method.value == method
        rep = t.run(s.targets_a())
        print(f"{method}: {rep.summary()} (load {t.load_seconds * 1000:.0f} ms)")
        assert rep.method == method and not rep.dry_run
        assert rep.errors == [], rep.errors
        assert {r.cookie for r in rep.sockets} == want_cookies, rep.sockets
        assert rep.found == rep.destroyed == len(want) and rep.failed == 0, rep
        assert all(r.destroyed and r.dst == ADDR_A for r in rep.sockets), rep.sockets
        # both namespaces were searched and had victims
        assert len({r.netns for r in rep.sockets}) == 2, rep.sockets
        assert {r.proto for r in rep.sockets} == {"tcp", "udp"}
        T = term.Target
        n_tcp = sum(1 for r in rep.sockets if r.proto == "tcp")
        assert rep.per_target[T.backend(s.id_tA)].destroyed == n_tcp
        assert rep.per_target[T.backend(s.id_uA)].destroyed == len(want) - n_tcp
        s.check_a_dead_rest_alive()
        # Nothing is left to find.
        again = t.run(s.targets_a())
        assert again.found == 0, again.sockets


def test_dry_run_frontend_and_count(scenario, monkeypatch, tmp_path):
    s = scenario
    T = term.Target
    want = s.lb_to_a()
    with term.Terminator(s.agent.pin_dir) as t:
        rep = t.run(s.targets_a(), dry_run=True)
        assert rep.dry_run and rep.method == "none" and rep.destroyed == 0
        assert rep.found == len(want) and all(r.result is None for r in rep.sockets), rep
        assert {r.cookie for r in rep.sockets} == s.cookies(want)
        assert {(r.dst, r.dport, r.proto) for r in rep.sockets} == {
            (ADDR_A, s.tA.port, "tcp"), (ADDR_A, s.uA.port, "udp")}
        r0 = rep.sockets[0]
        assert r0.src and r0.sport and r0.family in (socket.AF_INET, socket.AF_INET6) and r0.state == 1

        # A whole frontend: every TCP flow (to A and B), no UDP, no direct socket.
        fe = t.run([T.frontend(s.fe_tcp)], dry_run=True)
        lb_tcp = {(n, i) for n, _ in s.clients() for i, (k, _b) in s.conns[n].items() if k.startswith("tcp")}
        assert {r.cookie for r in fe.sockets} == s.cookies(lb_tcp)
        assert fe.per_target[T.frontend(s.fe_tcp)].found == len(lb_tcp)

        # An exact (frontend, backend) target, and one that matches nothing.
        ex = t.run([T(s.fe_tcp, s.id_tB), T(s.fe_udp, s.id_tA)], dry_run=True)
        assert {r.dst for r in ex.sockets} == {ADDR_B} and ex.per_target[T(s.fe_udp, s.id_tA)].found == 0

        # Stats mode: counts only.
        c = t.count(s.targets_a() + [T.frontend(s.fe_tcp)])
        assert c.sockets == [] and c.destroyed == 0
        n_tcp_a = sum(1 for r in rep.sockets if r.proto == "tcp")
        # the more specific key wins: TCP flows to A count for the backend target
        assert c.per_target[T.backend(s.id_tA)].found == n_tcp_a
        assert c.per_target[T.backend(s.id_uA)].found == len(want) - n_tcp_a
        assert c.per_target[T.frontend(s.fe_tcp)].found == len(lb_tcp) - n_tcp_a
    # nothing was killed
    s.check_all_alive()

    # auto falls back to netlink when the kfunc is not in the BTF, or when
    # the kfunc program does not load; the reason is kept.
    from socklb.dataplane import bpfobj

    build = term.build_object
    with monkeypatch.context() as m:
        m.setattr(bpfobj, "btf_has_func", lambda name, path=None: False)
        with term.Terminator(s.agent.pin_dir) as t:
            assert t.method.value == "netlink" and "no FUNC bpf_sock_destroy" in t.unavailable["kfunc"]
    bad = tmp_path / "bad.o"
    bad.write_bytes(b"not an object")
    with monkeypatch.context() as m:
        m.setattr(term, "build_object", lambda kfunc=True, cache=None: bad if kfunc else build(kfunc, cache))
        with term.Terminator(s.agent.pin_dir) as t:
            assert t.method.value == "netlink" and "does not load" in t.unavailable["kfunc"], t.unavailable
            rep = t.run(s.targets_a(), dry_run=True)
            assert rep.found == len(want) and rep.destroyed == 0
    s.check_all_alive()


def test_dsts_prefilter_and_lazy_records(scenario):
    """run(dsts=...) only looks at sockets connected to the listed backends
    (a target's socket whose backend is not listed is not touched);
    max_records caps the records, not the counts; Report.sockets is a lazy
    list-like sequence."""
    s = scenario
    want = s.lb_to_a()
    cookies = s.cookies(want)
    both = [(ADDR_A, s.tA.port), (ADDR_A, s.uA.port)]
    with term.Terminator(s.agent.pin_dir) as t:
        full = t.run(s.targets_a(), dry_run=True, dsts=both)
        assert {r.cookie for r in full.sockets} == cookies and full.found == len(want), full
        # v4-mapped spelling, raw bytes, a backend not involved: same result
        alt = t.run(s.targets_a(), dry_run=True,
                    dsts=[("::ffff:" + ADDR_A, s.tA.port), (socket.inet_aton(ADDR_A), s.uA.port),
                          (ADDR_B, s.tB.port)])
        assert {r.cookie for r in alt.sockets} == cookies, alt
        if s.tA.port != s.uA.port:
            # only the TCP backend listed: the UDP flows to A are skipped
            tcp = t.run(s.targets_a(), dry_run=True, dsts=both[:1])
            assert tcp.found > 0 and {r.proto for r in tcp.sockets} == {"tcp"}, tcp
            assert tcp.found == sum(1 for r in full.sockets if r.proto == "tcp")
        assert t.run(s.targets_a(), dry_run=True, dsts=[]).found == 0
        assert t.count(s.targets_a(), dsts=both).found == len(want)
        assert t.count(s.targets_a(), dsts=[(ADDR_B, s.tB.port)]).found == 0
        # no hint again: every socket looked up
        assert t.run(s.targets_a(), dry_run=True).found == len(want)
        # records capped, counts not; the sequence behaves like a list
        one = t.run(s.targets_a(), dry_run=True, max_records=1)
        assert one.found == len(want) and len(one.sockets) == 1, one
        assert one.sockets[0].cookie in cookies and one.sockets[-1] == one.sockets[0]
        assert one.sockets[:100] == list(one.sockets) == [one.sockets[0]]
        assert full.sockets[:1] == [full.sockets[0]] and len(full.sockets[:1000]) == len(want)
        with pytest.raises(ValueError):
            t.run(s.targets_a(), dsts=[(ADDR_A, 0)])
        s.check_all_alive()
        rep = t.run(s.targets_a(), dsts=both)
        assert {r.cookie for r in rep.sockets} == cookies and rep.destroyed == len(want), rep
        assert rep.passes >= 2 * rep.netns_scanned
        if term.resume_fixed("tcp") and term.resume_fixed("udp"):
            assert rep.passes == 2 * rep.netns_scanned, rep.passes
        s.check_a_dead_rest_alive()


def test_rescan_without_resume_fix(scenario, monkeypatch):
    """On a kernel without the iterator's resume-by-cookie fix, a namespace
    is walked again after a pass that destroyed something; the report lists
    each socket once."""
    s = scenario
    monkeypatch.setattr(term, "resume_fixed", lambda proto: False)
    want = s.lb_to_a()
    with term.Terminator(s.agent.pin_dir) as t:
        rep = t.run(s.targets_a())
    assert rep.destroyed == rep.found == len(want) == len({r.cookie for r in rep.sockets}), rep
    assert rep.passes > 2 * rep.netns_scanned, rep.passes
    s.check_a_dead_rest_alive()


VIP6 = "fd00:96::20"  # not loopback: only used from inside the test namespace


@pytest.mark.parametrize("method", ["kfunc", "netlink"])
def test_terminate_ipv6_and_v4_mapped(agent, backends, xclients, netns, method):
    """IPv6 sockets (in a namespace, VIP6 -> [::1]) and v4-mapped IPv6 sockets
    (host, ::ffff:VIP -> 127.0.0.x): the records and both destroy paths
    handle their addresses."""
    netenv.require_bpf_build_tools()
    assert not netns.has_default_route()
    backends("A", "::1", 8080, netns=netns)
    backends("B", "::1", 8081, netns=netns)
    a4, b4 = backends("A", ADDR_A), backends("B", ADDR_B)
    tport = free_port(VIP)
    a = agent(node_state(1,
                         service("web6", [frontend(VIP6, 8080)], [backend(("::1", 8080)), backend(("::1", 8081))]),
                         service("web4", [frontend(VIP, tport)], [backend(a4), backend(b4)])))
    bes = {(b["address"], b["port"]): b["id"] for b in a.dump("backends")["backends"]}
    targets = [term.Target.backend(bes[("::1", 8080)]), term.Target.backend(bes[(ADDR_A, a4.port)])]
    mapped = "::ffff:" + VIP
    sides = [(xclients(netns), VIP6, 8080), (xclients(), mapped, tport)]
    conns = []  # (client, id, backend)
    for c, addr, port in sides:
        seen = {"A": 0, "B": 0}
        for i in range(MAX_TRIES):
            if min(seen.values()) >= 1:
                break
            r = c.call("tcp_open", id=f"t{i}", addr=addr, port=port)
            assert r["peer"] == [addr, port], r
            seen[r["backend"]] += 1
            conns.append((c, f"t{i}", r["backend"]))
        assert min(seen.values()) >= 1, seen
    want = set()
    for c, _, _ in sides:
        ck = c.call("cookies")
        want |= {ck[i] for cc, i, b in conns if cc is c and b == "A"}
    with term.Terminator(a.pin_dir, method=method) as t:
        rep = t.run(targets)
    assert rep.failed == 0 and {r.cookie for r in rep.sockets} == want, rep
    assert all(r.family == socket.AF_INET6 and r.destroyed for r in rep.sockets), rep.sockets
    assert {r.dst for r in rep.sockets} == {"::1", ADDR_A}, rep.sockets
    for c, i, b in conns:
        r = c.call("tcp_ping", id=i)
        if b == "A":
            assert r.get("error") in DEAD, (i, r)
        else:
            assert r.get("backend") == "B", (i, r)


def test_timings(agent, backends, xclients):
    """Not an assertion on time (tests record timings, never assert them): prints how long destroying
    N connections took with each method, for the record."""
    netenv.require_bpf_build_tools()
    n = int(os.environ.get("SOCKLB_TERMINATE_N", "400"))
    a, vport = netenv.web_on_two_backends(agent, backends, VIP)
    ids = [b["id"] for b in a.dump("backends")["backends"]]
    c = xclients()
    lines = []
    for method in ("kfunc", "netlink"):
        r = c.call("tcp_open_many", prefix="m", addr=VIP, port=vport, n=n, timeout=300)
        assert r["opened"] == n, r
        with term.Terminator(a.pin_dir, method=method) as t:
            dry = t.run([term.Target.backend(i) for i in ids], dry_run=True)
            rep = t.run([term.Target.backend(i) for i in ids])
        assert rep.destroyed == rep.found == n, rep.summary()
        lines.append(f"{method}: {rep.summary()}; dry run {dry.duration * 1000:.1f} ms; "
                     f"load {t.load_seconds * 1000:.0f} ms")
        r = c.call("ping_many", prefix="m", timeout=300)
        assert r["ok"] == 0 and set(r["errors"]) <= DEAD, r
        c.call("close_many", prefix="m")
    print("\n" + "\n".join(lines))
