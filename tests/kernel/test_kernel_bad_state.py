"""A bad desired state is rejected with the field named, and changes nothing."""

import copy
import re
import signal

import pytest

from netenv import backend, frontend, node_state, service
from support import free_port

pytestmark = pytest.mark.agent

VIP = "127.96.0.60"


def snapshot(a) -> dict:
    return {k: a.dump(k) for k in ("services", "backends", "state")} | {"version": a.applied_version()}


def traffic_ok(c, port, names, n=20):
    r = c.call("tcp_many", addr=VIP, port=port, n=n)
    assert r["errors"] == {} and sum(r["counts"].values()) == n and set(r["counts"]) <= names, r


def start(agent, backends, clients, extra_args=()):
    bs = [backends(f"backend-{i}", f"127.0.0.{i + 2}") for i in range(2)]
    vport = free_port(VIP)
    good = node_state(1, service("web", [frontend(VIP, vport)], [backend(b) for b in bs]))
    a = agent(good, extra_args)
    c = clients()
    traffic_ok(c, vport, {"backend-0", "backend-1"})
    return a, c, vport, good


@pytest.fixture
def running(agent, backends, clients):
    return start(agent, backends, clients)


def bad_address(good):
    s = copy.deepcopy(good)
    s["version"] = 2
    s["services"][0]["frontends"][0]["address"] = "127.96.0.300"
    return s, "services[0].frontends[0].address"


def duplicate_frontend(good):
    s = copy.deepcopy(good)
    s["version"] = 2
    dup = copy.deepcopy(s["services"][0])
    dup["name"] = "web-copy"
    s["services"].append(dup)
    return s, "services[1].frontends[0]"


def bad_backend_address(good):
    s = copy.deepcopy(good)
    s["version"] = 2
    s["services"][0]["backends"][1]["address"] = "not-an-ip"
    return s, "services[0].backends[1].address"


@pytest.mark.parametrize("make_bad", [bad_address, duplicate_frontend, bad_backend_address])
def test_apply_rejects_bad_state(running, make_bad):
    a, c, vport, good = running
    before = snapshot(a)
    bad, field = make_bad(good)
    r = a.apply(bad)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert field in out, out
    assert snapshot(a) == before
    traffic_ok(c, vport, {"backend-0", "backend-1"})


@pytest.mark.parametrize("what", ["backends", "services"])
def test_apply_rejects_over_capacity(agent, backends, clients, what):
    """More entries than the maps hold (capacities made small with
    --backends-max / --services-max): rejected before anything is written."""
    a, c, vport, good = start(agent, backends, clients, ["--backends-max", "4", "--services-max", "64"])
    before = snapshot(a)
    bad = copy.deepcopy(good)
    bad["version"] = 2
    if what == "backends":
        # 2 + 3 backend entries > 4
        extra = [backend((f"127.0.3.{i}", 80)) for i in range(1, 4)]
    else:
        # 1 master + 100 weighted slots > 64 - 3 entries left
        extra = [backend(("127.0.3.1", 80), weight=1), backend(("127.0.3.2", 80), weight=99)]
    bad["services"].append(service("big", [frontend("127.96.1.60", 80)], extra))
    r = a.apply(bad)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    # The error names the map that is full, what the state needs and what it holds.
    m = re.search(rf"services: needs (\d+) {what[:-1]} entries.*; the {what} map holds (\d+)", out)
    assert m, out
    need_, holds = int(m[1]), int(m[2])
    assert holds == (4 if what == "backends" else 64) and need_ > holds, out
    assert snapshot(a) == before
    traffic_ok(c, vport, {"backend-0", "backend-1"})

    # Within capacity the same kind of change is accepted.
    ok = copy.deepcopy(good)
    ok["version"] = 3
    ok["services"].append(service("small", [frontend("127.96.1.60", 80)], extra[:1]))
    r = a.apply(ok)
    assert r.returncode == 0, r.stdout + r.stderr
    assert a.applied_version() == 3


def test_bad_state_file_is_logged_and_ignored(running):
    a, c, vport, good = running
    before = snapshot(a)
    bad, field = bad_address(good)
    mark = a.log_len()
    a.write_state(bad)
    a.signal(signal.SIGHUP)
    line = a.wait_log(r"services\[0\]\.frontends\[0\]\.address", since=mark, timeout=60)
    assert line is not None, "agent did not log the bad field:\n" + a.log_text(mark)
    assert a.running()
    assert snapshot(a) == before
    traffic_ok(c, vport, {"backend-0", "backend-1"})

    # A good file afterwards is applied (through the mtime poll, no signal).
    fixed = copy.deepcopy(good)
    fixed["version"] = 3
    fixed["services"][0]["backends"] = fixed["services"][0]["backends"][:1]
    a.write_state(fixed)
    assert a.wait_version(3, timeout=60), a.log_text(mark)
    traffic_ok(c, vport, {"backend-0"})


@pytest.mark.parametrize("content", [b"", b"# editing\n", b"version: 5\n", b"version: 1\nservices: []\n\xff\xfe"],
                         ids=["empty", "comment-only", "no-services", "not-utf8"])
def test_truncated_or_garbled_state_file_leaves_the_node_and_its_connections(running, clients, content):
    """What an editor or `> file` leaves for a moment (and a file that is not
    text) is refused: the maps and an open connection are untouched, the
    agent keeps running, and the next good file is applied."""
    a, c, vport, good = running
    before = snapshot(a)
    r = c.call("tcp_open", id="live", addr=VIP, port=vport)
    assert r["peer"] == [VIP, vport], r
    mark = a.log_len()
    a.state_file.write_bytes(content)  # in place, as `> file` does
    a.signal(signal.SIGHUP)
    line = a.wait_log(r"state file rejected, nothing changed", since=mark, timeout=60)
    assert line is not None, a.log_text(mark)
    assert "Traceback" not in a.log_text(mark), a.log_text(mark)
    assert a.running()
    assert snapshot(a) == before
    assert c.call("tcp_ping", id="live").get("error") is None
    traffic_ok(c, vport, {"backend-0", "backend-1"})

    # Wiping is explicit: `services: []` removes the service.
    a.write_state(node_state(4))
    assert a.wait_version(4, timeout=60), a.log_text(mark)
    assert a.dump("services").get("frontends", []) == []
