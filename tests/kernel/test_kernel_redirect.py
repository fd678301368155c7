"""Local redirect in the kernel (bpf/sock_lb.c translate(), the redirect
table of the services map, redirect_exempt; socklb/dataplane/
redirect_desired.py and redirectjobs.py): on a node serving a redirect, new
sockets to the frontend go to the local workload's address, except those of
the local workload itself (exempt), which still reach the service; creating
the redirect terminates the open sockets of the frontend to the service's
backends (a resolver's connected UDP socket moves to the local cache);
deleting it terminates those to the local workload (they move back).

Everything runs in a test namespace (127/8 is local there): the "cluster
DNS" backend on 127.0.0.2, the local cache (a workload cgroup) serving on
127.0.0.9 at the frontend's port, an upstream server on 127.0.0.20 for a
redirect of an address that is no VIP, and a web service that no redirect
touches. Clients are real processes in workload cgroups below the test
cgroup.
"""
from __future__ import annotations

import functools

import pytest

from netenv import backend, frontend, node_state, poll, service
import netenv
from test_kernel_termination_triggers import DEAD_UDP, DnsClient

pytestmark = pytest.mark.agent

VIP = "127.96.0.53"
WEB_VIP = "127.96.0.81"
LOCAL = "127.0.0.9"
UPSTREAM = "127.0.0.20"
PORT = 53
WAIT = 60.0


@pytest.fixture
def dns_client(cgroup):
    made = []

    def make(cg, addr, port, netns):
        c = DnsClient(cg, addr, port, netns=netns)
        made.append(c)
        return c
    yield make
    for c in made:
        c.close()


class Node:
    def __init__(self, netns, backends, cgroup):
        self.ns = netns
        b = functools.partial(backends, netns=netns)
        self.cluster_u = b("cluster-dns", "127.0.0.2", 0, "udp")
        self.cluster_t = b("cluster-dns-tcp", "127.0.0.2", 0, "tcp")
        self.cache_u = b("cache", LOCAL, PORT, "udp")
        self.cache_t = b("cache-tcp", LOCAL, PORT, "tcp")
        self.web = b("web", "127.0.0.3", 0, "tcp")
        self.upstream = b("upstream", UPSTREAM, PORT, "udp")
        self.cache_cg = cgroup.child("cache")
        self.app_cg = cgroup.child("app")
        self.app_sub = self.app_cg.child("sub")

    def state(self, version: int, redirects=()) -> dict:
        s = node_state(version,
                       service("dns", [frontend(VIP, PORT, "udp")], [backend(self.cluster_u)]),
                       service("dns-tcp", [frontend(VIP, PORT, "tcp")], [backend(self.cluster_t)]),
                       service("web", [frontend(WEB_VIP, 80)], [backend(self.web)]))
        s["workloads"] = [{"name": "kube-system/cache", "cgroup": self.cache_cg.rel.lstrip("/")},
                          {"name": "default/app", "cgroup": self.app_cg.rel.lstrip("/")}]
        s["redirects"] = list(redirects)
        return s


def start(agent, state, match="auto"):
    """The agent, its termination programs loaded (as termination_triggers' start_agent)."""
    netenv.require_bpf_build_tools()
    a = agent(state, ["--workload-match", match])
    line = a.wait_log(r"socket termination: method (\w+)|socket termination unavailable", timeout=300)
    assert line is not None and "unavailable" not in line, a.log_text()[-3000:]
    return a


def redirect(name: str, frontends, exempt=("kube-system/cache",)) -> dict:
    return {"name": name, "frontends": frontends, "backends": [{"address": LOCAL, "port": 0}],
            "exempt": list(exempt)}


def reports(a) -> dict[str, dict]:
    return {r["id"]: r for r in a.dump("terminations").get("reports", [])}


def report(a, job_id: str) -> dict:
    got = poll(lambda: reports(a).get(job_id), timeout=WAIT, interval=0.2)
    assert got, (job_id, sorted(reports(a)), a.log_text()[-3000:])
    return got


def replies_from(c: DnsClient, backend_name: str, after: float):
    """The first reply from `backend_name` after the time `after`."""
    return poll(lambda: c.find(lambda e: e["ev"] == "reply" and e["t"] > after and e["backend"] == backend_name),
                timeout=WAIT, interval=0.05)


def last_event_t(c: DnsClient) -> float:
    evs = c.snapshot()
    return evs[-1]["t"] if evs else 0.0


def one(c, addr, port, proto) -> str:
    """The backend that answers one new socket to addr:port."""
    op = "udp_sendto" if proto == "udp" else "tcp_many"
    r = c.call(op, addr=addr, port=port, n=1)
    assert r["errors"] == {} and len(r["counts"]) == 1, r
    return next(iter(r["counts"]))


