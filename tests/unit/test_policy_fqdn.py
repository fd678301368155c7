"""FQDN rules (issue 13, phase 2) in the API and the control plane's
compute: pattern syntax shared by both planes (socklb.lb.fqdn), the stored
form, the flattened port rules per pattern, and the DNS servers of a set."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklb.controlplane import policy_compute
from socklb.controlplane.validate_policy import normalized_policy, validate_policy
from socklb.lb import fqdn
from socklb.lb.errors import InvalidState
from socklb.v1 import policy_pb2

from test_policy_compute import ALLOW, DENY, TCP, UDP, policy, rule, service

PATTERNS = ["a.example.test", "b.a.example.test", "*.example.test", "**.example.test", "*.a.example.test",
            "**.a.example.test", "*", "example.test", "*.test", "**.test", "other.test", "*.other.test"]
NAMES = ["example.test", "a.example.test", "b.a.example.test", "c.b.a.example.test", "x.example.test",
         "other.test", "y.other.test", "test", "z.y.other.test", "a.example.test2"]


def _all_names_match(outer: str, inner: str) -> bool:
    """covers() by brute force over NAMES (a finite witness set)."""
    return all(fqdn.matches(outer, n) for n in NAMES if fqdn.matches(inner, n))


@pytest.mark.parametrize("outer,inner", list(itertools.product(PATTERNS, PATTERNS)))
def test_covers_is_what_matching_says(outer, inner):
    o, i = fqdn.parse_pattern(outer), fqdn.parse_pattern(inner)
    got = fqdn.covers(o, i)
    # covers() must never claim more than matching shows on the witnesses...
    if got:
        assert _all_names_match(outer, inner)
    # ... and covering() lists exactly the covering ones among PATTERNS.
    listed = {(p.kind, p.suffix) for p in fqdn.covering(i)}
    assert ((o.kind, o.suffix) in listed) is got


@pytest.mark.parametrize("text,canonical", [("API.Example.TEST.", "api.example.test"), ("*.Example.test", "*.example.test"),
                                             ("**.example.test.", "**.example.test"), ("**", "*"), ("*.", "*")])
def test_canonical_spelling(text, canonical):
    assert fqdn.canonical_pattern(text) == canonical
    p = policy("p", {}, rule(ALLOW, fqdns=[text]))
    validate_policy(p)
    assert list(normalized_policy(p).egress[0].to_fqdns) == [canonical]


def test_a_fqdn_only_rule_is_valid_and_needs_no_other_target():
    validate_policy(policy("p", {}, rule(ALLOW, fqdns=["*.example.test"], ports=[(443, 0, TCP)])))
    with pytest.raises(InvalidState) as e:
        validate_policy(policy("p", {}, rule(ALLOW, ports=[(443, 0, TCP)])))
    assert e.value.field == "policy.egress[0]" and "to_fqdns" in str(e.value)


@pytest.mark.parametrize("bad", ["api-*.example.com", "a.*.example.com", "*example.com", "***.a.com", "*.*.a.com",
                                 "", "a b.com", "-a.com", "a..com", "é.com", "a" * 64 + ".com",
                                 ".".join(["a" * 63] * 4)])
def test_bad_patterns_are_refused_naming_the_entry(bad):
    p = policy("p", {}, rule(ALLOW, cidrs=["10.0.0.0/8"]), rule(ALLOW, fqdns=["ok.example.test", bad]))
    with pytest.raises(InvalidState) as e:
        validate_policy(p)
    assert e.value.field == "policy.egress[1].to_fqdns[1]"


def _fq(ps):
    return {f.pattern: [(r.port, r.end_port, r.protocol, r.action) for r in f.rules] for f in ps.fqdns}


def test_patterns_are_flattened_with_those_covering_them_and_deny_wins():
    p1 = policy("p1", {}, rule(ALLOW, fqdns=["**.example.test"], ports=[(443, 0, TCP)]),
                rule(ALLOW, fqdns=["API.example.test"], ports=[(80, 0, TCP)]))
    p2 = policy("p2", {}, rule(DENY, fqdns=["bad.example.test"]), rule(ALLOW, fqdns=["*.other.test"]))
    ps = policy_compute.policy_set([p1, p2], {})
    assert _fq(ps) == {
        "**.example.test": [(443, 443, TCP, ALLOW)],
        "api.example.test": [(80, 80, TCP, ALLOW), (443, 443, TCP, ALLOW)],
        "bad.example.test": [(0, 65535, 0, DENY), (443, 443, TCP, ALLOW)],
        "*.other.test": [(0, 65535, 0, ALLOW)],
    }
    assert [f.pattern for f in ps.fqdns] == sorted(f.pattern for f in ps.fqdns)


def test_no_fqdn_rule_no_fqdn_state():
    dns = service("kube/dns", ("127.96.0.10", 53, UDP), backends=[("10.9.0.1", 5353)])
    ps = policy_compute.policy_set([policy("p", {}, rule(ALLOW, services=["kube/dns"]))], {"kube/dns": dns})
    assert not ps.fqdns and not ps.dns_servers


def test_dns_servers_are_the_allowed_dns_frontends_their_backends_and_single_addresses():
    dns = service("kube/dns", ("127.96.0.10", 53, UDP), ("127.96.0.10", 53, TCP),
                  backends=[("10.9.0.1", 5353), ("fd00::53", 0)])
    web = service("web", ("127.96.0.20", 80, TCP), backends=[("10.9.0.9", 80)])
    denied = service("evil/dns", ("127.96.0.66", 53, UDP), backends=[("10.6.6.6", 53)])
    p = policy("p", {}, rule(ALLOW, services=["kube/dns", "web", "evil/dns"]), rule(DENY, services=["evil/dns"]),
               rule(ALLOW, cidrs=["10.8.0.1", "10.8.0.0/16", "fd00::1"], ports=[(53, 0, UDP)]),
               rule(ALLOW, cidrs=["10.8.0.2"], ports=[(443, 0, TCP)]),
               rule(DENY, cidrs=["fd00::1"]),
               rule(ALLOW, fqdns=["*.example.test"], ports=[(443, 0, TCP)]))
    ps = policy_compute.policy_set([p], {"kube/dns": dns, "web": web, "evil/dns": denied})
    # 10.8.0.2 allows 443 itself, and 53/UDP through 10.8.0.0/16 containing it; fd00::1 is denied.
    assert [(s.address, s.port) for s in ps.dns_servers] == [
        ("10.8.0.1", 53), ("10.8.0.2", 53), ("10.9.0.1", 5353), ("127.96.0.10", 53), ("fd00::53", 53)]


def test_a_dns_service_backend_change_recomputes_the_set():
    from socklb.controlplane.cache import SnapshotCache
    from test_policy_compute import workload
    dns = service("kube/dns", ("127.96.0.10", 53, UDP), backends=[("10.9.0.1", 53)])
    p = policy("p", {}, rule(ALLOW, services=["kube/dns"]), rule(ALLOW, fqdns=["*.example.test"]))
    cache = SnapshotCache()
    cache.load([dns], 10, [workload("w", "n1", {}, [])], [p], [])
    before = cache.policy_for("n1").policy_sets
    assert [s.address for s in next(iter(before.values())).dns_servers] == ["10.9.0.1", "127.96.0.10"]
    upd = cache.apply([("kube/dns", service("kube/dns", ("127.96.0.10", 53, UDP), backends=[("10.9.0.2", 53)]))],
                      11, ["n1"])
    sets = upd.policy["n1"].policy_set_upserts
    assert [s.address for s in sets[0].dns_servers] == ["10.9.0.2", "127.96.0.10"]


labels = st.sampled_from(["a", "b", "example", "test", "x-1", "_s"])
names = st.lists(labels, min_size=1, max_size=5).map(".".join)
patterns = st.one_of(names, names.map(lambda n: "*." + n), names.map(lambda n: "**." + n), st.just("*"))


@settings(max_examples=300, deadline=None, database=None)
@given(patterns, patterns, st.lists(names, max_size=20))
def test_covering_agrees_with_matching(a, b, witnesses):
    pa, pb = fqdn.parse_pattern(a), fqdn.parse_pattern(b)
    if fqdn.covers(pa, pb):
        assert all(fqdn.matches(a, n) for n in witnesses if fqdn.matches(b, n))
    assert ((pa.kind, pa.suffix) in {(p.kind, p.suffix) for p in fqdn.covering(pb)}) is fqdn.covers(pa, pb)


def test_the_nodes_judge_keeps_sockets_an_fqdn_rule_may_have_allowed():
    """Without what the workload learned (learned=None: a dry run), a
    destination no prefix decides is kept when a pattern allows its port; a
    prefix DENY still wins. With it, only the learned patterns of the set
    count, deny winning among them."""
    from socklb.lb.policy_eval import PolicyEvaluator
    from socklb.lb.protocols import TCP as IP_TCP, UDP as IP_UDP
    p = policy("p", {}, rule(ALLOW, fqdns=["*.example.test"], ports=[(443, 0, TCP)]),
               rule(DENY, cidrs=["10.6.0.0/16"]), rule(ALLOW, cidrs=["10.7.0.0/16"], ports=[(80, 0, TCP)]))
    ps = policy_compute.policy_set([p], {})
    judge = PolicyEvaluator([ps])
    assert judge.allowed(ps.name, None, "192.0.2.1", 443, IP_TCP)
    assert judge.allowed(ps.name, None, "10.7.0.1", 443, IP_TCP)  # the prefix has no rule for 443
    assert not judge.allowed(ps.name, None, "192.0.2.1", 443, IP_UDP)
    assert not judge.allowed(ps.name, None, "192.0.2.1", 80, IP_TCP)
    assert not judge.allowed(ps.name, None, "10.6.0.1", 443, IP_TCP)  # deny wins
    ex = fqdn.pattern_id("*.example.test")
    assert judge.allowed(ps.name, None, "192.0.2.1", 443, IP_TCP, frozenset({ex}))
    assert not judge.allowed(ps.name, None, "192.0.2.1", 443, IP_TCP, frozenset())
    assert not judge.allowed(ps.name, None, "192.0.2.1", 443, IP_TCP, frozenset({fqdn.pattern_id("x.test")}))
    assert "FQDN: no allowed name resolved to 192.0.2.1:443/tcp" in judge.denial(
        ps.name, None, "192.0.2.1", 443, IP_TCP, frozenset())
    assert judge.allowed(ps.name, None, "10.6.0.1", 443, IP_TCP, frozenset({ex})) is False  # the prefix decides
    no_fqdn = policy_compute.policy_set([policy("q", {}, rule(ALLOW, cidrs=["10.7.0.0/16"]))], {})
    assert not PolicyEvaluator([no_fqdn]).allowed(no_fqdn.name, None, "192.0.2.1", 443, IP_TCP)
