"""The node side of FQDN policy (issue 13, phase 2): a state's FQDN rules
and DNS servers compiled and validated with the state (a bad part refuses the
whole state), the learner's entries they make (ids shared with the policy
maps), and the make-before-break order of their writes."""
import pytest

from socklb.dataplane import dns
from socklb.dataplane.fqdn_entries import FqdnEntries, fqdn_entries, fqdn_plan
from socklb.dataplane.layout import PolicyAction
from socklb.dataplane.policy_desired import Ids, apply_policy_delta, desired_entries, node_policy
from socklb.dataplane.policy_plan import PolicyEntries, PortRule
from socklb.dataplane.statefile import parse_state
from socklb.dataplane.workloads import Cgroup
from socklb.lb import limits
from socklb.lb.addresses import addr16
from socklb.lb.errors import InvalidState
from socklb.v1 import node_pb2

STATE = """
services: []
policy_sets:
  - name: ps-f
    fqdns:
      - pattern: "*.example.test"
        rules: [{port: 443, end_port: 443, protocol: PROTOCOL_TCP, action: ACTION_ALLOW}]
      - pattern: bad.example.test
        rules: [{port: 0, end_port: 65535, action: ACTION_DENY}, {port: 443, end_port: 443, protocol: PROTOCOL_TCP, action: ACTION_ALLOW}]
    dns_servers: [{address: 10.53.0.2, port: 53}, {address: "fd00::53", port: 5353}]
  - name: ps-plain
    prefixes: [{prefix: 10.0.0.0/8, rules: [{port: 0, end_port: 65535, action: ACTION_ALLOW}]}]
workloads:
  - {name: a, cgroup: socklb/a, policy_set: ps-f}
  - {name: b, cgroup: socklb/b, policy_set: ps-f}
  - {name: c, cgroup: socklb/c, policy_set: ps-plain}
  - {name: d, cgroup: socklb/d}
"""
CGROUPS = {"a": Cgroup(101, (111,)), "b": Cgroup(102), "c": Cgroup(103), "d": Cgroup(104)}


def state() -> node_pb2.NodeState:
    return parse_state(STATE)


def test_fqdns_and_servers_compile_with_the_set():
    s = node_policy(state()).sets["ps-f"]
    assert dict(s.fqdns) == {
        "*.example.test": (PortRule(443, 443, 6, PolicyAction.ALLOW),),
        "bad.example.test": (PortRule(0, 65535, 0, PolicyAction.DENY), PortRule(443, 443, 6, PolicyAction.ALLOW))}
    assert s.dns_servers == {(addr16("10.53.0.2"), 53), (addr16("fd00::53"), 5353)}
    assert not node_policy(state()).sets["ps-plain"].fqdns


@pytest.mark.parametrize("field,change", [
    ("policy_sets[0].fqdns[0].pattern", lambda s: setattr(s.policy_sets[0].fqdns[0], "pattern", "a.*.example.test")),
    ("policy_sets[0].fqdns[1].pattern", lambda s: setattr(s.policy_sets[0].fqdns[1], "pattern", "*.Example.test.")),
    ("policy_sets[0].fqdns[0].rules[0].protocol", lambda s: setattr(s.policy_sets[0].fqdns[0].rules[0], "protocol", 9)),
    ("policy_sets[0].fqdns[0].rules", lambda s: s.policy_sets[0].fqdns[0].rules.extend(
        [node_pb2.PortRule(port=1, end_port=1, action=1)] * limits.MAX_PORT_RULES)),
    ("policy_sets[0].dns_servers[1].address", lambda s: setattr(s.policy_sets[0].dns_servers[1], "address", "dns")),
    ("policy_sets[0].dns_servers[0].port", lambda s: setattr(s.policy_sets[0].dns_servers[0], "port", 0)),
    ("policy_sets[0].dns_servers[2]", lambda s: s.policy_sets[0].dns_servers.add(address="10.53.0.2", port=53)),
])
def test_a_bad_fqdn_part_refuses_the_state_naming_the_field(field, change):
    s = state()
    change(s)
    with pytest.raises(InvalidState) as e:
        node_policy(s)
    assert e.value.field == field, str(e.value)


