"""FQDN egress policy end to end (issue 13, phase 2) on a real kernel, with
a real agent process: a workload whose policy allows `*.example.test` on
port 443/TCP and DNS to a dnsmasq in a test namespace may connect to an
address only after a DNS answer it received mapped an allowed name to it.

dnsmasq answers at 127.0.0.1:53 of a network namespace the test creates;
the names resolve to 127.0.2.x of that namespace, where a TCP server listens
on 443 and 80. Clients run in that namespace, in two workload cgroups below
the agent's test cgroup. The agent, its pins, cgroups, namespace and
processes are removed at the end (the fixtures), even on failure.
"""
from __future__ import annotations

import signal

import pytest

from netenv import cgroup_progs, node_state, pinned_ids, poll
from test_kernel_dns import EXTRA, check_dns_tools, dnsmasqs  # noqa: F401 (fixture)

pytestmark = pytest.mark.agent

API = "127.0.2.1"    # shop.example.test
WWW = "127.0.2.3"    # www.example.test (learned while the agent is dead)
OTHER = "127.0.2.2"  # api.other.test: a name no pattern allows
RECORDS = ["--host-record=shop.example.test,127.0.2.1", "--host-record=api.other.test,127.0.2.2",
           "--host-record=www.example.test,127.0.2.3"]


def fqdn_state(cgroup, version=1) -> dict:
    rel = cgroup.rel.lstrip("/")
    state = node_state(version)
    state["policy_sets"] = [{
        "name": "ps-fqdn",
        "prefixes": [{"prefix": "127.0.0.1/32", "rules": [
            {"port": 53, "end_port": 53, "action": "ACTION_ALLOW"}]}],
        "fqdns": [{"pattern": "*.example.test", "rules": [
            {"port": 443, "end_port": 443, "protocol": "PROTOCOL_TCP", "action": "ACTION_ALLOW"}]}],
        "dns_servers": [{"address": "127.0.0.1", "port": 53}],
    }]
    state["workloads"] = [{"name": "w1", "cgroup": f"{rel}/w1", "policy_set": "ps-fqdn"},
                          {"name": "w2", "cgroup": f"{rel}/w2", "policy_set": "ps-fqdn"}]
    return state


@pytest.fixture
def fqdn_node(agent, cgroup, netns, backends, clients, dnsmasqs):  # noqa: F811
    check_dns_tools()
    cg1, cg2 = cgroup.child("w1"), cgroup.child("w2")
    for addr in (API, OTHER, WWW):
        backends(f"s443-{addr}", addr, 443, "tcp", netns)
        backends(f"s80-{addr}", addr, 80, "tcp", netns)
    dnsmasqs(netns, extra=RECORDS)
    a = agent(fqdn_state(cgroup))
    assert a.wait_version(1), a.log_text()
    c1 = clients(netns, cg=cg1, extra=EXTRA)
    c2 = clients(netns, cg=cg2, extra=EXTRA)
    return a, c1, c2


def connect(c, addr, port=443):
    return c.call("connect_error", addr=addr, port=port)["error"]


def resolve(c, name, tcp=False):
    return c.call("dns", server="127.0.0.1", name=name, tcp=tcp)["addrs"]


