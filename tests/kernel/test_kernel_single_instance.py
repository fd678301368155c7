"""One agent per node (pin directory): a second `socklb-dataplane run` on the
same pins refuses to start with a clear message and leaves the running
agent, its admin socket and its maps untouched; the admin socket is private
from the moment it exists, whatever the umask."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

import pytest

import netenv
from netenv import backend, frontend, node_state, service
from support import free_port

pytestmark = pytest.mark.agent

VIP = "127.96.0.70"


@pytest.mark.parametrize("same_socket", [False, True])
def test_second_agent_on_the_same_pins_is_refused(agent, backends, clients, workdir, same_socket):
    b = backends("backend", "127.0.0.2")
    vport = free_port(VIP)
    a = agent(node_state(1, service("web", [frontend(VIP, vport)], [backend(b)])))
    before = (a.dump("services"), a.dump("backends"), netenv.pinned_ids(a.pin_dir))
    c = clients()
    assert c.call("tcp_open", id="pre", addr=VIP, port=vport)["backend"] == "backend"

    other = workdir / "second.yaml"
    other.write_text("version: 7\nservices: []\n")  # would wipe the node if it were applied
    sock = a.socket if same_socket else workdir / "second.sock"
    r = subprocess.run([sys.executable, "-m", "socklb.dataplane.cli", "run", "--state", str(other),
                        "--cgroup", str(a.cgroup.path), "--pin-dir", str(a.pin_dir), "--admin-socket", str(sock),
                        "--node", "second"], cwd=str(netenv.REPO), capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stdout + r.stderr
    assert f"another socklb-dataplane agent is running on pin directory {a.pin_dir}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    # The first agent still serves on its socket, with the same state, maps and pins.
    assert a.applied_version() == 1
    assert (a.dump("services"), a.dump("backends"), netenv.pinned_ids(a.pin_dir)) == before
    assert c.call("tcp_ping", id="pre")["backend"] == "backend"
    assert a.running()


def test_admin_socket_is_private_under_umask_zero(cgroup, workdir):
    """Every mode the socket file is seen with, from its creation on, is 0600
    (a watcher stats it in a tight loop while the agent starts with umask 0)."""
    a = netenv.Agent(cgroup, workdir, node_state(1))
    seen: set[int] = set()
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                seen.add(stat.S_IMODE(os.stat(a.socket).st_mode))
            except FileNotFoundError:
                pass

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    old = os.umask(0)
    try:
        a.start()  # the child inherits umask 0
    finally:
        os.umask(old)
        stop.set()
        t.join(5)
    try:
        assert seen == {0o600}, sorted(oct(m) for m in seen)
    finally:
        a.cleanup()
