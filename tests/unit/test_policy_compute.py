"""Policy compute (pure): selection, policy sets (frontend verdicts, flattened
prefix rules), workloads and local redirects as a node receives them."""
import ipaddress
import random

from google.protobuf import json_format

from socklb.controlplane import compute, policy_compute
from socklb.controlplane.labelindex import LabelIndex, SelectorIndex, selects
from socklb.controlplane.redirect_compute import redirect_state
from socklb.lb.limits import MAX_PORT_RULES
from socklb.v1 import api_pb2, node_pb2, policy_pb2, types_pb2

ALLOW, DENY = policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY
TCP, UDP, ANY = types_pb2.PROTOCOL_TCP, types_pb2.PROTOCOL_UDP, types_pb2.PROTOCOL_UNSPECIFIED


def workload(name, node="n1", labels=None, addresses=(), **kw):
    return policy_pb2.Workload(name=name, node=node, cgroup=f"socklb/{name}", labels=labels or {},
                               addresses=list(addresses), **kw)


def policy(name, selector=None, *rules):
    return policy_pb2.Policy(name=name, selector=selector or {}, egress=list(rules))


def rule(action, services=(), cidrs=(), ports=(), fqdns=()):
    return policy_pb2.EgressRule(action=action, to_services=list(services), to_cidrs=list(cidrs),
                                 ports=[policy_pb2.PortRange(port=p[0], end_port=p[1], protocol=p[2]) for p in ports],
                                 to_fqdns=list(fqdns))


def service(name, *frontends, backends=()):
    return json_format.ParseDict({"name": name, "frontends": [
        {"address": a, "port": p, "protocol": types_pb2.Protocol.Name(proto)} for a, p, proto in frontends],
        "backends": [{"address": a, "port": p} for a, p in backends]},
        api_pb2.Service())


def verdicts(ps):
    return [(v.service, v.frontend.port, v.frontend.protocol, v.action) for v in ps.frontends]


def prefixes(ps):
    return {p.prefix: [(r.port, r.end_port, r.protocol, r.action) for r in p.rules] for p in ps.prefixes}


def state(node="n1", services=(), workloads=(), policies=(), redirects=()):
    return compute.node_state(services, node, 1, workloads, policies, redirects)


# --- selection ----------------------------------------------------------------------

def test_a_policy_selects_workloads_whose_labels_include_its_selector():
    web = workload("web", labels={"app": "web", "env": "prod"})
    db = workload("db", labels={"app": "db", "env": "prod"})
    bare = workload("bare")
    st = state(workloads=[web, db, bare], policies=[policy("p", {"app": "web"}, rule(ALLOW, cidrs=["10.0.0.0/8"]))])
    by_name = {w.name: w.policy_set for w in st.workloads}
    assert by_name["web"] == policy_compute.set_name(["p"]) and by_name["db"] == by_name["bare"] == ""
    assert [s.policies for s in st.policy_sets] == [["p"]]
    assert selects({}, {}) and selects({"a": "1"}, {"a": "1", "b": "2"}) and not selects({"a": ""}, {})


def test_the_empty_selector_selects_every_workload():
    ws = [workload("a", labels={"x": "1"}), workload("b")]
    st = state(workloads=ws, policies=[policy("all", {}, rule(ALLOW, cidrs=["0.0.0.0/0"]))])
    assert {w.policy_set for w in st.workloads} == {policy_compute.set_name(["all"])}
    assert len(st.policy_sets) == 1


def test_a_workload_goes_to_its_node_only_with_its_fields():
    ws = [workload("a", node="n1", bypass_socket_lb=True), workload("b", node="n2")]
    st = state("n1", workloads=ws)
    assert [(w.name, w.cgroup, w.bypass_socket_lb, w.policy_set) for w in st.workloads] == \
        [("a", "socklb/a", True, "")]
    assert not st.policy_sets and not st.redirects