@pytest.mark.parametrize("match", ["auto", "exact"])
def test_redirect_moves_open_sockets_and_back(agent, backends, netns, cgroup, clients, dns_client, match):
    node = Node(netns, backends, cgroup)
    a = start(agent, node.state(1), match)
    caps = a.dump("info")["capabilities"]
    assert caps["workload_match"] == ("exact: forced" if match == "exact" else "ancestor"), caps

    resolver = dns_client(node.app_sub, VIP, PORT, netns)  # below the app workload: exact writes it too
    assert replies_from(resolver, "cluster-dns", 0.0), resolver.snapshot()[-5:]
    app = clients(netns, cg=node.app_cg)
    cache = clients(netns, cg=node.cache_cg)
    r = app.call("tcp_open", id="dns", addr=VIP, port=PORT)
    assert r.get("backend") == "cluster-dns-tcp", r
    r = app.call("tcp_open", id="web", addr=WEB_VIP, port=80)
    assert r.get("backend") == "web", r
    r = cache.call("tcp_open", id="dns", addr=VIP, port=PORT)
    assert r.get("backend") == "cluster-dns-tcp", r

    # Create: the app's sockets to the service die and come back to the cache.
    rd = redirect("node-local-dns", [frontend(VIP, PORT, "udp"), frontend(VIP, PORT, "tcp")])
    t0 = last_event_t(resolver)
    res = a.apply(node.state(2, [rd]))
    assert res.returncode == 0, res.stdout + res.stderr
    assert replies_from(resolver, "cache", t0), resolver.snapshot()[-8:]
    errors = [e for e in resolver.snapshot() if e["ev"] == "error" and e["t"] > t0]
    assert errors and errors[0]["error"] in DEAD_UDP, errors
    rep = report(a, "v2-local-redirect")
    assert rep["trigger"] == "local-redirect" and rep.get("service") == "node-local-dns", rep
    assert int(rep.get("destroyed", 0)) >= 2 and not rep.get("error"), rep  # the resolver's UDP + app's TCP
    assert "error" in app.call("tcp_ping", id="dns")                       # taken over
    assert app.call("tcp_ping", id="web").get("backend") == "web"          # no redirect: untouched
    assert cache.call("tcp_ping", id="dns").get("backend") == "cluster-dns-tcp"  # exempt: untouched
    assert one(app, VIP, PORT, "tcp") == "cache-tcp"
    assert one(app, VIP, PORT, "udp") == "cache"
    assert one(app, WEB_VIP, 80, "tcp") == "web"
    # The local cache itself still reaches the cluster DNS: no loop.
    assert one(cache, VIP, PORT, "udp") == "cluster-dns"
    assert one(cache, VIP, PORT, "tcp") == "cluster-dns-tcp"
    # A process of no workload is redirected too (exemption is per workload).
    assert one(clients(netns, cg=cgroup), VIP, PORT, "udp") == "cache"
    exempt = a.dump("policy")["redirectExemptions"]
    assert sorted((e["workload"], e["service"], e["frontend"]) for e in exempt) == [
        ("kube-system/cache", "redirect:node-local-dns", f"{VIP}:{PORT}/tcp"),
        ("kube-system/cache", "redirect:node-local-dns", f"{VIP}:{PORT}/udp")], exempt

    # Delete: the sockets to the cache die and come back to the service.
    r = app.call("tcp_open", id="dns2", addr=VIP, port=PORT)
    assert r.get("backend") == "cache-tcp", r
    t1 = last_event_t(resolver)
    res = a.apply(node.state(3))
    assert res.returncode == 0, res.stdout + res.stderr
    assert replies_from(resolver, "cluster-dns", t1), resolver.snapshot()[-8:]
    rep = report(a, "v3-local-redirect-node-local-dns")
    assert rep["trigger"] == "local-redirect" and rep.get("service") == "node-local-dns", rep
    assert int(rep.get("destroyed", 0)) >= 2, rep
    assert "error" in app.call("tcp_ping", id="dns2")
    assert cache.call("tcp_ping", id="dns").get("backend") == "cluster-dns-tcp"
    assert app.call("tcp_ping", id="web").get("backend") == "web"
    assert one(app, VIP, PORT, "udp") == "cluster-dns"
    assert one(app, VIP, PORT, "tcp") == "cluster-dns-tcp"
    services = a.dump("services")
    assert "redirect:" not in str(services), services
    assert a.dump("policy").get("redirectExemptions", []) == []


def test_redirect_of_an_address_that_is_no_vip(agent, backends, netns, cgroup, clients, dns_client):
    """A frontend given as an address: sockets connected to it directly
    move to the local cache and back; the cache still reaches it."""
    node = Node(netns, backends, cgroup)
    a = start(agent, node.state(1))
    resolver = dns_client(node.app_cg, UPSTREAM, PORT, netns)
    assert replies_from(resolver, "upstream", 0.0), resolver.snapshot()[-5:]
    app = clients(netns, cg=node.app_cg)
    cache = clients(netns, cg=node.cache_cg)

    t0 = last_event_t(resolver)
    res = a.apply(node.state(2, [redirect("upstream-cache", [frontend(UPSTREAM, PORT, "udp")])]))
    assert res.returncode == 0, res.stdout + res.stderr
    assert replies_from(resolver, "cache", t0), resolver.snapshot()[-8:]
    rep = report(a, "v2-local-redirect")
    assert rep["trigger"] == "local-redirect" and int(rep.get("destroyed", 0)) >= 1, rep
    assert one(app, UPSTREAM, PORT, "udp") == "cache"
    assert one(cache, UPSTREAM, PORT, "udp") == "upstream"   # exempt: the address itself

    t1 = last_event_t(resolver)
    res = a.apply(node.state(3))
    assert res.returncode == 0, res.stdout + res.stderr
    assert replies_from(resolver, "upstream", t1), resolver.snapshot()[-8:]
    assert report(a, "v3-local-redirect-upstream-cache")["trigger"] == "local-redirect"
    assert one(app, UPSTREAM, PORT, "udp") == "upstream"


