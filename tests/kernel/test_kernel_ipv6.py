"""IPv6 VIPs (inside a test namespace) and v4-mapped IPv6 sockets."""

import socket

import pytest

from netenv import (
    assert_proportions, backend, frontend, node_state, peer, service,
)
from support import free_port

pytestmark = pytest.mark.agent

VIP6 = "fd00:96::10"  # not loopback: only used from inside the test namespace
VIP4 = "127.96.0.30"


def test_ipv6_vip_in_netns(agent, backends, clients, netns):
    assert not netns.has_default_route()
    port = 8080
    # backend port 0 = the frontend's port (8080); the other has its own port
    tcp = [backends("backend-0", "::1", 8080, netns=netns), backends("backend-1", "::1", 8081, netns=netns)]
    udp = [backends("backend-0", "::1", 8080, "udp", netns), backends("backend-1", "::1", 8081, "udp", netns)]
    a = agent(node_state(1, service(
        "web6",
        [frontend(VIP6, port, "tcp"), frontend(VIP6, port, "udp")],
        [backend(("::1", 0)), backend(("::1", 8081))],
    )))
    bes = a.dump("backends")["backends"]
    assert sorted((b["address"], b["port"]) for b in bes) == sorted(
        [("::1", 8080), ("::1", 8081)] * 2), bes

    c = clients(netns=netns)
    n = 200
    r = c.call("tcp_many", addr=VIP6, port=port, n=n)
    assert r["errors"] == {}, r
    assert_proportions(r["counts"], n, {"backend-0": 0.5, "backend-1": 0.5})
    assert r["peers"] == {peer(VIP6, port): n}, r["peers"]

    r = c.call("udp_sendto", addr=VIP6, port=port, n=n)
    assert r["errors"] == {}, r
    assert r["sources"] == {peer(VIP6, port): n}, r["sources"]
    assert_proportions(r["counts"], n, {"backend-0": 0.5, "backend-1": 0.5})

    r = c.call("udp_connected", addr=VIP6, port=port, n=5)
    assert r.get("error") is None and r["errors"] == {}, r
    assert r["peer"] == [VIP6, port] and len(r["counts"]) == 1, r

    # An IPv6 frontend does not use IPv4 backends (and vice versa): a v4
    # address of the namespace is not translated.
    assert c.call("connect_error", addr="10.96.0.10", port=port)["error"] == "ENETUNREACH"
    del tcp, udp


def test_v4_mapped_ipv6_socket_to_ipv4_vip(agent, backends, clients):
    tcp = [backends(f"backend-{i}", f"127.0.0.{i + 2}") for i in range(2)]
    udp = [backends(f"backend-{i}", f"127.0.0.{i + 2}", proto="udp") for i in range(2)]
    tport = free_port(VIP4)
    uport = free_port(VIP4, socket.SOCK_DGRAM)
    agent(node_state(1,
                     service("tcp4", [frontend(VIP4, tport)], [backend(b) for b in tcp]),
                     service("udp4", [frontend(VIP4, uport, "udp")], [backend(b) for b in udp])))
    c = clients()
    mapped = "::ffff:" + VIP4
    n = 200
    # IPv4 socket and IPv6 socket with a v4-mapped address find the same service.
    for addr in (VIP4, mapped):
        r = c.call("tcp_many", addr=addr, port=tport, n=n)
        assert r["errors"] == {}, (addr, r)
        assert_proportions(r["counts"], n, {"backend-0": 0.5, "backend-1": 0.5})
        assert r["peers"] == {peer(addr, tport): n}, (addr, r["peers"])

    r = c.call("udp_sendto", addr=mapped, port=uport, n=n)
    assert r["errors"] == {}, r
    assert r["sources"] == {peer(mapped, uport): n}, r["sources"]
    assert_proportions(r["counts"], n, {"backend-0": 0.5, "backend-1": 0.5})

    r = c.call("udp_connected", addr=mapped, port=uport, n=5)
    assert r.get("error") is None and r["errors"] == {}, r
    assert r["peer"] == [mapped, uport] and len(r["counts"]) == 1, r