def test_workloads_selected_by_the_same_policies_share_one_set():
    ws = [workload("a", labels={"app": "web"}), workload("b", labels={"app": "web", "x": "y"}),
          workload("c", labels={"app": "web", "team": "t"})]
    ps = [policy("p1", {"app": "web"}, rule(ALLOW, cidrs=["10.0.0.0/8"])),
          policy("p2", {"team": "t"}, rule(DENY, cidrs=["10.1.0.0/16"]))]
    st = state(workloads=ws, policies=ps)
    sets = {w.name: w.policy_set for w in st.workloads}
    assert sets["a"] == sets["b"] != sets["c"]
    assert [list(s.policies) for s in st.policy_sets] == sorted([["p1"], ["p1", "p2"]], key=policy_compute.set_name)


def test_the_set_name_depends_on_policy_names_only():
    assert policy_compute.set_name(["b", "a"]) == policy_compute.set_name(["a", "b"])
    name = policy_compute.set_name(["a"])
    assert name.startswith("ps-") and len(name) == 3 + 16
    before = policy_compute.policy_set([policy("a", {}, rule(ALLOW, cidrs=["10.0.0.0/8"]))], {})
    after = policy_compute.policy_set([policy("a", {}, rule(DENY, cidrs=["10.0.0.0/8"]))], {})
    assert before.name == after.name == name and before != after


def test_label_and_selector_indexes_agree_with_selects():
    labels = LabelIndex()
    selectors = SelectorIndex()
    objects = {"a": {"app": "web", "env": "prod"}, "b": {"app": "web"}, "c": {}}
    for name, ls in objects.items():
        labels.put(name, ls)
    sels = {"s1": {"app": "web"}, "s2": {"app": "web", "env": "prod"}, "s3": {}, "s4": {"env": "dev"}}
    for name, sel in sels.items():
        selectors.put(name, sel)
    for sname, sel in sels.items():
        assert labels.having(sel) == {o for o, ls in objects.items() if selects(sel, ls)}, sname
    for oname, ls in objects.items():
        assert selectors.matching(ls) == {s for s, sel in sels.items() if selects(sel, ls)}, oname
    labels.put("a", {"app": "db"})
    selectors.remove("s3")
    assert labels.having({"app": "web"}) == {"b"} and selectors.matching({}) == set()


# --- frontend verdicts -----------------------------------------------------------------

def test_deny_wins_per_frontend():
    svc = service("web", ("127.96.0.10", 80, TCP), ("127.96.0.10", 443, TCP))
    ps = [policy("allow", {}, rule(ALLOW, services=["web"])),
          policy("deny", {}, rule(DENY, services=["web"], ports=[(80, 0, ANY)]))]
    entry = policy_compute.policy_set(ps, {"web": svc})
    assert verdicts(entry) == [("web", 80, TCP, DENY), ("web", 443, TCP, ALLOW)]
    # The order of the policies does not matter.
    assert policy_compute.policy_set(ps[::-1], {"web": svc}) == entry


def test_ports_and_protocols_of_a_rule_match_frontends():
    svc = service("s", ("127.96.0.1", 53, UDP), ("127.96.0.1", 53, TCP), ("127.96.0.1", 8080, ANY),
                  ("127.96.0.1", 9000, TCP))
    services = {"s": svc}

    def matched(*ports):
        return [(p, proto) for _, p, proto, _ in verdicts(policy_compute.policy_set(
            [policy("p", {}, rule(ALLOW, services=["s"], ports=ports))], services))]

    assert matched((53, 0, UDP)) == [(53, UDP)]
    assert matched((53, 0, ANY)) == [(53, TCP), (53, UDP)]
    # A frontend's UNSPECIFIED protocol is TCP, as the datapath sees it.
    assert matched((8000, 8100, TCP)) == [(8080, ANY)]
    assert matched((8000, 8100, UDP)) == []
    assert matched((0, 0, ANY)) == [(53, TCP), (53, UDP), (8080, ANY), (9000, TCP)]
    assert matched((0, 0, UDP)) == [(53, UDP)]
    assert matched() == matched((0, 0, ANY))
    assert matched((9000, 0, TCP), (53, 0, UDP)) == [(53, UDP), (9000, TCP)]


def test_rules_naming_a_missing_service_match_nothing():
    entry = policy_compute.policy_set([policy("p", {}, rule(ALLOW, services=["nope"]))], {})
    assert not entry.frontends and not entry.prefixes


# --- prefixes ----------------------------------------------------------------------------

