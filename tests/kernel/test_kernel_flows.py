"""Flow records read back from the kernel (socklb/dataplane/flows.py), by each
way the node can take, and the probe that picks the way.

- socket-iter (iter/tcp + iter/udp in every network namespace) runs on every
  kernel: forced with --flow-reader, so CI exercises the fallback even where
  map-element iterators are allowed.
- map-iter (iter/bpf_sk_storage_map) runs where the kernel allows it; where
  it refuses, the test checks the refusal with bpftool (no code shared with
  the node) and says so: it fails, also under CI=true, only if the probe
  disagrees with bpftool.
- The probe report (`dump info` capabilities, the one log line at start)
  names every feature and the way each duty took, without a traceback.
"""

from __future__ import annotations

import ctypes as ct
import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import netenv
from netenv import backend, frontend, node_state, poll, service
from support import free_port

pytestmark = pytest.mark.agent

VIP_HOST = "127.96.0.60"
VIP_NS = "127.96.0.61"
VIP_UDP = "127.96.0.62"
WAIT = 30.0  # hang guard for the flow counts to follow a close

FEATURES = {"map_elem_iter", "iter_tcp_resume", "iter_udp_resume", "sock_destroy_kfunc", "netlink_sock_destroy",
            "ancestor_cgroup_id", "dns_tcp_sockmap", "policy_kernel_judge", "map_batch", "tcp_ehash_per_netns"}
DUTIES = {"flows", "sock_destroy", "socket_stats", "policy_judge", "workload_match", "fqdn_learner", "map_writes",
          "fqdn_learner_hooks", "netns_walk"}


