"""The node's judge of open sockets (socklb/lb/policy_eval.py): frontends by
their verdict, other destinations by the longest prefix's rules, deny wins,
ports and protocols, both families and v4-mapped addresses; against a
brute-force reading of the flattened sets, and, end to end, against the
issue's rule applied to the policies the control plane flattened."""
from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklb.controlplane import policy_compute
from socklb.lb.addresses import addr16
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import FrontendKey
from socklb.lb.policy_eval import PolicyEvaluator
from socklb.v1 import api_pb2, node_pb2, policy_pb2, types_pb2

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
ALLOW, DENY = policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY
ANY, P_TCP, P_UDP = types_pb2.PROTOCOL_UNSPECIFIED, types_pb2.PROTOCOL_TCP, types_pb2.PROTOCOL_UDP


def rule(action, port=0, end_port=65535, protocol=ANY):
    return node_pb2.PortRule(port=port, end_port=end_port, protocol=protocol, action=action)


def prefix(text, *rules):
    return node_pb2.PrefixRules(prefix=text, rules=list(rules))


def verdict(address, port, action, protocol=P_TCP, service="web"):
    return node_pb2.FrontendVerdict(service=service, action=action, frontend=types_pb2.Frontend(
        address=address, port=port, protocol=protocol))


def pset(name="ps-a", frontends=(), prefixes=()):
    return node_pb2.PolicySetState(name=name, frontends=list(frontends), prefixes=list(prefixes))


def fe(address, port, proto=TCP):
    return FrontendKey(addr16(address), port, proto)


@pytest.fixture
def judge():
    return PolicyEvaluator([
        pset("ps-a",
             frontends=[verdict("127.96.0.10", 80, ALLOW), verdict("127.96.0.10", 53, DENY, P_UDP, "dns")],
             prefixes=[prefix("10.0.0.0/8", rule(ALLOW, 0, 65535, P_TCP)),
                       # flattened: the /16 carries the /8's rules and its own deny
                       prefix("10.1.0.0/16", rule(ALLOW, 0, 65535, P_TCP), rule(DENY, 22, 22)),
                       prefix("10.1.2.0/24", rule(ALLOW, 0, 65535, P_TCP), rule(DENY, 22, 22),
                              rule(ALLOW, 5000, 5010, P_UDP)),
                       prefix("2001:db8::/32", rule(ALLOW, 443, 443)),
                       prefix("::/0", rule(ALLOW)),
                       prefix("::ffff:192.168.0.0/112", rule(ALLOW, 53, 53, P_UDP))]),
        pset("ps-none"),
    ])


def test_unrestricted_allows_everything(judge):
    assert judge.allowed("", None, "8.8.8.8", 1, UDP)
    assert judge.allowed("", fe("127.96.0.10", 53, UDP), "127.0.0.2", 53, UDP)
    assert judge.denial("", None, "::1", 1, TCP) is None
    assert "" in judge and "ps-a" in judge and "ps-x" not in judge


def test_an_unknown_set_is_an_error(judge):
    with pytest.raises(KeyError, match="ps-x"):
        judge.allowed("ps-x", None, "10.0.0.1", 80, TCP)


def test_frontends_by_their_verdict(judge):
    assert judge.allowed("ps-a", fe("127.96.0.10", 80), "127.96.0.10", 80, TCP)
    # DENY, and no verdict at all, deny
    assert not judge.allowed("ps-a", fe("127.96.0.10", 53, UDP), "127.96.0.10", 53, UDP)
    assert not judge.allowed("ps-a", fe("127.96.0.10", 81), "127.96.0.10", 81, TCP)
    # the protocol is part of the frontend
    assert not judge.allowed("ps-a", fe("127.96.0.10", 80, UDP), "127.96.0.10", 80, UDP)
    # a frontend is judged by its verdict, never by the prefixes: 10/8 allows
    # TCP, a frontend at 10.0.0.1 without a verdict is still denied
    assert not judge.allowed("ps-a", fe("10.0.0.1", 80), "10.0.0.1", 80, TCP)
    assert judge.allowed("ps-a", None, "10.0.0.1", 80, TCP)
    # the address given with a frontend is not looked at (a backend's)
    assert judge.allowed("ps-a", fe("127.96.0.10", 80), "1.2.3.4", 9, UDP)
    assert "frontend 127.96.0.10:53/udp is denied" in judge.denial("ps-a", fe("127.96.0.10", 53, UDP), "", 0, 0)
    assert "frontend 127.96.0.10:81/tcp has no verdict" in judge.denial("ps-a", fe("127.96.0.10", 81), "", 0, 0)