def test_prefixes_are_normalized_and_flattened_into_their_subnets_v4():
    ps = [policy("p", {}, rule(ALLOW, cidrs=["10.0.0.0/8"]),
                 rule(DENY, cidrs=["10.1.0.0/16"], ports=[(22, 0, TCP)]),
                 rule(ALLOW, cidrs=["10.1.2.3"], ports=[(53, 0, UDP), (8000, 8100, ANY)])),
          policy("q", {}, rule(ALLOW, cidrs=["10.9.9.9/8", "192.168.0.0/16"]))]  # host bits cleared; a duplicate
    got = prefixes(policy_compute.policy_set(ps, {}))
    every = (0, 65535, ANY, ALLOW)
    assert got == {
        "10.0.0.0/8": [every],
        "10.1.0.0/16": [every, (22, 22, TCP, DENY)],
        "10.1.2.3/32": [every, (22, 22, TCP, DENY), (53, 53, UDP, ALLOW), (8000, 8100, ANY, ALLOW)],
        "192.168.0.0/16": [every],
    }
    assert list(got) == ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "192.168.0.0/16"]


def test_prefixes_flatten_within_their_family_only_v6():
    ps = [policy("p", {}, rule(DENY, cidrs=["::/0"], ports=[(25, 0, TCP)]),
                 rule(ALLOW, cidrs=["2001:db8::/32"]),
                 rule(DENY, cidrs=["2001:DB8:1::/48"], ports=[(0, 0, UDP)]),
                 rule(ALLOW, cidrs=["2001:db8:1::5", "10.0.0.0/8"], ports=[(443, 0, TCP)]))]
    got = prefixes(policy_compute.policy_set(ps, {}))
    smtp, every = (25, 25, TCP, DENY), (0, 65535, ANY, ALLOW)
    assert got == {
        "10.0.0.0/8": [(443, 443, TCP, ALLOW)],  # ::/0 is IPv6: it does not contain an IPv4 prefix
        "::/0": [smtp],
        "2001:db8::/32": [every, smtp],
        "2001:db8:1::/48": sorted([every, smtp, (0, 65535, UDP, DENY)]),
        "2001:db8:1::5/128": sorted([every, smtp, (0, 65535, UDP, DENY), (443, 443, TCP, ALLOW)]),
    }
    assert list(got) == ["10.0.0.0/8", "::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1::5/128"]


def test_an_ipv4_prefix_written_v4_mapped_is_the_ipv4_one():
    # Stored data that did not pass the API (which stores the IPv4 form) must
    # not make two entries of one prefix, nor an IPv6 one of an IPv4 prefix.
    ps = [policy("p", {}, rule(ALLOW, cidrs=["10.0.0.0/8"], ports=[(80, 0, TCP)]),
                 rule(DENY, cidrs=["::ffff:10.1.0.0/112"], ports=[(80, 0, TCP)]),
                 rule(ALLOW, cidrs=["::ffff:10.0.0.0/104"], ports=[(443, 0, TCP)]),
                 rule(ALLOW, cidrs=["::/0"], ports=[(53, 0, UDP)]))]
    got = prefixes(policy_compute.policy_set(ps, {}))
    web, tls, dns = (80, 80, TCP, ALLOW), (443, 443, TCP, ALLOW), (53, 53, UDP, ALLOW)
    assert got == {
        "10.0.0.0/8": [web, tls],
        "10.1.0.0/16": [web, (80, 80, TCP, DENY), tls],
        "::/0": [dns],  # IPv6 only: it holds no IPv4 prefix
    }


def test_flattening_matches_the_definition_on_many_prefixes():
    rnd = random.Random(7)
    cidrs = set()
    for _ in range(300):
        length = rnd.choice([8, 12, 16, 20, 24, 28, 32])
        cidrs.add(str(ipaddress.ip_network(f"10.{rnd.randrange(4)}.{rnd.randrange(4)}.{rnd.randrange(256)}/{length}",
                                           strict=False)))
    rules = [rule(ALLOW, cidrs=[c], ports=[(i % 7 + 1, 0, TCP)]) for i, c in enumerate(sorted(cidrs))]
    got = prefixes(policy_compute.policy_set([policy("p", {}, *rules)], {}))
    own = {c: (i % 7 + 1, i % 7 + 1, TCP, ALLOW) for i, c in enumerate(sorted(cidrs))}
    nets = {c: ipaddress.ip_network(c) for c in own}
    for c, rs in got.items():
        assert rs == sorted({own[o] for o in own if nets[c].subnet_of(nets[o])}), c


