"""Tests of the harness itself (no agent): cgroups, namespaces, servers,
clients, the CI skip/fail rule and the binomial bounds."""

import os
import socket
import subprocess
import sys

import pytest

import netenv
from support import free_port


# -- the CI rule ------------------------------------------------------------


@pytest.mark.pure
@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_require_fails_under_ci(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        netenv.require(False, "something")
    netenv.require(True, "something")  # no exception when present


@pytest.mark.pure
@pytest.mark.parametrize("ci", [None, "", "false"])
def test_require_skips_outside_ci(monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match="something"):
        netenv.require(False, "something")


@pytest.mark.pure
def test_missing_prerequisite_fails_whole_test_under_ci(tmp_path):
    """End to end: a kernel test run as a non-root user (simulated by
    faking geteuid) fails under CI=true and is skipped otherwise."""
    here = os.path.dirname(os.path.abspath(__file__))
    test = tmp_path / "test_fake.py"
    test.write_text("def test_x():\n    pass\n")
    plugin = tmp_path / "fakeuid.py"
    plugin.write_text("import os\nos.geteuid = lambda: 1000\n")
    base = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-p", "fakeuid", "--rootdir", str(tmp_path),
            "--confcutdir", here, "-c", os.devnull]

    def run(ci):
        # tests/ too: netenv imports tests/support.py (tests/conftest.py is cut off here)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), here, os.path.dirname(here)]))
        env.pop("CI", None)
        if ci:
            env["CI"] = "true"
        # load our conftest as a plugin so its autouse fixture applies
        return subprocess.run(base + ["-p", "conftest", str(test)], env=env,
                              capture_output=True, text=True, timeout=120)

    r = run(ci=True)
    assert r.returncode != 0, r.stdout + r.stderr
    assert "prerequisite missing" in r.stdout and "root" in r.stdout, r.stdout
    r = run(ci=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 skipped" in r.stdout, r.stdout


# -- statistics ---------------------------------------------------------------


@pytest.mark.pure
def test_binomial_bounds():
    for n, p in [(400, 0.75), (200, 0.5), (1000, 0.1), (50, 0.5)]:
        lo, hi = netenv.binom_bounds(n, p, 1e-9)
        assert lo <= n * p <= hi
        assert netenv.binom_tail_le(n, lo - 1, p) <= 0.5e-9
        assert netenv.binom_tail_le(n, lo, p) > 0.5e-9
        # upper tail: P[X > hi] = P[n - X < n - hi]
        assert netenv.binom_tail_le(n, n - hi - 1, 1 - p) <= 0.5e-9
    lo, hi = netenv.binom_bounds(400, 0.75, 1e-9)
    # tight enough to tell 3:1 from 1:1 and from "all on one"
    assert 200 < lo and hi < 400
    assert netenv.tries_for(0.5, 1e-9) == 30


# -- cgroup, netns, servers, clients -----------------------------------------


def test_cgroup_created_joined_and_removed(cgroup, clients):
    assert cgroup.path.parent == netenv.cgroup2_mount()
    assert cgroup.path.name.startswith("socklb-test-")
    c = clients()
    assert c.hello["cgroup"] == cgroup.rel
    assert cgroup.pids() == [c.pid]
    # outside the cgroup
    out = clients(in_cgroup=False)
    assert out.hello["cgroup"] != cgroup.rel
    assert out.pid not in cgroup.pids()


def test_cgroup_remove_kills_leftover_processes():
    cg = netenv.TestCgroup()
    try:
        c = netenv.Client(cg)
        assert cg.pids() == [c.pid]
    finally:
        cg.remove()
    assert not cg.path.exists()
    assert c.proc.wait(10) is not None
    c.close()


def test_backends_and_clients_on_loopback(backends, clients):
    b0 = backends("backend-0", "127.0.0.2")
    b1 = backends("backend-1", "127.0.0.3")
    u0 = backends("backend-u0", "127.0.0.2", proto="udp")
    c = clients()
    r = c.call("tcp_many", addr="127.0.0.2", port=b0.port, n=5)
    assert r["counts"] == {"backend-0": 5} and not r["errors"]
    assert list(r["peers"]) == [f'["127.0.0.2", {b0.port}]']
    r = c.call("tcp_open", id="a", addr="127.0.0.3", port=b1.port)
    assert r["backend"] == "backend-1" and r["peer"] == ["127.0.0.3", b1.port]
    assert c.call("tcp_ping", id="a")["backend"] == "backend-1"
    c.call("close", id="a")
    r = c.call("udp_sendto", addr="127.0.0.2", port=u0.port, n=3)
    assert r["counts"] == {"backend-u0": 3}
    assert list(r["sources"]) == [f'["127.0.0.2", {u0.port}]']
    r = c.call("udp_connected", addr="127.0.0.2", port=u0.port, n=2)
    assert r["peer"] == ["127.0.0.2", u0.port] and r["counts"] == {"backend-u0": 3}
    # nothing listens on a free port of the VIP range: refused
    port = free_port("127.96.0.10")
    assert c.call("connect_error", addr="127.96.0.10", port=port)["error"] == "ECONNREFUSED"
    c.call("loop_start", addr="127.0.0.2", port=b0.port, max=20)
    st = c.call("loop_stop")
    assert st["failed"] == 0 and 0 < st["ok"] <= 20


def test_netns_isolated_and_removed(netns_factory, backends, clients):
    ns = netns_factory()
    assert ns.path.exists()
    assert not ns.has_default_route()
    b = backends("backend-v6", "::1", 8080, netns=ns)
    bu = backends("backend-u6", "::1", 8080, proto="udp", netns=ns)
    # the server socket lives in the namespace: not reachable from here
    with pytest.raises(OSError):
        with socket.create_connection(("::1", 8080), timeout=5):
            pass
    c = clients(netns=ns)
    assert c.hello["netns"] != os.readlink("/proc/self/ns/net")
    r = c.call("tcp_many", addr="::1", port=8080, n=3)
    assert r["counts"] == {"backend-v6": 3}, r
    r = c.call("udp_sendto", addr="::1", port=8080, n=2)
    assert r["counts"] == {"backend-u6": 2}, r
    # no route out of the namespace
    assert c.call("connect_error", addr="fd00:96::10", port=80)["error"] == "ENETUNREACH"
    assert c.call("connect_error", addr="10.96.0.10", port=80)["error"] == "ENETUNREACH"
    # the pytest thread is back in its own namespace
    assert os.readlink("/proc/thread-self/ns/net") == os.readlink("/proc/self/ns/net")
    b.stop()
    bu.stop()
    ns.remove()
    assert not ns.path.exists()


def test_stale_names():
    assert netenv.stale("socklb-test-999999999-0")  # no such pid
    assert not netenv.stale(f"socklb-test-{os.getpid()}-3")  # ours
    assert not netenv.stale("socklb-test-1-0")  # pid 1 is alive
    assert not netenv.stale("something-else")