def test_longest_prefix_and_deny_wins(judge):
    a = judge.allowed
    assert a("ps-a", None, "10.200.0.1", 22, TCP)          # /8: TCP, any port
    assert not a("ps-a", None, "10.200.0.1", 22, UDP)      # /8 has no UDP rule
    assert not a("ps-a", None, "10.1.9.9", 22, TCP)        # /16: the deny wins over the allow
    assert a("ps-a", None, "10.1.9.9", 23, TCP)
    assert not a("ps-a", None, "10.1.2.3", 22, UDP)        # /24: deny for any protocol
    assert a("ps-a", None, "10.1.2.3", 5000, UDP)          # range bounds, inclusive
    assert a("ps-a", None, "10.1.2.3", 5010, UDP)
    assert not a("ps-a", None, "10.1.2.3", 4999, UDP)
    assert not a("ps-a", None, "10.1.2.3", 5011, UDP)
    assert not a("ps-a", None, "10.1.2.3", 5005, TCP + 1)  # another protocol
    assert not a("ps-a", None, "11.0.0.1", 80, TCP)        # no prefix
    assert judge.denial("ps-a", None, "10.1.9.9", 22, TCP) == "policy set ps-a: 10.1.0.0/16 denies 10.1.9.9:22/tcp"
    assert judge.denial("ps-a", None, "11.0.0.1", 80, TCP) == "policy set ps-a: no prefix holds 11.0.0.1:80/tcp"
    assert (judge.denial("ps-a", None, "10.9.0.1", 53, UDP)
            == "policy set ps-a: no rule of 10.0.0.0/8 allows 10.9.0.1:53/udp")
    assert (judge.denial("ps-a", None, "2001:db9::1", 80, TCP) is None)
    assert "[2001:db8::1]:80/tcp" in judge.denial("ps-a", None, "2001:db8::1", 80, TCP)


def test_families_apart_and_v4_mapped_is_ipv4(judge):
    a = judge.allowed
    # ::/0 holds every IPv6 address but no IPv4 one
    assert a("ps-a", None, "fd00::1", 9, UDP)
    assert not a("ps-a", None, "172.16.0.1", 9, UDP)
    # an IPv6 prefix inside ::ffff:0:0/96 is an IPv4 prefix
    assert a("ps-a", None, "192.168.3.4", 53, UDP)
    assert not a("ps-a", None, "192.168.3.4", 53, TCP)
    # a v4-mapped destination (an IPv6 socket to an IPv4 peer) is IPv4, in every spelling
    for addr in ("::ffff:10.1.9.9", ipaddress.ip_address("::ffff:10.1.9.9"), addr16("10.1.9.9"),
                 socket.inet_aton("10.1.9.9"), ipaddress.ip_address("10.1.9.9")):
        assert a("ps-a", None, addr, 23, TCP), addr
        assert not a("ps-a", None, addr, 22, TCP), addr
    assert a("ps-a", None, socket.inet_pton(socket.AF_INET6, "2001:db8::5"), 443, UDP)
    with pytest.raises(ValueError):
        a("ps-a", None, b"\x01\x02", 1, TCP)


def test_a_set_without_rules_denies_everything(judge):
    assert not judge.allowed("ps-none", None, "127.0.0.1", 80, TCP)
    assert not judge.allowed("ps-none", fe("127.96.0.10", 80), "127.96.0.10", 80, TCP)


def test_actions_other_than_allow_and_deny_grant_nothing():
    j = PolicyEvaluator([pset("ps-b", frontends=[verdict("127.96.0.1", 80, policy_pb2.ACTION_UNSPECIFIED)],
                              prefixes=[prefix("0.0.0.0/0", rule(policy_pb2.ACTION_UNSPECIFIED))])])
    assert not j.allowed("ps-b", None, "1.1.1.1", 80, TCP)
    assert not j.allowed("ps-b", fe("127.96.0.1", 80), "127.96.0.1", 80, TCP)