def test_a_prefix_over_the_port_rule_limit_is_still_sent():
    ports = [(p, 0, TCP) for p in range(1, MAX_PORT_RULES + 2)]
    entry = policy_compute.policy_set([policy("p", {}, rule(ALLOW, cidrs=["10.0.0.0/8"], ports=ports))], {})
    (only,) = entry.prefixes
    assert len(only.rules) == MAX_PORT_RULES + 1  # the node refuses it, naming it; nothing is cut here


def test_a_prefix_that_does_not_parse_goes_as_written_unflattened():
    entry = policy_compute.policy_set([policy("p", {}, rule(ALLOW, cidrs=["0.0.0.0/0", "nonsense"]))], {})
    assert [(p.prefix, len(p.rules)) for p in entry.prefixes] == [("0.0.0.0/0", 1), ("nonsense", 1)]


def test_rules_with_no_action_grant_nothing():
    svc = service("s", ("127.96.0.1", 80, TCP))
    entry = policy_compute.policy_set([policy("p", {}, policy_pb2.EgressRule(to_services=["s"], to_cidrs=["10.0.0.0/8"]))],
                                      {"s": svc})
    assert not entry.frontends and not entry.prefixes


# --- local redirects ----------------------------------------------------------------------

DNS = service("kube-dns", ("10.96.0.10", 53, UDP), ("10.96.0.10", 53, TCP))


def redirect(name="dns", selector=None, service_name="kube-dns", frontend=None, backend_port=0):
    r = policy_pb2.LocalRedirect(name=name, service=service_name, selector=selector or {"app": "node-dns"},
                                 backend_port=backend_port)
    if frontend is not None:
        r.frontend.CopyFrom(frontend)
    return r


def test_a_redirect_is_served_only_by_nodes_with_a_local_match():
    caches = [workload("cache-b", "n1", {"app": "node-dns"}, ["fd00::2", "10.0.1.2"]),
              workload("cache-a", "n1", {"app": "node-dns"}, ["10.0.1.1"])]
    other = workload("client", "n2", {"app": "client"}, ["10.0.2.1"])
    ws = caches + [other]
    (entry,) = state("n1", [DNS], ws, redirects=[redirect(backend_port=5353)]).redirects
    assert entry.name == "dns" and list(entry.frontends) == list(DNS.frontends)
    assert [(b.address, b.port) for b in entry.backends] == [("10.0.1.1", 5353), ("10.0.1.2", 5353),
                                                             ("fd00::2", 5353)]
    assert list(entry.exempt) == ["cache-a", "cache-b"]
    assert not state("n2", [DNS], ws, redirects=[redirect()]).redirects


def test_a_redirect_of_a_missing_service_or_to_nowhere_is_not_served():
    ws = [workload("cache", "n1", {"app": "node-dns"}, ["10.0.1.1"])]
    assert not state("n1", [], ws, redirects=[redirect()]).redirects
    assert redirect_state(redirect(), [workload("cache", "n1", {"app": "node-dns"})], {"kube-dns": DNS}) is None


def test_a_redirect_of_one_frontend_keeps_the_frontends_port_by_default():
    fe = types_pb2.Frontend(address="169.254.20.10", port=53, protocol=UDP)
    r = redirect(service_name="", frontend=fe)
    entry = redirect_state(r, [workload("cache", "n1", {"app": "node-dns"}, ["10.0.1.1"])], {})
    assert list(entry.frontends) == [fe] and [(b.address, b.port) for b in entry.backends] == [("10.0.1.1", 0)]


def test_node_state_orders_everything_by_name():
    ws = [workload(n, labels={"k": n}) for n in ("c", "a", "b")]
    ps = [policy(f"p{n}", {"k": n}, rule(ALLOW, cidrs=["10.0.0.0/8"])) for n in ("c", "a", "b")]
    st = state(workloads=ws, policies=ps)
    assert [w.name for w in st.workloads] == ["a", "b", "c"]
    assert [s.name for s in st.policy_sets] == sorted(s.name for s in st.policy_sets)
    assert isinstance(st, node_pb2.NodeState)