def test_a_connect_is_allowed_only_after_the_workload_resolved_an_allowed_name(fqdn_node):
    a, c1, c2 = fqdn_node
    caps = a.dump("info")["capabilities"]
    assert caps["fqdn_learner"].startswith("udp"), caps
    # Before any answer: denied, as any policy denial.
    assert connect(c1, API) == "EPERM"
    assert resolve(c1, "shop.example.test") == [API]
    assert connect(c1, API) is None
    assert connect(c1, API, 80) == "EPERM"          # the pattern's rules allow 443 only
    # A name no pattern allows teaches nothing.
    assert resolve(c1, "api.other.test") == [OTHER]
    assert connect(c1, OTHER) == "EPERM"
    # Another workload of the same set did not resolve: denied.
    assert connect(c2, API) == "EPERM"
    # Over TCP too, when the kernel gives the learner its TCP path.
    if caps["fqdn_learner"] == "udp+tcp":
        assert resolve(c2, "shop.example.test", tcp=True) == [API]
        assert connect(c2, API) is None

    # The agent lists what was learned.
    fq = a.dump("fqdn")
    rows = {(e["workload"], e["address"]) for e in fq.get("learned", [])}
    assert ("w1", API) in rows and ("w1", OTHER) not in rows, fq
    counters = a.dump("counters")
    assert int(counters.get("dnsLearned", 0)) >= 1 and int(counters.get("policyDenies", 0)) >= 4, counters

    # kill -9: DNS keeps working, the kernel keeps learning and enforcing.
    a.kill()
    assert connect(c1, API) is None
    assert connect(c1, WWW) == "EPERM"
    assert resolve(c1, "www.example.test") == [WWW]
    assert connect(c1, WWW) is None
    assert connect(c1, OTHER) == "EPERM"


def test_a_state_with_a_bad_fqdn_part_is_refused_and_changes_nothing(fqdn_node, cgroup):
    a, c1, _ = fqdn_node
    assert resolve(c1, "shop.example.test") == [API]
    assert connect(c1, API) is None
    bad = fqdn_state(cgroup, version=2)
    bad["policy_sets"][0]["fqdns"][0]["pattern"] = "shop-*.example.test"
    r = a.apply(bad)
    assert r.returncode != 0 and "policy_sets[0].fqdns[0].pattern" in r.stdout + r.stderr, r.stdout + r.stderr
    assert a.applied_version() == 1
    assert connect(c1, API) is None and connect(c1, OTHER) == "EPERM"


def test_answers_through_a_dns_service_vip_teach(agent, cgroup, netns, backends, clients, dnsmasqs):  # noqa: F811
    """The set's DNS servers as the control plane computes them for an
    allowed DNS service (its VIP and its backends): the client asks the VIP,
    the socket LB sends the query to the backend, and the learner, which sees
    the translated packets, learns from the backend's answer."""
    from google.protobuf import json_format

    from socklb.controlplane import policy_compute
    from socklb.v1 import api_pb2, policy_pb2, types_pb2

    check_dns_tools()
    vip = "127.96.13.53"
    cg1 = cgroup.child("w1")
    backends("s443", API, 443, "tcp", netns)
    dnsmasqs(netns, extra=RECORDS)
    svc = {"name": "dns", "frontends": [{"address": vip, "port": 53, "protocol": "PROTOCOL_UDP"}],
           "backends": [{"address": "127.0.0.1", "port": 53, "weight": 1}]}
    pol = policy_pb2.Policy(name="p", egress=[
        policy_pb2.EgressRule(action=policy_pb2.ACTION_ALLOW, to_services=["dns"]),
        policy_pb2.EgressRule(action=policy_pb2.ACTION_ALLOW, to_fqdns=["*.example.test"],
                              ports=[policy_pb2.PortRange(port=443, protocol=types_pb2.PROTOCOL_TCP)])])
    ps = policy_compute.policy_set([pol], {"dns": json_format.ParseDict(svc, api_pb2.Service())})
    assert [(s.address, s.port) for s in ps.dns_servers] == [("127.0.0.1", 53), (vip, 53)]
    state = node_state(1, svc)
    state["policy_sets"] = [json_format.MessageToDict(ps, preserving_proto_field_name=True)]
    state["workloads"] = [{"name": "w1", "cgroup": f"{cgroup.rel.lstrip('/')}/w1", "policy_set": ps.name}]
    a = agent(state)
    assert a.wait_version(1), a.log_text()
    c = clients(netns, cg=cg1, extra=EXTRA)
    assert connect(c, API) == "EPERM"
    assert c.call("dns", server=vip, name="shop.example.test")["addrs"] == [API]
    assert connect(c, API) is None
    assert [(r["workload"], r["address"]) for r in a.dump("fqdn")["learned"]] == [("w1", API)]


# --------------------------------------------------------------------------
# Terminations when a policy change removes a name or narrows its ports

