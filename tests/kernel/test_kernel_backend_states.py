"""No usable backend -> ECONNREFUSED; DRAINING backends keep their flows."""

import socket

import pytest

from netenv import backend, frontend, node_state, service
from support import free_port

pytestmark = pytest.mark.agent

VIP_EMPTY = "127.96.0.40"
VIP_SICK = "127.96.0.41"
VIP = "127.96.0.42"


def test_no_backend_refused(agent, backends, clients):
    # Decoys listen on the VIPs themselves: a connection that slipped through
    # untranslated would reach them instead of being refused.
    tport = free_port(VIP_EMPTY)
    uport = free_port(VIP_EMPTY, socket.SOCK_DGRAM)
    decoys = [backends("decoy", VIP_EMPTY, tport), backends("decoy", VIP_EMPTY, uport, "udp"),
              backends("decoy", VIP_SICK, tport), backends("decoy", VIP_SICK, uport, "udp")]
    # Live servers behind quarantined entries: they must not be used.
    sick_t = backends("sick", "127.0.0.5", tport)
    sick_u = backends("sick", "127.0.0.5", uport, "udp")
    a = agent(node_state(
        1,
        service("empty", [frontend(VIP_EMPTY, tport), frontend(VIP_EMPTY, uport, "udp")], []),
        service("sick", [frontend(VIP_SICK, tport), frontend(VIP_SICK, uport, "udp")],
                [backend(sick_t, state="quarantined"), backend(sick_u, state="quarantined")]),
    ))
    c = clients()
    for vip in (VIP_EMPTY, VIP_SICK):
        assert c.call("connect_error", addr=vip, port=tport)["error"] == "ECONNREFUSED", vip
        assert c.call("sendto_error", addr=vip, port=uport)["error"] == "ECONNREFUSED", vip
        assert c.call("connect_error", addr=vip, port=uport, proto="udp")["error"] == "ECONNREFUSED", vip
        r = c.call("tcp_many", addr=vip, port=tport, n=5)
        assert r["counts"] == {} and r["errors"] == {"ECONNREFUSED": 5}, (vip, r)
    assert all(d.accepted == 0 and d.requests == 0 for d in decoys)
    assert sick_t.accepted == 0 and sick_u.requests == 0
    counters = a.dump("counters")
    assert int(counters.get("noBackend", 0)) >= 2 * (3 + 5), counters


def test_draining_backend_keeps_existing_connection(agent, backends, clients):
    b0 = backends("backend-0", "127.0.0.2")
    b1 = backends("backend-1", "127.0.0.3")
    vport = free_port(VIP)
    a = agent(node_state(1, service("web", [frontend(VIP, vport)], [backend(b1)])))
    c = clients()
    r = c.call("tcp_open", id="old", addr=VIP, port=vport)
    assert r == {"peer": [VIP, vport], "backend": "backend-1"}, r

    old_flow = {"frontend": {"address": VIP, "port": vport, "protocol": "PROTOCOL_TCP"},
                "backendAddress": "127.0.0.3", "backendPort": b1.port}

    def flows():
        return [{k: f.get(k) for k in old_flow} for f in a.dump("flows").get("flows", [])]

    assert flows() == [old_flow]

    r = a.apply(node_state(2, service("web", [frontend(VIP, vport)],
                                      [backend(b0), backend(b1, state="draining")])))
    assert r.returncode == 0, r.stdout + r.stderr
    assert a.applied_version() == 2
    states = {b["address"]: b.get("state") for b in a.dump("backends")["backends"]}
    assert set(states) == {"127.0.0.2", "127.0.0.3"}, states
    assert states["127.0.0.3"] == "BACKEND_STATE_DRAINING", states
    assert states["127.0.0.2"] in (None, "BACKEND_STATE_ACTIVE", "BACKEND_STATE_UNSPECIFIED"), states

    # No new connection goes to the draining backend ...
    accepted_before = b1.accepted
    r = c.call("tcp_many", addr=VIP, port=vport, n=50)
    assert r["errors"] == {} and r["counts"] == {"backend-0": 50}, r
    assert b1.accepted == accepted_before
    # ... while the existing one keeps working, still showing the VIP.
    for _ in range(3):
        r = c.call("tcp_ping", id="old")
        assert r == {"backend": "backend-1", "peer": [VIP, vport]}, r
    # its flow record is still there (the new connections are closed)
    assert flows() == [old_flow]

    # Quarantining the last active backend: refused, old connection unaffected.
    r = a.apply(node_state(3, service("web", [frontend(VIP, vport)],
                                      [backend(b0, state="quarantined"), backend(b1, state="draining")])))
    assert r.returncode == 0, r.stdout + r.stderr
    assert c.call("connect_error", addr=VIP, port=vport)["error"] == "ECONNREFUSED"
    assert c.call("tcp_ping", id="old") == {"backend": "backend-1", "peer": [VIP, vport]}
