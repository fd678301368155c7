"""The node side of FQDN policy (issue 13, phase 2): a state's FQDN rules
and DNS servers compiled and validated with the state (a bad part refuses the
whole state), the learner's entries they make (ids shared with the policy
maps), and the make-before-break order of their writes."""
import pytest

from socklb.dataplane import dns
from socklb.dataplane.layout import PolicyAction
from socklb.dataplane.policy_desired import Ids, apply_policy_delta, desired_entries, node_policy
from socklb.dataplane.policy_plan import FqdnEntries, FqdnOp, PolicyEntries, PortRule, PutWorkload, fqdn_plan, \
    make_policy_plan
from socklb.dataplane.writer import MemoryMapWriter
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
    return policy, ids, entries, entries.fqdn


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
    make, switch, gone = fqdn_plan(FqdnEntries(), f)
    assert {o.table for o in make} == {"rules", "patterns", "servers"} and not gone
    assert {o.table for o in switch} == {"workloads"}
    assert [o.key[0] for o in make if o.table == "servers"][:2] == [0, 0]  # the union first
    assert fqdn_plan(f, f) == ([], [], [])
    make, switch, gone = fqdn_plan(f, FqdnEntries())
    assert not make and [o.kind for o in switch] == ["delete"] * 3
    assert [o.key[0] for o in gone if o.table == "servers"][-2:] == [0, 0]  # the union last


def test_the_policy_plan_carries_the_fqdn_writes_in_order_and_a_writer_holds_them():
    """The learner's entries go with the policy plan: a set's rules, patterns
    and servers before the services plan, the learner's workload entries
    after the policy's, the rest at the end; a writer executing the plan
    holds what was desired, and reads it back."""
    _, _, entries, f = desired()
    plan = make_policy_plan(PolicyEntries(), entries)
    before_tables = [o.table for o in plan.before if isinstance(o, FqdnOp)]
    assert set(before_tables) == {"rules", "patterns", "servers"}
    after = plan.after
    last_policy_workload = max(i for i, o in enumerate(after) if isinstance(o, PutWorkload))
    fqdn_workloads = [i for i, o in enumerate(after) if isinstance(o, FqdnOp) and o.table == "workloads"]
    assert fqdn_workloads and min(fqdn_workloads) > last_policy_workload
    w = MemoryMapWriter()
    w.execute_policy(plan.before)
    w.execute_policy(plan.after)
    assert w.read_policy().fqdn == f
    # Back to no FQDN rules: everything goes, workloads first.
    s = state()
    del s.policy_sets[0].fqdns[:]
    policy = node_policy(s)
    ids, empty, _ = desired_entries(policy, {n: CGROUPS.get(n) for n in policy.specs}, lambda key: None, Ids(),
                                    w.read_policy())
    plan = make_policy_plan(w.read_policy(), empty)
    w.execute_policy(plan.before)
    w.execute_policy(plan.after)
    assert w.read_policy().fqdn == FqdnEntries()


def test_a_set_losing_its_fqdn_rules_leaves_the_learner():
    s = state()
    del s.policy_sets[0].fqdns[:]
    del s.policy_sets[0].dns_servers[:]
    _, _, _, f = desired(s)
    assert f == FqdnEntries()


def test_dump_fqdn_names_workloads_and_patterns():
    from socklb.dataplane.dns import Learned, LearnedSlot
    from socklb.dataplane.policy_dump import fqdn_view
    policy, ids, entries, f = desired()
    wid = ids.workloads["a"]
    pid = dns.pattern_id("*.example.test")
    learned = [Learned(wid, "127.0.2.1", 1, (LearnedSlot(pid, 10_000_000_000, 300),)),
               Learned(wid, "127.0.2.9", 1, (LearnedSlot(pid, 1_000_000_000, 300), LearnedSlot(78, 9_000_000_000, 7))),
               Learned(4000, "10.0.0.1", 1, (LearnedSlot(77, 10_000_000_000, 5),))]
    view = fqdn_view(state(), entries, {n: c.id for n, c in CGROUPS.items()}, learned, {"learned": 3},
                     now_ns=5_000_000_000)
    rows = view["learned"]
    assert rows[0] == {"workload": "", "workloadId": 4000, "address": "10.0.0.1", "pattern": "", "patternId": 77,
                       "ttl": 5, "expiresIn": 5.0, "expired": False}
    assert rows[1]["workload"] == "a" and rows[1]["pattern"] == "*.example.test" and not rows[1]["expired"]
    # an address learned through two names: a row per name, each with its expiry
    assert [(r["address"], r["patternId"], r["expired"]) for r in rows[2:]] == \
        [("127.0.2.9", 78, False), ("127.0.2.9", pid, True)]
    assert view["counters"] == {"learned": 3}


def test_the_learners_counters_go_into_the_nodes_counters():
    from socklb.dataplane import layout as lay
    from socklb.dataplane.stats import KernelStatistics
    stats = KernelStatistics(lambda: {c: 1 + (c == lay.Counter.FQDN_EXPIRED) for c in lay.Counter}, None,
                             dns_counters=lambda: {"queries": 5, "answers": 4, "learned": 3, "unsolicited": 2,
                                                   "malformed": 1, "truncated": 0, "tcp_messages": 9, "pruned": 6})
    c = stats.counters()
    assert (c.fqdn_denies, c.fqdn_expired, c.dns_pruned) == (1, 2, 6)
    assert (c.dns_queries, c.dns_answers, c.dns_learned, c.dns_unsolicited, c.dns_malformed, c.dns_truncated) == \
        (5, 4, 3, 2, 1, 0)
    assert c.policy_denies == 1
    assert KernelStatistics(lambda: {c: 0 for c in lay.Counter}, None).counters().dns_learned == 0


def test_a_set_whose_fqdn_rules_change_while_a_workload_leaves_it_is_written_anew():
    """As for prefixes (policy_plan's order): a workload leaving a set edited
    in the same update must not see it half edited, so the set gets a fresh id."""
    policy, ids, entries, _ = desired()
    w = MemoryMapWriter()
    plan = make_policy_plan(PolicyEntries(), entries)
    w.execute_policy(plan.before)
    w.execute_policy(plan.after)
    s = state()
    s.policy_sets[0].fqdns[0].rules[0].port = 444
    s.policy_sets[0].fqdns[0].rules[0].end_port = 444
    s.workloads[1].policy_set = "ps-plain"  # b leaves ps-f in the same update
    policy2 = node_policy(s)
    ids2, entries2, _ = desired_entries(policy2, {n: CGROUPS.get(n) for n in policy2.specs}, lambda key: None,
                                        ids, w.read_policy())
    assert ids2.sets["ps-f"] != ids.sets["ps-f"]
    # Without a workload leaving, the same edit is made in place.
    s = state()
    s.policy_sets[0].fqdns[0].rules[0].port = 444
    s.policy_sets[0].fqdns[0].rules[0].end_port = 444
    policy3 = node_policy(s)
    ids3, _, _ = desired_entries(policy3, {n: CGROUPS.get(n) for n in policy3.specs}, lambda key: None, ids,
                                 w.read_policy())
    assert ids3.sets["ps-f"] == ids.sets["ps-f"]
