"""SIGKILL and restart the agent under load: nothing breaks, nothing doubles."""

import collections
import signal

import pytest

from netenv import (
    backend, cgroup_progs, frontend, node_state, pinned_files, pinned_ids, poll, service,
)
from support import free_port

pytestmark = pytest.mark.agent

VIP = "127.96.0.50"
HOOKS = 9  # connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6, sock_release
# The DNS learner's (FQDN policy: cgroup_skb ingress and egress, sock_ops) are
# attached only while FQDN rules are applied: none here (test_kernel_fqdn.py
# restarts with them).


def attached(cgroup) -> collections.Counter:
    return collections.Counter(p["attach_type"] for p in cgroup_progs(cgroup.path))


def test_agent_sigkill_restart_adopts(agent, backends, clients, cgroup):
    bs = [backends(f"backend-{i}", f"127.0.0.{i + 2}") for i in range(2)]
    vport = free_port(VIP)
    a = agent(node_state(1, service("web", [frontend(VIP, vport)], [backend(b) for b in bs])))
    info = a.dump("info")
    assert not info.get("adopted", False), info

    hooks_before = attached(cgroup)
    caps = info["capabilities"]
    assert caps["fqdn_learner_hooks"] == ("none" if caps["fqdn_learner"].startswith("off") else "idle"), caps
    assert len(hooks_before) == HOOKS and set(hooks_before.values()) == {1}, (caps, hooks_before)
    pins_before = pinned_ids(a.pin_dir)
    assert any(kind == "map" for kind, _ in pins_before.values()), pins_before
    assert all(i > 0 for _, i in pins_before.values()), pins_before
    services_before = a.dump("services")
    backends_before = a.dump("backends")

    c = clients()
    r = c.call("tcp_open", id="pre", addr=VIP, port=vport)
    assert r["peer"] == [VIP, vport], r
    pre_backend = r["backend"]
    pre_addr = {b.label: b.addr for b in bs}[pre_backend]

    def flow_backends():
        return sorted(f["backendAddress"] for f in a.dump("flows").get("flows", []))

    assert flow_backends() == [pre_addr]

    # A client connecting in a loop (throttled so TIME_WAIT stays small).
    c.call("loop_start", addr=VIP, port=vport, max=1_000_000, interval=0.002)

    def progressed(by):
        start = c.call("loop_status")["ok"]
        return poll(lambda: c.call("loop_status")["ok"] >= start + by, timeout=120)

    assert progressed(50)
    a.kill()
    assert not a.running()
    # programs stay attached and keep working without the agent
    assert progressed(50)
    assert attached(cgroup) == hooks_before
    a.start()  # same cgroup, pin dir, socket, state file
    assert progressed(50)
    st = c.call("loop_stop")
    assert st["failed"] == 0, st
    assert st["ok"] >= 150 and set(st["counts"]) <= {"backend-0", "backend-1"}, st

    # The connection from before still works.
    r = c.call("tcp_ping", id="pre")
    assert r == {"backend": pre_backend, "peer": [VIP, vport]}, r
    # and its flow record (socket storage in the pinned map) is still found
    assert flow_backends() == [pre_addr]

    # Adopted: one program per hook, the same pins, the same maps and links.
    info = a.dump("info")
    assert info.get("adopted") is True, info
    assert attached(cgroup) == hooks_before
    assert pinned_files(a.pin_dir) == sorted(pins_before), (pinned_files(a.pin_dir), pins_before)
    pins_after = pinned_ids(a.pin_dir)
    for name, (kind, ident) in pins_before.items():
        if kind in ("map", "link"):
            assert pins_after[name] == (kind, ident), (name, pins_before, pins_after)
    assert a.dump("services") == services_before
    assert a.dump("backends") == backends_before

    # A second restart, by SIGTERM this time, changes nothing either.
    a.signal(signal.SIGTERM)
    a.proc.wait(30)
    a.start()
    assert attached(cgroup) == hooks_before
    pins_third = pinned_ids(a.pin_dir)
    assert sorted(pins_third) == sorted(pins_before), pins_third
    for name, (kind, ident) in pins_before.items():
        if kind in ("map", "link"):
            assert pins_third[name] == (kind, ident), (name, pins_before, pins_third)
    r = c.call("tcp_many", addr=VIP, port=vport, n=20)
    assert r["errors"] == {} and set(r["counts"]) <= {"backend-0", "backend-1"}, r


def test_detach_removes_programs_and_pins(agent, backends, clients, cgroup):
    b = backends("backend-0", "127.0.0.2")
    vport = free_port(VIP)
    a = agent(node_state(1, service("web", [frontend(VIP, vport)], [backend(b)])))
    c = clients()
    assert c.call("tcp_many", addr=VIP, port=vport, n=3)["counts"] == {"backend-0": 3}
    a.stop()
    # stopped, not detached: still balancing
    assert c.call("tcp_many", addr=VIP, port=vport, n=3)["counts"] == {"backend-0": 3}
    r = a.cli("detach", "--pin-dir", str(a.pin_dir), "--cgroup", str(cgroup.path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert attached(cgroup) == collections.Counter()
    assert not a.pin_dir.exists() or pinned_files(a.pin_dir) == []
    # no longer translated: nothing listens on the VIP itself
    assert c.call("connect_error", addr=VIP, port=vport)["error"] == "ECONNREFUSED"