def test_host_bits_and_bad_input():
    j = PolicyEvaluator([pset("ps-b", prefixes=[prefix("10.1.2.3/8", rule(ALLOW)), prefix("10.9.9.9", rule(DENY))])])
    assert j.allowed("ps-b", None, "10.200.0.1", 1, TCP)
    assert "10.9.9.9/32 denies" in j.denial("ps-b", None, "10.9.9.9", 1, TCP)
    with pytest.raises(InvalidState) as e:
        PolicyEvaluator([pset("ps-b", prefixes=[prefix("10.0.0.0/8"), prefix("10.0.0.0/33")])])
    assert e.value.field == "policy_sets[0].prefixes[1].prefix"
    with pytest.raises(InvalidState) as e:
        PolicyEvaluator([pset("ps-b", prefixes=[prefix("10.0.0.0/8"), prefix("::ffff:10.0.0.0/104")])])
    assert e.value.field == "policy_sets[0].prefixes[1].prefix" and "already" in str(e.value)
    with pytest.raises(InvalidState) as e:
        PolicyEvaluator([pset("ps-b"), pset("ps-c"), pset("ps-b")])
    assert e.value.field == "policy_sets[2].name"
    with pytest.raises(InvalidState) as e:
        PolicyEvaluator([pset("ps-b", frontends=[verdict("127.96.0.300", 80, ALLOW)])])
    assert e.value.field == "policy_sets[0].frontends[0].frontend.address"
    with pytest.raises(InvalidState) as e:
        PolicyEvaluator([pset("ps-b", prefixes=[prefix("10.0.0.0/8", rule(ALLOW, protocol=9))])])
    assert e.value.field == "policy_sets[0].prefixes[0].rules[0].protocol"


def test_of_state():
    state = node_pb2.NodeState(policy_sets=[pset("ps-b", prefixes=[prefix("127.0.0.0/8", rule(ALLOW))])])
    assert PolicyEvaluator.of_state(state).allowed("ps-b", None, "127.0.0.9", 1, UDP)


# --- against brute force --------------------------------------------------------------------------

# A small address space, so that prefixes nest and destinations fall in them.
_V4 = [f"10.{a}.{b}.{c}" for a in (0, 1) for b in (0, 1) for c in (0, 1, 255)]
_V6 = [f"fd00:{a}::{b}" for a in (0, 1) for b in (0, 1, 2)]


@st.composite
def a_prefix(draw):
    if draw(st.booleans()):
        return str(ipaddress.ip_network(f"{draw(st.sampled_from(_V4))}/{draw(st.sampled_from([0, 8, 15, 16, 23, 24, 31, 32]))}",
                                         strict=False))
    return str(ipaddress.ip_network(f"{draw(st.sampled_from(_V6))}/{draw(st.sampled_from([0, 16, 31, 32, 126, 128]))}",
                                    strict=False))


ports = st.sampled_from([0, 1, 22, 53, 80, 443, 1000, 65535])
protos = st.sampled_from([ANY, P_TCP, P_UDP])
actions = st.sampled_from([ALLOW, DENY])


@st.composite
def a_rule(draw):
    lo, hi = sorted((draw(ports), draw(ports)))
    return (lo, hi, draw(protos), draw(actions))


@st.composite
def a_destination(draw):
    addr = draw(st.sampled_from(_V4 + _V6 + ["::ffff:" + a for a in _V4[:4]] + ["192.168.0.1", "fe80::1"]))
    return addr, draw(ports), draw(st.sampled_from([TCP, UDP]))


def _ip(addr: str):
    ip = ipaddress.ip_address(addr)
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


def _matches(r, port, proto) -> bool:
    lo, hi, p, _ = r
    return lo <= port <= hi and (p == ANY or policy_compute.PROTOCOLS[p] == proto)