SHOP, WWW2, CDN, SHORT = "127.0.2.11", "127.0.2.12", "127.0.2.13", "127.0.2.14"
TERM_RECORDS = [f"--host-record=shop.example.test,{SHOP}", f"--host-record=www.example.test,{WWW2}",
                f"--host-record=cdn.example.test,{CDN}", f"--host-record=cdn.other.test,{CDN}",
                f"--host-record=brief.example.test,{SHORT},1"]
DEAD_TCP, DEAD_UDP = "ECONNABORTED", "EDESTADDRREQ"


def _rules(*spec):
    return [{"port": port, "end_port": port, "protocol": f"PROTOCOL_{proto.upper()}", "action": "ACTION_ALLOW"}
            for port, proto in spec]


DENIED = "127.0.2.99"  # a prefix DENY decides it: no FQDN denial


def term_state(cgroup, version, fqdns: dict) -> dict:
    state = fqdn_state(cgroup, version)
    state["policy_sets"][0]["fqdns"] = [{"pattern": p, "rules": _rules(*r)} for p, r in fqdns.items()]
    state["policy_sets"][0]["prefixes"].append({"prefix": f"{DENIED}/32", "rules": [
        {"port": 0, "end_port": 65535, "action": "ACTION_DENY"}]})
    state["workloads"] = state["workloads"][:1]
    return state


def counts(a) -> dict[str, int]:
    c = a.dump("counters")
    return {k: int(c.get(k, 0)) for k in ("policyDenies", "fqdnDenies", "fqdnExpired", "dnsPruned")}


def moved(a, before) -> dict[str, int]:
    now = counts(a)
    return {k: now[k] - before[k] for k in now if now[k] != before[k]}


def _report(a, job_id):
    got = poll(lambda: {r["id"]: r for r in a.dump("terminations").get("reports", [])}.get(job_id),
               timeout=60, interval=0.2)
    assert got, (job_id, a.dump("terminations"))
    return got


