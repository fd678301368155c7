"""TCP and UDP through a loopback VIP (root namespace, test cgroup only)."""

import socket

import pytest

from netenv import (
    assert_proportions, backend, frontend, node_state, peer, service,
)
from support import free_port

pytestmark = pytest.mark.agent

VIP = "127.96.0.10"
VIP2 = "127.96.0.11"


def test_tcp_weights_getpeername_direct_and_outside(agent, backends, clients, cgroup):
    b0 = backends("backend-0", "127.0.0.2")
    b1 = backends("backend-1", "127.0.0.3")
    vport = free_port(VIP)
    a = agent(node_state(1, service("web", [frontend(VIP, vport)],
                                    [backend(b0, weight=3), backend(b1, weight=1)])))

    # The programmed table holds the backends 3:1.
    fes = a.dump("services")["frontends"]
    assert len(fes) == 1, fes
    ids = {b["address"]: b["id"] for b in a.dump("backends")["backends"]}
    slots = fes[0]["slots"]
    assert slots.count(ids["127.0.0.2"]) == 3 * slots.count(ids["127.0.0.3"]) > 0, (slots, ids)

    c = clients()
    n = 400
    r = c.call("tcp_many", addr=VIP, port=vport, n=n)
    assert r["errors"] == {}, r
    assert_proportions(r["counts"], n, {"backend-0": 0.75, "backend-1": 0.25})
    # getpeername() reports the VIP, never the backend
    assert r["peers"] == {peer(VIP, vport): n}, r["peers"]

    # A direct connection to a backend is left alone.
    r = c.call("tcp_many", addr="127.0.0.2", port=b0.port, n=10)
    assert r["errors"] == {} and r["counts"] == {"backend-0": 10}, r
    assert r["peers"] == {peer("127.0.0.2", b0.port): 10}, r

    # A process outside the test cgroup is not translated: nothing listens
    # on the VIP itself, so it is refused.
    outside = clients(in_cgroup=False)
    assert outside.pid not in cgroup.pids()
    r = outside.call("connect_error", addr=VIP, port=vport)
    assert r["error"] == "ECONNREFUSED", r

    counters = a.dump("counters")
    assert int(counters.get("translations", 0)) >= n, counters


def test_udp_unconnected_and_connected(agent, backends, clients):
    u0 = backends("backend-0", "127.0.0.2", proto="udp")
    u1 = backends("backend-1", "127.0.0.3", proto="udp")
    vport = free_port(VIP, socket.SOCK_DGRAM)
    a = agent(node_state(1, service("dns", [frontend(VIP, vport, "udp")],
                                    [backend(u0), backend(u1)])))
    c = clients()

    # Unconnected: every datagram is balanced; every reply comes from the VIP.
    n = 200
    r = c.call("udp_sendto", addr=VIP, port=vport, n=n)
    assert r["errors"] == {}, r
    assert r["sources"] == {peer(VIP, vport): n}, r["sources"]
    assert_proportions(r["counts"], n, {"backend-0": 0.5, "backend-1": 0.5})

    # Connected: getpeername() is the VIP; send/recv (and recvfrom) work and
    # stay on the one backend chosen at connect().
    r = c.call("udp_connected", addr=VIP, port=vport, n=20)
    assert r.get("error") is None and r["errors"] == {}, r
    assert r["peer"] == [VIP, vport], r
    assert r["sources"] == {peer(VIP, vport): 20}, r
    assert len(r["counts"]) == 1 and sum(r["counts"].values()) == 21, r
    assert set(r["counts"]) <= {"backend-0", "backend-1"}, r

    counters = a.dump("counters")
    assert int(counters.get("revNatHits", 0)) >= n, counters


def test_udp_one_socket_two_vips(agent, backends, clients):
    """One unconnected socket alternating between two VIPs: each reply is
    reported from the VIP that was asked and came from that VIP's backends."""
    s1 = [backends(f"svc1-{i}", f"127.0.1.{i + 1}", proto="udp") for i in range(2)]
    s2 = [backends(f"svc2-{i}", f"127.0.2.{i + 1}", proto="udp") for i in range(2)]
    p1 = free_port(VIP, socket.SOCK_DGRAM)
    p2 = free_port(VIP2, socket.SOCK_DGRAM)
    agent(node_state(1,
                     service("one", [frontend(VIP, p1, "udp")], [backend(b) for b in s1]),
                     service("two", [frontend(VIP2, p2, "udp")], [backend(b) for b in s2])))
    c = clients()
    n = 50
    r = c.call("udp_multi", targets=[[VIP, p1], [VIP2, p2]], n=n)
    assert r["errors"] == {}, r
    rep = r["replies"]
    assert set(rep) == {peer(VIP, p1), peer(VIP2, p2)}, rep
    assert list(rep[peer(VIP, p1)]) == [peer(VIP, p1)], rep
    assert list(rep[peer(VIP2, p2)]) == [peer(VIP2, p2)], rep
    assert_proportions(rep[peer(VIP, p1)][peer(VIP, p1)], n, {"svc1-0": 0.5, "svc1-1": 0.5})
    assert_proportions(rep[peer(VIP2, p2)][peer(VIP2, p2)], n, {"svc2-0": 0.5, "svc2-1": 0.5})
