"""Client affinity (keyed by the client's network namespace) and Maglev."""

import time

import pytest

from netenv import backend, frontend, node_state, service, tries_for
from support import free_port

pytestmark = pytest.mark.agent

VIP = "127.96.0.20"


def test_affinity_sticks_then_expires(agent, backends, clients):
    timeout = 1  # seconds
    bs = [backends(f"backend-{i}", f"127.0.0.{i + 2}") for i in range(2)]
    vport = free_port(VIP)
    a = agent(node_state(1, service("sticky", [frontend(VIP, vport)], [backend(b) for b in bs],
                                    affinity=timeout)))
    c = clients()

    # Back to back, then spaced out over more than twice the timeout: every
    # use refreshes the entry, so the backend holds as long as each connection
    # follows the previous one within the timeout.
    r1 = c.call("tcp_many", addr=VIP, port=vport, n=20, detail=True)
    r2 = c.call("tcp_many", addr=VIP, port=vport, n=10, detail=True, interval=timeout / 4)
    assert r1["errors"] == {} and r2["errors"] == {}, (r1, r2)
    conns = r1["conns"] + r2["conns"]
    assert conns[-1]["t1"] - conns[0]["t0"] > 2 * timeout
    # Connection i must have the backend of connection i-1 whenever it was
    # certainly made within the timeout of it: the hook of i-1 ran after
    # t0[i-1] and the hook of i before t1[i] (both CLOCK_MONOTONIC, the
    # clock of bpf_ktime_get_ns). Pairs further apart than that (a stalled
    # machine) are not judged.
    judged = 0
    for prev, cur in zip(conns, conns[1:]):
        if cur["t1"] - prev["t0"] < 0.8 * timeout:
            judged += 1
            assert cur["backend"] == prev["backend"], conns
    assert judged >= 1, f"no two connections within {timeout}s of each other: {conns}"
    first = conns[-1]["backend"]
    counters = a.dump("counters")
    assert int(counters.get("affinityHits", 0)) >= judged, counters

    # After the timeout the backend is chosen again: with two equal backends a
    # new choice differs with probability 1/2, so `tries` rounds all returning
    # the same backend happen with probability 2**-tries (< 1e-9).
    tries = tries_for(0.5, 1e-9)
    seen = []
    for _ in range(tries):
        time.sleep(timeout + 0.5)  # let the entry expire (waiting, not asserting)
        r = c.call("tcp_many", addr=VIP, port=vport, n=1)
        assert r["errors"] == {}, r
        (got,) = r["counts"]
        seen.append(got)
        if got != first:
            break
    assert seen[-1] != first, f"backend never changed after the timeout in {tries} rounds: {seen}"


def test_maglev_consistent_per_netns(agent, backends, clients):
    """Maglev hashes the client's network namespace: every connection from
    one namespace, whatever the process, reaches the same backend."""
    bs = [backends(f"backend-{i}", f"127.0.0.{i + 2}") for i in range(3)]
    vport = free_port(VIP)
    a = agent(node_state(1, service("maglev", [frontend(VIP, vport)], [backend(b) for b in bs],
                                    selection="SELECTION_MAGLEV")))
    fes = a.dump("services")["frontends"]
    assert len(fes) == 1 and len(fes[0]["slots"]) > len(bs), fes
    assert set(fes[0]["slots"]) == {b["id"] for b in a.dump("backends")["backends"]}, fes

    c1, c2 = clients(), clients()
    r1 = c1.call("tcp_many", addr=VIP, port=vport, n=50)
    r2 = c2.call("tcp_many", addr=VIP, port=vport, n=50)
    assert r1["errors"] == {} and r2["errors"] == {}, (r1, r2)
    assert len(r1["counts"]) == 1, r1
    assert r1["counts"] == r2["counts"], (r1, r2)
    assert set(r1["counts"]) <= {f"backend-{i}" for i in range(3)}