def test_a_bad_fqdn_part_in_a_delta_refuses_it_and_changes_nothing():
    before = node_policy(state())
    bad = node_pb2.PolicySetState()
    bad.CopyFrom(state().policy_sets[0])
    bad.fqdns[0].pattern = "api-*.example.test"
    with pytest.raises(InvalidState) as e:
        apply_policy_delta(before, node_pb2.NodeStateDelta(policy_set_upserts=[bad]))
    assert e.value.field == "policy_set_upserts[0].fqdns[0].pattern"
    assert dict(before.sets["ps-f"].fqdns) == dict(node_policy(state()).sets["ps-f"].fqdns)


def test_node_limits_on_patterns_and_servers(monkeypatch):
    monkeypatch.setattr(limits, "MAX_DNS_SERVERS_PER_NODE", 1)
    with pytest.raises(InvalidState) as e:
        node_policy(state())
    assert e.value.field == "policy_sets" and "2 DNS servers" in str(e.value)
    monkeypatch.setattr(limits, "MAX_FQDN_PATTERNS_PER_NODE", 1)
    with pytest.raises(InvalidState):
        node_policy(state())


def desired(s=None):
    policy = node_policy(s or state())
    resolved = {n: CGROUPS.get(n) for n in policy.specs}
    ids, entries, _ = desired_entries(policy, resolved, lambda key: None, Ids(), PolicyEntries())
    return policy, ids, entries, fqdn_entries(policy, ids, entries)


def test_learner_entries_share_the_policy_ids():
    policy, ids, entries, f = desired()
    sid = ids.sets["ps-f"]
    # Workloads with FQDN rules only, every cgroup the policy map lists, with the policy's ids.
    assert f.workloads == {101: (ids.workloads["a"], sid), 111: (ids.workloads["a"], sid),
                           102: (ids.workloads["b"], sid)}
    assert all(entries.workloads[cg].id == wid for cg, (wid, _) in f.workloads.items())
    assert f.servers == {(sid, addr16("10.53.0.2"), 53), (sid, addr16("fd00::53"), 5353),
                         (0, addr16("10.53.0.2"), 53), (0, addr16("fd00::53"), 5353)}
    one, exact = dns.pattern_id("*.example.test"), dns.pattern_id("bad.example.test")
    assert f.patterns == {(sid, dns.suffix_hash("example.test")): (2, 0, one, 0),
                          (sid, dns.suffix_hash("bad.example.test")): (1, exact, 0, 0)}
    assert f.rules[(sid, exact)] == policy.sets["ps-f"].fqdns["bad.example.test"]
    assert set(f.rules) == {(sid, one), (sid, exact)}


def test_pattern_ids_are_stable_hashes_of_the_canonical_pattern():
    assert dns.pattern_id("*.Example.TEST.") == dns.pattern_id("*.example.test") != 0
    assert dns.pattern_id("**.example.test") != dns.pattern_id("*.example.test")


def test_the_plan_makes_before_it_breaks():
    _, _, _, f = desired()
    ops = fqdn_plan(FqdnEntries(), f)
    tables = [o.table for o in ops]
    first_workload = tables.index("workloads")
    assert all(t == "workloads" for t in tables[first_workload:])  # everything they need is there before
    assert fqdn_plan(f, f) == []
    back = fqdn_plan(f, FqdnEntries())
    tables = [o.table for o in back]
    assert tables[:3] == ["workloads"] * 3  # the workloads leave first
    servers = [o.key[0] for o in back if o.table == "servers"]
    assert servers[-2:] == [0, 0]  # the union last
    assert all(o.kind == "delete" for o in back)


def test_a_set_losing_its_fqdn_rules_leaves_the_learner():
    s = state()
    del s.policy_sets[0].fqdns[:]
    del s.policy_sets[0].dns_servers[:]
    _, _, _, f = desired(s)
    assert f == FqdnEntries()
