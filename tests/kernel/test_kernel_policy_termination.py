"""Policy changes reach open sockets (socklb/dataplane/policyjobs.py, the
socket programs of bpf/sock_destroy.bpf.c): when a workload's policy set
changes, its open sockets that the new set denies are destroyed, in every
network namespace and in the cgroups below the workload's, and nothing
else is touched; a dry run lists exactly those and destroys nothing.

The node: an agent with three services on loopback VIPs (web and api over
TCP, dns over UDP; backends A and B), plain servers on 127.0.0.4 (TCP and
UDP) and 127.0.0.5 (TCP, and one that closes every connection at once), the
same servers inside two test namespaces. Workloads are cgroups below the
agent's test cgroup: w1 (with a child cgroup), w2; a cgroup "other" is no
workload. Clients (client.py plus the operations of
test_kernel_sockdestroy's EXTRA and a few here) hold sockets of every kind:
TCP idle and active, a TCP socket in CLOSE_WAIT, connected UDP, through a
VIP and direct.

The change: w1 goes from unrestricted to a set that allows web (a frontend
verdict), denies dns (verdict DENY), says nothing of api (no verdict: denied),
allows TCP to 127.0.0.0/8 and denies 127.0.0.5/32. So w1's sockets to dns,
api, 127.0.0.5 and its UDP socket to 127.0.0.4 die; those to web and TCP to
127.0.0.4 live. w2 keeps a set that denies everything (unchanged: untouched),
and "other" is no workload (untouched).
"""
from __future__ import annotations

import logging
import socket
import threading

import pytest

import netenv
from netenv import backend, frontend, node_state, poll, service
from bench.policy_maps import PolicyMaps
from support import free_port
from test_kernel_sockdestroy import EXTRA as SOCKDESTROY_EXTRA

from socklb.dataplane import sockdestroy as term
from socklb.dataplane.cgroupids import workload_cgroup_ids
from socklb.dataplane.policyjobs import policy_job, run_policy_job
from socklb.dataplane.termjobs import TerminationService
from socklb.v1 import node_pb2, policy_pb2, types_pb2

pytestmark = pytest.mark.agent

VIP = "127.96.0.80"
ADDR_A, ADDR_B = "127.0.0.2", "127.0.0.3"
OPEN, SHUT = "127.0.0.4", "127.0.0.5"  # direct servers: TCP to OPEN allowed, everything to SHUT denied
# What a client of a destroyed socket sees on this kernel (6.18), with the
# kfunc and the netlink way alike: TCP (idle, active, CLOSE_WAIT) fails its
# next send or receive with ECONNABORTED; a connected UDP socket is
# disconnected, so its next send() fails with EDESTADDRREQ.
DEAD_TCP, DEAD_UDP = "ECONNABORTED", "EDESTADDRREQ"
CLOSE_WAIT, TCP_CLOSE = 8, 7

# A few more client operations, added to test_kernel_sockdestroy's.
MAIN = "client.main(globals())"
OPS = r'''
def op_open(self, id, addr, port):
    """A TCP connection that sends nothing (the peer may close it at once)."""
    s, err = client.connect(addr, port)
    if err:
        return {"error": err}
    self.socks[id] = s
    return {}

def op_tcp_state(self, id):
    """The kernel's state of a TCP socket (tcpi_state), read without
    touching the connection."""
    s = self.socks[id]
    return {"state": s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]}

def op_send(self, id):
    """One byte sent: -> {} or {error}."""
    try:
        self.socks[id].send(b"x")
        return {}
    except OSError as e:
        return {"error": client.errname(e)}
'''
assert SOCKDESTROY_EXTRA.rstrip().endswith(MAIN)
EXTRA = SOCKDESTROY_EXTRA.rstrip()[:-len(MAIN)] + OPS + "\n" + MAIN + "\n"