@pytest.mark.parametrize("judge", ["kernel", "user"])
def test_a_policy_change_ends_the_sockets_to_addresses_only_a_removed_name_allowed(
        agent, cgroup, netns, backends, clients, dnsmasqs, judge):  # noqa: F811
    """w1 resolves shop, www, cdn.example.test and cdn.other.test (both of
    cdn's names give one address), short (TTL 1 s) and opens TCP and
    connected UDP sockets to them. Version 2 removes www.example.test and
    cdn.other.test and narrows shop to 443: the sockets to www and shop:80
    die (the client sees it), those to shop:443, cdn (still allowed
    through cdn.example.test) and short (its entry expired: open
    connections stay open) keep working. The FQDN counters move by what
    each denial is; the pruner (every second here) keeps brief's expired
    entry while a socket to it is open, and deletes it once it is closed.
    The same with the kernel judge (it reads dns_learned and policy_fqdns)
    and the user-space one."""
    check_dns_tools()
    cg1 = cgroup.child("w1")
    for addr in (SHOP, WWW2, CDN, SHORT):
        backends(f"t443-{addr}", addr, 443, "tcp", netns)
        backends(f"u443-{addr}", addr, 443, "udp", netns)
    backends(f"t80-{SHOP}", SHOP, 80, "tcp", netns)
    dnsmasqs(netns, extra=TERM_RECORDS)
    full = {"shop.example.test": [(443, "tcp"), (80, "tcp"), (443, "udp")],
            "www.example.test": [(443, "tcp"), (443, "udp")],
            "cdn.example.test": [(443, "tcp")], "cdn.other.test": [(443, "tcp")],
            "brief.example.test": [(443, "tcp")]}
    a = agent(term_state(cgroup, 1, full),
              ["--dns-prune-interval", "1", *(["--policy-judge", "user"] if judge == "user" else [])])
    assert a.wait_version(1), a.log_text()
    c = clients(netns, cg=cg1, extra=EXTRA)
    before = counts(a)
    assert connect(c, SHOP) == "EPERM"  # not resolved yet: only an FQDN rule could allow it
    assert moved(a, before) == {"policyDenies": 1, "fqdnDenies": 1}
    before = counts(a)
    assert connect(c, DENIED) == "EPERM"  # a prefix denies it
    assert moved(a, before) == {"policyDenies": 1}
    for name, addr in (("shop.example.test", SHOP), ("www.example.test", WWW2), ("cdn.example.test", CDN),
                       ("cdn.other.test", CDN), ("brief.example.test", SHORT)):
        assert resolve(c, name) == [addr]
    socks = {"shop-443": ("tcp", SHOP, 443), "shop-80": ("tcp", SHOP, 80), "shop-u": ("udp", SHOP, 443),
             "www-443": ("tcp", WWW2, 443), "www-u": ("udp", WWW2, 443), "cdn-443": ("tcp", CDN, 443),
             "short-443": ("tcp", SHORT, 443)}
    for sid, (proto, addr, port) in socks.items():
        r = c.call(f"{proto}_open", id=sid, addr=addr, port=port)
        assert "error" not in r, (sid, r)
    rows = {(r["address"], r["pattern"]) for r in a.dump("fqdn")["learned"]}
    assert {(CDN, "cdn.example.test"), (CDN, "cdn.other.test")} <= rows, rows
    # short's entry expires (TTL 1 s + the 5 s grace); what it opened stays
    assert poll(lambda: all(r["expired"] for r in a.dump("fqdn")["learned"] if r["address"] == SHORT), timeout=20)
    before = counts(a)
    assert connect(c, SHORT) == "EPERM"
    assert moved(a, before) == {"policyDenies": 1, "fqdnDenies": 1, "fqdnExpired": 1}

    narrowed = {"shop.example.test": [(443, "tcp"), (443, "udp")], "cdn.example.test": [(443, "tcp")],
                "brief.example.test": [(443, "tcp")]}
    r = a.apply(term_state(cgroup, 2, narrowed))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = _report(a, "v2-policy")
    assert ("policy judged in the kernel" in a.log_text()) == (judge == "kernel"), a.log_text()
    gone = {"shop-80", "www-443", "www-u"}
    assert int(rep["found"]) == int(rep["destroyed"]) == len(gone), rep
    reasons = {s["destination"]: s.get("reason", "") for s in rep.get("sockets", [])}
    assert any("FQDN: no allowed name resolved to" in why for why in reasons.values()), reasons
    assert any("shop.example.test" in why and "does not allow" in why for why in reasons.values()), reasons
    for sid, (proto, addr, port) in socks.items():
        got = c.call(f"{proto}_ping", id=sid)
        if sid in gone:
            assert got.get("error") == (DEAD_TCP if proto == "tcp" else DEAD_UDP), (sid, got)
        else:
            assert "backend" in got, (sid, got)
    # the removed name no longer allows a new connect either; the kept one does
    assert connect(c, WWW2) == "EPERM" and connect(c, CDN) is None
    # pruning: brief's entry expired long ago, a socket to it is open: kept
    assert a.wait_log("DNS prune: 0 expired learned entries deleted, 1 kept for open sockets", timeout=20), a.log_text()
    assert SHORT in {r["address"] for r in a.dump("fqdn")["learned"]} and counts(a)["dnsPruned"] == 0
    c.call("close", id="short-443")
    assert poll(lambda: SHORT not in {r["address"] for r in a.dump("fqdn")["learned"]}, timeout=30), a.dump("fqdn")
    assert counts(a)["dnsPruned"] == 1
    assert {r["address"] for r in a.dump("fqdn")["learned"]} == {SHOP, WWW2, CDN}  # the live ones stay


# --------------------------------------------------------------------------
# The learner's per-packet programs run only while FQDN rules are applied

LEARNER_TYPES = ("egress", "ingress", "sock_ops")  # bpftool's attach types end so (the LB hooks' do not)


def learner_progs(cgroup) -> list[str]:
    """The attach types of the learner's programs on the agent's cgroup."""
    return sorted(p["attach_type"] for p in cgroup_progs(cgroup.path) if p["attach_type"].endswith(LEARNER_TYPES))