def brute_lpm(prefixes: dict[str, list], addr: str, port: int, proto: int) -> bool:
    """The definition over a flattened set: the longest prefix of the
    destination's family that holds it decides; deny wins; else denied."""
    ip = _ip(addr)
    held = [(ipaddress.ip_network(p).prefixlen, p) for p in prefixes
            if ipaddress.ip_network(p).version == ip.version and ip in ipaddress.ip_network(p)]
    if not held:
        return False
    rules = [r for r in prefixes[max(held)[1]] if _matches(r, port, proto)]
    return bool(rules) and all(r[3] == ALLOW for r in rules)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(a_prefix(), st.lists(a_rule(), max_size=4), max_size=8),
       st.lists(a_destination(), min_size=1, max_size=20))
def test_longest_prefix_match_is_the_brute_force_one(prefixes, dests):
    j = PolicyEvaluator([pset("ps-p", prefixes=[
        prefix(p, *(rule(a, lo, hi, pr) for lo, hi, pr, a in rules)) for p, rules in prefixes.items()])])
    for addr, port, proto in dests:
        assert j.allowed("ps-p", None, addr, port, proto) == brute_lpm(prefixes, addr, port, proto), (addr, port, proto)


# End to end: policies -> the control plane's sets -> the judge, against the
# issue's rule on the policies themselves.

SERVICES = {
    "web": api_pb2.Service(name="web", frontends=[types_pb2.Frontend(address="127.96.0.1", port=80),
                                                  types_pb2.Frontend(address="fd00:96::1", port=443)]),
    "dns": api_pb2.Service(name="dns", frontends=[types_pb2.Frontend(address="127.96.0.53", port=53,
                                                                     protocol=P_UDP),
                                                  types_pb2.Frontend(address="127.96.0.53", port=53,
                                                                     protocol=P_TCP)]),
}
FRONTENDS = [(name, f) for name, s in SERVICES.items() for f in s.frontends]


@st.composite
def a_policy(draw, i):
    egress = []
    for _ in range(draw(st.integers(0, 4))):
        port_ranges = [policy_pb2.PortRange(port=lo, end_port=hi, protocol=pr)
                       for lo, hi, pr, _ in draw(st.lists(a_rule(), max_size=2))]
        egress.append(policy_pb2.EgressRule(
            action=draw(actions), ports=port_ranges,
            to_cidrs=draw(st.lists(a_prefix(), max_size=3)),
            to_services=draw(st.lists(st.sampled_from(sorted(SERVICES)), max_size=2))))
    return policy_pb2.Policy(name=f"p{i}", egress=egress)


def issue_rule(policies, service_frontend, addr, port, proto) -> bool:
    """An ALLOW rule of a policy matches and no DENY rule does; a rule's
    services match their frontends, its prefixes only other destinations."""
    hits = []
    for p in policies:
        for r in p.egress:
            if service_frontend is not None:
                name, f = service_frontend
                hit = name in r.to_services and policy_compute.matches_frontend(r.ports, f)
            else:
                ip = _ip(addr)
                in_cidr = any(ipaddress.ip_network(c, strict=False).version == ip.version
                              and ip in ipaddress.ip_network(c, strict=False) for c in r.to_cidrs)
                hit = in_cidr and any(_matches((*policy_compute.port_range(pr), pr.protocol, 0), port, proto)
                                      for pr in r.ports) if r.ports else in_cidr
            if hit:
                hits.append(r.action)
    return ALLOW in hits and DENY not in hits


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3).flatmap(lambda n: st.tuples(*(a_policy(i) for i in range(n)))),
       st.lists(a_destination(), max_size=15), st.lists(st.sampled_from(FRONTENDS), max_size=4))
def test_the_sets_the_control_plane_computes_decide_as_the_issue_says(policies, dests, frontends):
    ps = policy_compute.policy_set(policies, SERVICES)
    j = PolicyEvaluator([ps])
    for addr, port, proto in dests:
        assert j.allowed(ps.name, None, addr, port, proto) == issue_rule(policies, None, addr, port, proto), (
            addr, port, proto, ps)
    for name, f in frontends:
        key = FrontendKey(addr16(_ip(f.address)), f.port, policy_compute.PROTOCOLS[f.protocol])
        assert j.allowed(ps.name, key, f.address, f.port, key.proto) == issue_rule(policies, (name, f), None, 0, 0), (
            name, f, ps)