class Closer(threading.Thread):
    """A TCP server that closes every connection as soon as it accepts it:
    its clients' sockets sit in CLOSE_WAIT."""

    def __init__(self, addr: str):
        super().__init__(daemon=True, name="closer")
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.start()

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.close()

    def stop(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.join(5)


@pytest.fixture
def workload_cgroups(cgroup):
    """Cgroups below the test cgroup: w1, w1/sub, w2, other; removed
    (deepest first) before the test cgroup."""
    made = []
    try:
        for name in ("w1", "w1/sub", "w2", "other"):
            made.append(netenv.TestCgroup(cgroup.mount, f"{cgroup.name}/{name}"))
        yield {name: cg for name, cg in zip(("w1", "w1/sub", "w2", "other"), made)}
    finally:
        for cg in reversed(made):
            cg.remove()


@pytest.fixture
def wclients(workload_cgroups):
    """wclients(cgroup name, netns=None) -> a client with EXTRA in that cgroup."""
    def make(name, netns=None):
        return netenv.Client(workload_cgroups[name], netns, extra=EXTRA)

    yield from netenv.factory(make, netenv.Client.close)


# --------------------------------------------------------------------------
# the scenario


def _frontend(addr, port, proto):
    return types_pb2.Frontend(address=addr, port=port,
                              protocol=types_pb2.PROTOCOL_TCP if proto == "tcp" else types_pb2.PROTOCOL_UDP)


class Node:
    """The servers, the agent, the clients and their sockets; the states
    before and after the policy change."""

    def __init__(self, agent, backends, wclients, netns_factory, workload_cgroups):
        netenv.require_bpf_build_tools()
        self.cgroups = workload_cgroups
        self.ns1, self.ns2 = netns_factory(), netns_factory()
        tA, tB = backends("A", ADDR_A), backends("B", ADDR_B)
        uA, uB = backends("A", ADDR_A, proto="udp"), backends("B", ADDR_B, proto="udp")
        o_t, o_u, s_t = backends("open", OPEN), backends("open", OPEN, proto="udp"), backends("shut", SHUT)
        for ns in (self.ns1, self.ns2):  # the same servers inside each namespace
            for b in (tA, tB, uA, uB, o_t, o_u, s_t):
                backends(b.label, b.addr, b.port, b.proto, ns)
        self.closer = Closer(SHUT)
        self.ports = {"web": free_port(VIP), "dns": free_port(VIP, socket.SOCK_DGRAM)}
        self.ports["api"] = free_port(VIP)
        self.direct = {"open-tcp": (OPEN, o_t.port), "open-udp": (OPEN, o_u.port), "shut-tcp": (SHUT, s_t.port)}
        self.agent = agent(node_state(1,
                                      service("web", [frontend(VIP, self.ports["web"])], [backend(tA), backend(tB)]),
                                      service("api", [frontend(VIP, self.ports["api"])], [backend(tA), backend(tB)]),
                                      service("dns", [frontend(VIP, self.ports["dns"], "udp")],
                                              [backend(uA), backend(uB)])))
        # client name -> (cgroup, netns); every client opens the same sockets
        self.clients = {"w1": wclients("w1"), "w1-sub-ns1": wclients("w1/sub", self.ns1),
                        "w1-ns2": wclients("w1", self.ns2), "w2-ns1": wclients("w2", self.ns1),
                        "other": wclients("other")}
        self.kinds: dict[str, dict[str, str]] = {}  # client -> socket id -> kind
        for name, c in self.clients.items():
            self.kinds[name] = self._open(c, closer=name in ("w1", "other"))

    def _open(self, c, closer: bool) -> dict[str, str]:
        kinds = {}
        for svc in ("web", "api"):
            for kind in ("idle", "active"):
                r = c.call("tcp_open", id=f"{svc}-{kind}", addr=VIP, port=self.ports[svc])
                assert "error" not in r and r["peer"] == [VIP, self.ports[svc]], r
                kinds[f"{svc}-{kind}"] = f"tcp-{kind}"
        r = c.call("udp_open", id="dns", addr=VIP, port=self.ports["dns"])
        assert r["peer"] == [VIP, self.ports["dns"]], r
        kinds["dns"] = "udp"
        for what, (addr, port) in self.direct.items():
            if what.endswith("udp"):
                r = c.call("udp_open", id=what, addr=addr, port=port)
                assert r.get("backend") == "open", r
                kinds[what] = "udp"
            else:
                for kind in ("idle", "active"):
                    r = c.call("tcp_open", id=f"{what}-{kind}", addr=addr, port=port)
                    assert "error" not in r, r
                    kinds[f"{what}-{kind}"] = f"tcp-{kind}"
        for i, kind in kinds.items():
            if kind == "tcp-active":
                c.call("tcp_active", id=i)
        if closer:
            assert c.call("open", id="close-wait", addr=SHUT, port=self.closer.port) == {}
            assert poll(lambda: c.call("tcp_state", id="close-wait")["state"] == CLOSE_WAIT, timeout=20)
            kinds["close-wait"] = "close-wait"
        return kinds

    def stop(self):
        self.closer.stop()

    # -- the states

    def services(self):
        return [node_pb2.ServiceState(name=name, frontends=[_frontend(VIP, self.ports[name],
                                                                      "udp" if name == "dns" else "tcp")])
                for name in ("web", "api", "dns")]

    def state(self, version: int, w1_set: str) -> node_pb2.NodeState:
        """w1 with w1_set ("" or "ps-new"); w2 with ps-closed, always."""
        root = self.cgroups["w1"].rel.rsplit("/", 1)[0].lstrip("/")
        allow, deny = policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY
        tcp_all = node_pb2.PortRule(port=0, end_port=65535, protocol=types_pb2.PROTOCOL_TCP, action=allow)
        ps_new = node_pb2.PolicySetState(
            name="ps-new", policies=["p"],
            frontends=[node_pb2.FrontendVerdict(service="web", frontend=_frontend(VIP, self.ports["web"], "tcp"),
                                                action=allow),
                       node_pb2.FrontendVerdict(service="dns", frontend=_frontend(VIP, self.ports["dns"], "udp"),
                                                action=deny)],
            prefixes=[node_pb2.PrefixRules(prefix="127.0.0.0/8", rules=[tcp_all]),
                      node_pb2.PrefixRules(prefix=f"{SHUT}/32", rules=[
                          tcp_all, node_pb2.PortRule(port=0, end_port=65535, action=deny)])])
        sets = [node_pb2.PolicySetState(name="ps-closed", policies=["closed"])]
        if w1_set:
            sets.append(ps_new)
        return node_pb2.NodeState(
            version=version, services=self.services(), policy_sets=sets,
            workloads=[node_pb2.WorkloadState(name="w1", cgroup=f"{root}/w1", policy_set=w1_set),
                       node_pb2.WorkloadState(name="w2", cgroup=f"{root}/w2", policy_set="ps-closed")])

    def cgroup_ids(self, state):
        return workload_cgroup_ids(self.cgroups["w1"].mount, state.workloads)

    # -- what should die

    @staticmethod
    def denied(client: str, sid: str) -> bool:
        if not client.startswith("w1"):
            return False
        return sid.startswith(("api", "shut", "close-wait")) or sid in ("dns", "open-udp")

    def cookies(self, which=None) -> dict[int, tuple[str, str]]:
        """cookie -> (client, socket id), of the sockets `which(client, id)` picks (None: all)."""
        out = {}
        for name, c in self.clients.items():
            for sid, ck in c.call("cookies").items():
                if which is None or which(name, sid):
                    out[ck] = (name, sid)
        return out

    def check(self, dead=lambda client, sid: False):
        """Every socket: those `dead` picks are aborted, the others work."""
        for name, c in self.clients.items():
            for sid, kind in self.kinds[name].items():
                gone = dead(name, sid)
                where = (name, sid)
                if kind == "tcp-active":
                    if gone:
                        st = poll(lambda: c.call("active_status", id=sid)["error"], timeout=20)
                        assert st == DEAD_TCP, (where, st)
                    else:
                        st = c.call("active_status", id=sid)
                        assert st["error"] is None and st["ok"] > 0, (where, st)
                elif kind == "udp":
                    r = c.call("udp_ping", id=sid)
                    assert r.get("error") == (DEAD_UDP if gone else None), (where, r)
                elif kind == "close-wait":
                    # receiving says EOF either way (the FIN came first): the
                    # kernel's state tells, and a send after the abort fails
                    r = c.call("tcp_state", id=sid)["state"]
                    assert r == (TCP_CLOSE if gone else CLOSE_WAIT), (where, r)
                    if gone:
                        assert c.call("send", id=sid).get("error") == DEAD_TCP, where
                else:
                    r = c.call("tcp_ping", id=sid)
                    if gone:
                        assert r.get("error") == DEAD_TCP, (where, r)
                    else:
                        assert "backend" in r, (where, r)


@pytest.fixture
def node(agent, backends, wclients, netns_factory, workload_cgroups):
    n = Node(agent, backends, wclients, netns_factory, workload_cgroups)
    try:
        yield n
    finally:
        n.stop()


# --------------------------------------------------------------------------
# tests


def test_listing_by_cgroup(node):
    """list_cgroups: the sockets of the cgroups named, with their cgroup,
    state and flow (the VIP as addressed); every cgroup with None; nothing
    for no cgroup."""
    ids = node.cgroup_ids(node.state(2, "ps-new"))
    w1 = ids["w1"]
    assert len(w1) == 2 and ids["w2"] and not (w1 & ids["w2"])
    want = node.cookies(lambda client, sid: client.startswith("w1"))
    with term.Terminator(node.agent.pin_dir) as t:
        got = t.list_cgroups(w1)
        assert got.errors == [], got.errors
        assert {s.cookie for s in got.sockets} == set(want), (len(got.sockets), len(want))
        assert len(got.sockets) == len(want)
        assert len({s.netns for s in got.sockets}) == 3  # host, ns1, ns2
        sub = node.cgroups["w1/sub"].path.stat().st_ino
        for s in got.sockets:
            client, sid = want[s.cookie]
            assert s.cgroup_id == (sub if client == "w1-sub-ns1" else node.cgroups["w1"].path.stat().st_ino)
            through_vip = sid.split("-")[0] in ("web", "api", "dns")
            assert bool(s.frontend_id) == through_vip, (client, sid, s)
            if through_vip:
                svc = sid.split("-")[0]
                assert s.frontend is not None and s.vip_port == node.ports[svc], s
                assert s.destination.rsplit(":", 1)[0] in (ADDR_A, ADDR_B), s
            assert s.state == (CLOSE_WAIT if sid == "close-wait" else 1), (sid, s.state)
            assert s.protocol == ("udp" if sid in ("dns", "open-udp") else "tcp")
        everything = t.list_cgroups(None)
        assert set(node.cookies()) <= {s.cookie for s in everything.sockets}
        assert t.list_cgroups(set()).sockets == []
        assert {s.cookie for s in t.list_cgroups(ids["w2"]).sockets} == set(
            node.cookies(lambda client, sid: client == "w2-ns1"))
    node.check()


@pytest.mark.parametrize("judge", ["kernel", "user"])
@pytest.mark.parametrize("method", ["kfunc", "netlink"])
def test_policy_change_terminates_exactly_the_denied(node, method, judge, caplog):
    """Judged in the kernel (the new sets in the policy maps, their ids
    given) or, forced, in user space: the same sockets die, the same report."""
    before, after = node.state(2, ""), node.state(3, "ps-new")
    want = node.cookies(node.denied)
    assert len(want) == 3 * 6 + 1  # per w1 client: dns, api x2, shut x2, open-udp; close-wait in the host
    maps = PolicyMaps(node.agent.pin_dir)
    t = svc = None
    try:
        sets = {"ps-new": 901, "ps-closed": 902}
        for ps in after.policy_sets:
            maps.write(sets[ps.name], ps)
        t = term.Terminator(node.agent.pin_dir, method=method, policy_judge="auto" if judge == "kernel" else "user")
        svc = TerminationService("test-node", t)
        assert t.method.value == method and t.kernel_judge == (judge == "kernel"), t.judge_way
        caplog.set_level(logging.INFO, logger=term.__name__)
        rep = svc.after_policy_change(before, after, node.cgroup_ids(after), wait=True, set_ids=sets)
        assert ("policy judged in the kernel" in caplog.text) == (judge == "kernel")
        print(f"{method}: found {rep.found} destroyed {rep.destroyed} in {rep.duration_seconds * 1000:.1f} ms, "
              f"{rep.namespaces} netns")
        assert rep.error == "" and rep.trigger == "policy" and rep.id == "v3-policy" and not rep.dry_run
        assert rep.method == method
        assert rep.found == rep.destroyed == len(want) and rep.failed == 0, rep
        assert {s.cookie for s in rep.sockets} == set(want)
        assert all(s.HasField("result") and s.result == 0 for s in rep.sockets)
        assert {s.state for s in rep.sockets} == {"ESTABLISHED", "CONNECTED", "CLOSE_WAIT"}
        # whose each socket is, and why the new set denies it
        assert {s.workload for s in rep.sockets} <= {w.name for w in after.workloads} and all(
            s.reason.startswith("policy set ps-new: ") for s in rep.sockets), rep.sockets[0]
        # per destination as judged: frontends by their VIP, the rest by peer
        per = {(b.address, b.port): b.found for b in rep.backends}
        assert per == {(VIP, node.ports["api"]): 6, (VIP, node.ports["dns"]): 3, (SHUT, node.direct["shut-tcp"][1]): 6,
                       (OPEN, node.direct["open-udp"][1]): 3, (SHUT, node.closer.port): 1}, per
        node.check(node.denied)
        # nothing is left to find
        again = svc.after_policy_change(before, after, node.cgroup_ids(after), wait=True)
        assert again.found == 0 and again.error == "", again
        # nothing changed: nothing to look at
        assert svc.after_policy_change(after, after, node.cgroup_ids(after)) is None
        assert svc.after_policy_change(after, after, node.cgroup_ids(after), wait=True).found == 0
    finally:
        if svc is not None:
            svc.close()
        elif t is not None:
            t.close()
        maps.close()


def test_dry_run_lists_the_denied_and_destroys_nothing(node):
    """The dry run of a state the node never applies: the report lists
    exactly the sockets it would terminate, each condemned with its reason;
    nothing is destroyed. Then the same state for real, through the
    worker."""
    before, after = node.state(2, ""), node.state(3, "ps-new")
    want = node.cookies(node.denied)
    reports = []
    svc = TerminationService("test-node", term.Terminator(node.agent.pin_dir))
    svc.listen(reports.append)
    try:
        rep = svc.after_policy_change(before, after, node.cgroup_ids(after), dry_run=True, wait=True,
                                      job_id="dry-1")
        assert rep.id == "dry-1" and rep.dry_run and rep.method == "none" and rep.error == ""
        assert rep.found == len(want) and rep.destroyed == 0
        assert {s.cookie for s in rep.sockets} == set(want)
        assert not any(s.HasField("result") for s in rep.sockets)
        node.check()  # all alive

        job = policy_job("dry-2", before, after, node.cgroup_ids(after), dry_run=True)
        run = run_policy_job(svc._terminator, job)
        assert run.destroyed is None and {c.socket.cookie for c in run.condemned} == set(want)
        why = {want[c.socket.cookie][1]: c.reason for c in run.condemned if want[c.socket.cookie][0] == "w1"}
        assert why["dns"] == f"policy set ps-new: frontend {VIP}:{node.ports['dns']}/udp is denied"
        assert why["api-idle"] == f"policy set ps-new: frontend {VIP}:{node.ports['api']}/tcp has no verdict"
        assert why["shut-tcp-idle"] == f"policy set ps-new: {SHUT}/32 denies {SHUT}:{node.direct['shut-tcp'][1]}/tcp"
        assert why["open-udp"] == (f"policy set ps-new: no rule of 127.0.0.0/8 allows "
                                   f"{OPEN}:{node.direct['open-udp'][1]}/udp")
        assert {c.workload for c in run.condemned} == {"w1"}
        node.check()

        # for real, in the background: the report reaches the listeners
        assert svc.after_policy_change(before, after, node.cgroup_ids(after)) is None
        assert poll(lambda: any(r.id == "v3-policy" for r in reports), timeout=60)
        real = next(r for r in reports if r.id == "v3-policy")
        assert real.destroyed == len(want) and {s.cookie for s in real.sockets} == set(want)
        node.check(node.denied)
    finally:
        svc.close()


def test_destroy_cookies_skips_sockets_gone_and_counts_both_ways(node):
    """destroy_cookies: a socket closed since the listing is not found (not
    a failure); with either method."""
    w1 = node.cgroup_ids(node.state(2, "ps-new"))["w1"]
    c = node.clients["w1"]
    udp = node.direct["open-udp"]
    for method in ("netlink", "kfunc"):
        with term.Terminator(node.agent.pin_dir, method=method) as t:
            named = node.cookies()
            listed = [s for s in t.list_cgroups(w1).sockets
                      if named.get(s.cookie) in (("w1", "shut-tcp-idle"), ("w1", "open-udp"))]
            assert len(listed) == 2, listed
            gone = next(s for s in listed if named[s.cookie][1] == "open-udp")
            c.call("close", id="open-udp")  # UDP: nothing lingers after close
            dry = t.destroy_cookies(listed, dry_run=True)
            assert dry.asked == 2 and dry.found == 1 and dry.destroyed == 0 and gone.cookie not in dry.results
            rep = t.destroy_cookies(listed)
            assert rep.method == method and rep.asked == 2 and rep.found == rep.destroyed == 1, rep
            assert rep.failed == 0 and gone.cookie not in rep.results
        assert c.call("tcp_ping", id="shut-tcp-idle").get("error") == DEAD_TCP
        # the two sockets again, for the next method
        c.call("close", id="shut-tcp-idle")
        assert "error" not in c.call("tcp_open", id="shut-tcp-idle", addr=SHUT, port=node.direct["shut-tcp"][1])
        assert c.call("udp_open", id="open-udp", addr=udp[0], port=udp[1]).get("backend") == "open"


def test_families_apart_and_v4_mapped_as_ipv4(node, backends):
    """IPv6 sockets are judged by IPv6 prefixes only (the new set has none:
    denied), and v4-mapped IPv6 sockets by the IPv4 ones (TCP to OPEN
    allowed, to SHUT denied); destroyed with the kfunc."""
    six = backends("v6", "::1", netns=node.ns1)
    c6, c4 = node.clients["w1-sub-ns1"], node.clients["w1"]
    assert c6.call("tcp_open", id="v6", addr="::1", port=six.port).get("backend") == "v6"
    assert c4.call("tcp_open", id="mapped-open", addr="::ffff:" + OPEN,
                   port=node.direct["open-tcp"][1]).get("backend") == "open"
    assert c4.call("tcp_open", id="mapped-shut", addr="::ffff:" + SHUT,
                   port=node.direct["shut-tcp"][1]).get("backend") == "shut"
    before, after = node.state(2, ""), node.state(3, "ps-new")
    mine = {("w1-sub-ns1", "v6"), ("w1", "mapped-open"), ("w1", "mapped-shut")}
    new = node.cookies(lambda client, sid: (client, sid) in mine)
    with term.Terminator(node.agent.pin_dir, method="kfunc") as t:
        dry = run_policy_job(t, policy_job("dry", before, after, node.cgroup_ids(after), dry_run=True))
        judged = {new[c.socket.cookie][1]: c for c in dry.condemned if c.socket.cookie in new}
        assert set(judged) == {"v6", "mapped-shut"}, judged
        assert judged["v6"].reason == f"policy set ps-new: no prefix holds [::1]:{six.port}/tcp"
        assert judged["v6"].socket.family == socket.AF_INET6 and judged["mapped-shut"].socket.family == socket.AF_INET6
        assert judged["mapped-shut"].address == SHUT
        run = run_policy_job(t, policy_job("real", before, after, node.cgroup_ids(after)))
    killed = {c.socket.cookie for c in run.condemned}
    assert run.destroyed.failed == 0 and killed & set(new) == {ck for ck, (_, sid) in new.items() if sid != "mapped-open"}
    assert c6.call("tcp_ping", id="v6").get("error") == DEAD_TCP
    assert c4.call("tcp_ping", id="mapped-shut").get("error") == DEAD_TCP
    assert c4.call("tcp_ping", id="mapped-open").get("backend") == "open"
    node.check(node.denied)