def learner_links(a) -> dict[str, int]:
    """The learner's pinned cgroup links -> link id."""
    return {name: ident for name, (_, ident) in pinned_ids(a.pin_dir).items()
            if name in ("links/dns_egress", "links/dns_ingress", "links/dns_sockops")}


def plain_state(cgroup, version) -> dict:
    """w1 restricted (DNS to 127.0.0.1 allowed), no FQDN rule."""
    state = fqdn_state(cgroup, version)
    del state["policy_sets"][0]["fqdns"], state["policy_sets"][0]["dns_servers"]
    state["workloads"] = state["workloads"][:1]
    return state


def test_the_learner_is_attached_only_while_fqdn_rules_are_applied(agent, cgroup, netns, backends, clients,
                                                                   dnsmasqs):  # noqa: F811
    check_dns_tools()
    cg1 = cgroup.child("w1")
    for addr in (API, WWW):
        backends(f"s443-{addr}", addr, 443, "tcp", netns)
    dnsmasqs(netns, extra=RECORDS)
    a = agent(plain_state(cgroup, 1))
    assert a.wait_version(1), a.log_text()
    c = clients(netns, cg=cg1, extra=EXTRA)

    def idle():
        caps = a.dump("info")["capabilities"]
        assert caps["fqdn_learner"].startswith("udp") and caps["fqdn_learner_hooks"] == "idle", caps
        assert learner_progs(cgroup) == [] and learner_links(a) == {}, (learner_progs(cgroup), learner_links(a))

    def attached():
        caps = a.dump("info")["capabilities"]
        assert caps["fqdn_learner_hooks"] == "attached", caps
        want = 3 if caps["fqdn_learner"] == "udp+tcp" else 2
        assert len(learner_progs(cgroup)) == len(learner_links(a)) == want, (caps, learner_progs(cgroup))
        return learner_links(a)

    # No FQDN rule: the learner's maps are loaded, its programs are not attached; DNS works.
    idle()
    assert resolve(c, "shop.example.test") == [API]
    assert connect(c, API) == "EPERM"  # the set allows DNS only
    # A restart with no FQDN rule leaves them detached.
    a.kill()
    a.write_state(plain_state(cgroup, 2))
    a.start()
    assert a.wait_version(2), a.log_text()
    idle()

    # A state with an FQDN rule attaches them before its entries are written: learning works.
    r = a.apply(fqdn_state(cgroup, 3))
    assert r.returncode == 0, r.stdout + r.stderr
    links = attached()
    assert connect(c, API) == "EPERM"
    assert resolve(c, "shop.example.test") == [API]
    assert connect(c, API) is None
    # kill -9 and a restart whose first state has FQDN rules: the same links, adopted.
    a.kill()
    assert len(learner_progs(cgroup)) == len(links)  # still learning without the agent
    a.write_state(fqdn_state(cgroup, 4))
    a.start()
    assert a.wait_version(4), a.log_text()
    assert attached() == links
    assert connect(c, WWW) == "EPERM"
    assert resolve(c, "www.example.test") == [WWW]
    assert connect(c, WWW) is None

    # The last FQDN rule goes: detached, what was learned stays in the map.
    r = a.apply(plain_state(cgroup, 5))
    assert r.returncode == 0, r.stdout + r.stderr
    idle()
    assert {API, WWW} <= {e["address"] for e in a.dump("fqdn").get("learned", [])}, a.dump("fqdn")
    assert resolve(c, "shop.example.test") == [API]

    # Attached again, then a restart whose first state has none detaches them.
    r = a.apply(fqdn_state(cgroup, 6))
    assert r.returncode == 0, r.stdout + r.stderr
    attached()
    a.kill()
    a.write_state(plain_state(cgroup, 7))
    a.start()
    assert a.wait_version(7), a.log_text()
    idle()
    assert {API, WWW} <= {e["address"] for e in a.dump("fqdn").get("learned", [])}, a.dump("fqdn")
    assert "Traceback" not in a.log_text(), a.log_text()