def bpftool_allows_map_iter(flows_map: Path, tmp: Path) -> tuple[bool, str]:
    """Load, attach and read a minimal map-element iterator over the agent's
    flows map with bpftool: (allowed, bpftool's words)."""
    from socklb.dataplane import bpfobj

    src = Path(__file__).parent / "bpf" / "map_iter_probe.bpf.c"
    obj = tmp / "map_iter_probe.o"
    inc = bpfobj.vmlinux_h(bpfobj.cache_dir()).parent
    subprocess.run([bpfobj.find_clang(), "-O2", "-g", "-target", "bpf", f"-I{inc}", "-c", str(src),
                    "-o", str(obj)], check=True, capture_output=True, timeout=300)
    pin = netenv.BPFFS / netenv.unique_name("iterprobe")
    try:
        r = subprocess.run(["bpftool", "iter", "pin", str(obj), str(pin), "map", "pinned", str(flows_map)],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            return False, (r.stderr or r.stdout).strip().splitlines()[-1]
        with open(pin, "rb") as f:
            f.read()
        return True, "loaded, attached and read"
    except OSError as e:
        return False, f"reading the pinned iterator: {e}"
    finally:
        if pin.exists():
            pin.unlink()


def flow_counts(a) -> Counter:
    out = Counter()
    for f in a.dump("flows").get("flows", []):
        out[(f["frontend"]["address"], f["backendAddress"], f["backendPort"])] += 1
    return out


def kernel_counts(a, method) -> Counter:
    """The counts a statistics report sends (counted in the kernel), read
    with the node's own reader code from this process, by VIP as above."""
    from socklb.dataplane import layout
    from socklb.dataplane.flows import FlowReader

    vips = {int(f["id"]): f["frontend"]["address"] for f in a.dump("services").get("frontends", [])}
    with FlowReader(a.pin_dir, method) as r:
        counted = r.count()
    assert counted.method == method
    return Counter({(vips[fe], layout.addr_text(addr), layout.port_host(port)): n
                    for (fe, addr, port), n in counted.counts.items()})


@pytest.mark.parametrize("method", ["socket-iter", "map-iter"])
def test_flows_are_read_in_every_namespace(agent, backends, clients, netns, workdir, method):
    tport = free_port(VIP_HOST)
    b_host = backends("host", "127.0.0.2", tport)
    b_ns = backends("ns", "127.0.0.3", tport, netns=netns)
    b_udp = backends("udp", "127.0.0.4", 0, "udp")
    uport = free_port(VIP_UDP, socket.SOCK_DGRAM)
    a = agent(node_state(
        1,
        service("host", [frontend(VIP_HOST, tport)], [backend(b_host)]),
        service("ns", [frontend(VIP_NS, tport)], [backend(b_ns)]),
        service("udp", [frontend(VIP_UDP, uport, "udp")], [backend(b_udp)]),
    ), extra_args=["--flow-reader", method])
    caps = a.dump("info").get("capabilities", {})
    assert set(caps) >= FEATURES | DUTIES, caps
    if method == "map-iter" and caps["map_elem_iter"] != "yes":
        allowed, words = bpftool_allows_map_iter(a.pin_dir / "flows", workdir)
        assert not allowed, f"the probe says {caps['map_elem_iter']!r} but bpftool {words}"
        assert caps["flows"].startswith("none: "), caps  # forced, refused: no way, said so
        r = a.cli("dump", "flows", "--admin-socket", str(a.socket))
        assert r.returncode != 0 and "FAILED_PRECONDITION" in r.stdout + r.stderr, r
        assert "Traceback" not in a.log_text()
        pytest.skip(f"this kernel refuses map-element iterators ({caps['map_elem_iter']}; bpftool agrees: "
                    f"{words}); the fallback is tested by the socket-iter case")
    assert caps["flows"] == method, caps

    host, ns = clients(), clients(netns=netns)
    for i in range(3):
        assert host.call("tcp_open", id=f"h{i}", addr=VIP_HOST, port=tport)["backend"] == "host"
    for i in range(2):
        assert ns.call("tcp_open", id=f"n{i}", addr=VIP_NS, port=tport)["backend"] == "ns"
    assert host.call("udp_open", id="u", addr=VIP_UDP, port=uport)["backend"] == "udp"
    # A direct connection to a backend is not a flow.
    direct = clients()
    assert direct.call("tcp_open", id="d", addr="127.0.0.2", port=tport)["backend"] == "host"

    want = Counter({(VIP_HOST, "127.0.0.2", tport): 3, (VIP_NS, "127.0.0.3", tport): 2,
                    (VIP_UDP, "127.0.0.4", b_udp.port): 1})
    assert flow_counts(a) == want
    assert kernel_counts(a, method) == want
    info = a.cli("dump", "flows", "--admin-socket", str(a.socket), "-o", "json")
    assert f'"method": "{method}"' in info.stdout, info.stdout

    # Closed sockets leave the dump (a closing TCP socket lingers until its FIN is acked).
    host.call("close", id="h0")
    ns.call("close", id="n0")
    host.call("close", id="u")
    want = Counter({(VIP_HOST, "127.0.0.2", tport): 2, (VIP_NS, "127.0.0.3", tport): 1})
    assert poll(lambda: flow_counts(a) == want, timeout=WAIT), flow_counts(a)
    assert kernel_counts(a, method) == want


def test_probes_report_every_feature_once(agent):
    a = agent(node_state(1))
    caps = a.dump("info").get("capabilities", {})
    assert set(caps) == FEATURES | DUTIES, caps
    for name in FEATURES:
        assert caps[name] == "yes" or caps[name].startswith("no: "), (name, caps[name])
    # The way follows the probe.
    assert caps["flows"] == ("map-iter" if caps["map_elem_iter"] == "yes" else "socket-iter"), caps
    if caps["sock_destroy_kfunc"] == "yes":
        assert caps["sock_destroy"] == "kfunc", caps
    elif caps["netlink_sock_destroy"] == "yes":
        assert caps["sock_destroy"] == "netlink", caps
    else:
        assert caps["sock_destroy"].startswith("none: "), caps
    if caps["ancestor_cgroup_id"] == "yes":
        assert caps["workload_match"] == "ancestor", caps
    else:
        assert caps["workload_match"].startswith("exact: "), caps
    if caps["sock_destroy"].startswith("none: "):
        assert caps["netns_walk"].startswith("none: "), caps
    else:
        assert caps["netns_walk"].startswith(("parallel: ", "sequential: ")), caps
    child = int(Path("/proc/sys/net/ipv4/tcp_child_ehash_entries").read_text())
    assert (caps["tcp_ehash_per_netns"] == "yes") == (child > 0), caps
    if child == 0:
        assert "tcp_child_ehash_entries is 0" in caps["tcp_ehash_per_netns"], caps
        assert "tcp_child_ehash_entries is 0" in a.log_text()
    if caps["policy_kernel_judge"] == "yes":
        assert caps["policy_judge"] == "kernel", caps
    else:
        assert caps["policy_judge"].startswith("user: "), caps
    # The learner takes TCP where the probe says the sockmap path works (UDP alone, or off, said why).
    assert caps["fqdn_learner"] == "udp+tcp" if caps["dns_tcp_sockmap"] == "yes" else (
        caps["fqdn_learner"].startswith(("udp (tcp ", "off: "))), caps
    # ... and attaches its programs only while FQDN rules are applied (none here).
    assert caps["fqdn_learner_hooks"] == ("none" if caps["fqdn_learner"].startswith("off") else "idle"), caps
    log = a.log_text()
    lines = [line for line in log.splitlines() if "kernel features:" in line]
    assert len(lines) == 1, log
    assert f"flows={caps['flows']}" in lines[0] and f"sock_destroy={caps['sock_destroy']}" in lines[0], lines[0]
    assert "Traceback" not in log, log


def test_map_iter_probe_agrees_with_bpftool(agent, workdir):
    """Fails (also in CI) only when the probe is wrong, whichever way the kernel goes."""
    a = agent(node_state(1))
    caps = a.dump("info")["capabilities"]
    allowed, words = bpftool_allows_map_iter(a.pin_dir / "flows", workdir)
    assert (caps["map_elem_iter"] == "yes") == allowed, (caps["map_elem_iter"], words)


def test_bad_flow_reader_from_environment_is_refused(cgroup, workdir):
    env = dict(os.environ, SOCKLB_FLOW_READER="fastest")
    r = subprocess.run([sys.executable, "-m", "socklb.dataplane.cli", "run", "--cgroup", str(cgroup.path),
                        "--pin-dir", str(netenv.BPFFS / netenv.unique_name()),
                        "--admin-socket", str(workdir / "a.sock"), "--state", str(workdir / "none.yaml")],
                       cwd=str(netenv.REPO), env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "SOCKLB_FLOW_READER='fastest': expected one of auto, map-iter, socket-iter" in r.stderr, r.stderr


def _slots(a):
    from socklb.dataplane import kernel, layout

    return kernel.BpfMap.pinned(a.pin_dir / "conn_flows", ct.c_uint32, layout.ConnSlot)


def _fill_slots(m, cookie_base: int) -> None:
    """Every conn_flows slot taken by a cookie no socket has (cookie_base
    and up; 0 frees them all)."""
    from socklb.dataplane import layout

    n = layout.CONN_SLOTS
    keys = b"".join(ct.c_uint32(i) for i in range(n))
    values = b"".join(bytes(layout.ConnSlot(cookie=cookie_base + i if cookie_base else 0)) for i in range(n))
    m.update_batch(keys, values, n)


def _slot_of(m, cookie: int):
    """The slot index holding this socket cookie, or None."""
    from socklb.dataplane import layout

    for i in range(layout.CONN_PROBE):
        idx = (cookie + i) % layout.CONN_SLOTS
        if m.lookup(ct.c_uint32(idx)).cookie == cookie:
            return idx
    return None


def test_connect_records_fall_back_to_socket_storage(agent, backends, clients):
    """A connect() whose slots are all taken records its flow in socket
    storage: its peer is still the VIP, the dump and the counts still show
    it, and termination by backend still ends it. A later connect() takes a
    free slot, which closing the socket frees again."""
    tport = free_port(VIP_HOST)
    b = backends("host", "127.0.0.2", tport)
    a = agent(node_state(1, service("host", [frontend(VIP_HOST, tport)], [backend(b)])))
    m = _slots(a)
    try:
        _fill_slots(m, 1 << 62)
        c = clients()
        opened = c.call("tcp_open", id="full", addr=VIP_HOST, port=tport)
        assert opened["backend"] == "host" and opened["peer"] == [VIP_HOST, tport], opened
        cookies = c.call("cookies")
        assert _slot_of(m, cookies["full"]) is None
        _fill_slots(m, 0)
        opened = c.call("tcp_open", id="slot", addr=VIP_HOST, port=tport)
        assert opened["peer"] == [VIP_HOST, tport], opened
        cookie = c.call("cookies")["slot"]
        idx = _slot_of(m, cookie)
        assert idx is not None
        assert m.lookup(ct.c_uint32(idx)).flow.frontend_id != 0
        assert flow_counts(a) == Counter({(VIP_HOST, "127.0.0.2", tport): 2})
        assert kernel_counts(a, "socket-iter") == Counter({(VIP_HOST, "127.0.0.2", tport): 2})

        c.call("close", id="slot")
        slot = m.lookup(ct.c_uint32(idx))
        assert slot.cookie == 0 and slot.flow.frontend_id == 0
        assert poll(lambda: flow_counts(a) == Counter({(VIP_HOST, "127.0.0.2", tport): 1}), timeout=WAIT), \
            flow_counts(a)
        # Termination by backend finds the socket-storage record too.
        r = a.cli("terminate", "host", f"127.0.0.2:{tport}", "--admin-socket", str(a.socket), "-o", "json")
        assert r.returncode == 0, r
        rep = json.loads(r.stdout)
        assert (int(rep.get("found", 0)), int(rep.get("destroyed", 0))) == (1, 1), rep
        assert poll(lambda: not flow_counts(a), timeout=WAIT), flow_counts(a)
    finally:
        m.close()


def test_reconnect_elsewhere_frees_the_slot(agent, backends, clients):
    """A connected UDP socket re-connected straight to its backend's address
    has no flow any more: its slot is freed, so getpeername() shows the
    backend (not the VIP the stale record would name) and the dump drops it."""
    b = backends("udp", "127.0.0.4", 0, "udp")
    uport = free_port(VIP_UDP, socket.SOCK_DGRAM)
    a = agent(node_state(1, service("udp", [frontend(VIP_UDP, uport, "udp")], [backend(b)])))
    m = _slots(a)
    try:
        c = clients()
        assert c.call("udp_open", id="u", addr=VIP_UDP, port=uport) == {"peer": [VIP_UDP, uport], "backend": "udp"}
        cookie = c.call("cookies")["u"]
        assert _slot_of(m, cookie) is not None
        assert flow_counts(a) == Counter({(VIP_UDP, "127.0.0.4", b.port): 1})

        r = c.call("udp_reconnect", id="u", addr="127.0.0.4", port=b.port)
        assert r == {"peer": ["127.0.0.4", b.port], "backend": "udp"}, r
        assert _slot_of(m, cookie) is None
        assert flow_counts(a) == Counter()
    finally:
        m.close()