V6_VIP = "fd00:96::53"  # inside the test namespace, which has no route: untranslated, it would go nowhere


def test_policy_judges_what_was_addressed_and_ipv6_is_redirected(agent, backends, netns, cgroup, clients):
    """A restricted workload reaches a redirected frontend as its service's
    verdict says (allowed: to the cache; denied: EPERM, redirected or not);
    an IPv6 frontend goes to the local IPv6 address."""
    node = Node(netns, backends, cgroup)
    v6_cluster = backends("cluster-dns-v6", "::1", 0, "udp", netns)
    v6_cache = backends("cache-v6", "::1", PORT, "udp", netns)
    state = node.state(1)
    state["services"].append(service("dns-v6", [frontend(V6_VIP, PORT, "udp")], [backend(v6_cluster)]))
    state["policy_sets"] = [{"name": "ps-dns-udp", "frontends": [
        {"service": "dns", "frontend": frontend(VIP, PORT, "udp"), "action": "ACTION_ALLOW"},
        {"service": "dns-v6", "frontend": frontend(V6_VIP, PORT, "udp"), "action": "ACTION_ALLOW"},
        {"service": "dns-tcp", "frontend": frontend(VIP, PORT, "tcp"), "action": "ACTION_DENY"}],
        # the cache's own address is allowed as an address: the redirect is still judged by the verdict
        "prefixes": [{"prefix": f"{LOCAL}/32", "rules": [{"port": 0, "end_port": 65535, "action": "ACTION_ALLOW"}]}]}]
    state["workloads"][1]["policy_set"] = "ps-dns-udp"
    a = start(agent, state)
    app = clients(netns, cg=node.app_cg)
    assert one(app, VIP, PORT, "udp") == "cluster-dns"
    assert app.call("connect_error", addr=VIP, port=PORT)["error"] == "EPERM"

    rd = redirect("node-local-dns", [frontend(VIP, PORT, "udp"), frontend(VIP, PORT, "tcp"),
                                     frontend(V6_VIP, PORT, "udp")])
    rd["backends"].append({"address": "::1", "port": 0})
    state["version"] = 2
    state["redirects"] = [rd]
    res = a.apply(state)
    assert res.returncode == 0, res.stdout + res.stderr
    assert one(app, VIP, PORT, "udp") == "cache"                          # allowed by the dns verdict
    assert app.call("connect_error", addr=VIP, port=PORT)["error"] == "EPERM"  # denied as addressed
    assert one(app, V6_VIP, PORT, "udp") == "cache-v6"
    assert one(clients(netns, cg=node.cache_cg), V6_VIP, PORT, "udp") == "cluster-dns-v6"
    assert v6_cache.requests >= 1


def test_the_redirect_follows_its_local_workloads_cgroup(agent, backends, netns, cgroup, dns_client):
    """A redirect programs nothing while its local workload's cgroup is not
    on the node: when it goes, the resolver moves back to the service, and
    when it comes back (the agent's re-check, every 2 s), to the cache."""
    node = Node(netns, backends, cgroup)
    rd = redirect("node-local-dns", [frontend(VIP, PORT, "udp")])
    a = start(agent, node.state(1, [rd]))
    resolver = dns_client(node.app_cg, VIP, PORT, netns)
    assert replies_from(resolver, "cache", 0.0), resolver.snapshot()[-5:]

    t0 = last_event_t(resolver)
    node.cache_cg.remove()
    assert replies_from(resolver, "cluster-dns", t0), resolver.snapshot()[-8:]
    gone = poll(lambda: [r for i, r in reports(a).items() if i.startswith("v1-local-redirect-node-local-dns-cgroup-")],
                timeout=WAIT, interval=0.2)
    assert gone and gone[0]["trigger"] == "local-redirect" and int(gone[0].get("destroyed", 0)) >= 1, gone

    t1 = last_event_t(resolver)
    node.cache_cg = cgroup.child("cache")
    assert replies_from(resolver, "cache", t1), resolver.snapshot()[-8:]
    back = poll(lambda: [r for i, r in reports(a).items() if i.startswith("v1-local-redirect-cgroup-")],
                timeout=WAIT, interval=0.2)
    assert back and int(back[0].get("destroyed", 0)) >= 1, back
