"""Validation of the policy half of a node state (dataplane/policy_desired.py):
a state or delta is refused whole, naming the field; what passes compiles to
the kernel's encoding."""
import pytest

from socklb.dataplane.layout import PolicyAction
from socklb.dataplane.policy_desired import apply_policy_delta, cgroup_path, node_policy
from socklb.dataplane.policy_plan import PortRule
from socklb.dataplane.statefile import parse_state
from socklb.lb import limits
from socklb.lb.addresses import addr16
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import FrontendKey
from socklb.v1 import node_pb2

GOOD = """
services: []
policy_sets:
  - name: ps-a
    frontends:
      - {service: web, frontend: {address: 127.96.0.1, port: 80, protocol: PROTOCOL_TCP}, action: ACTION_ALLOW}
    prefixes:
      - prefix: 10.0.0.0/8
        rules:
          - {port: 0, end_port: 65535, action: ACTION_ALLOW}
          - {port: 22, end_port: 22, protocol: PROTOCOL_TCP, action: ACTION_DENY}
      - {prefix: "2001:db8::/32", rules: [{port: 53, end_port: 53, protocol: PROTOCOL_UDP, action: ACTION_ALLOW}]}
workloads:
  - {name: team/a, cgroup: socklb/a, policy_set: ps-a}
  - {name: team/b, cgroup: /socklb/a/b/, bypass_socket_lb: true}
redirects:
  - {name: dns-local}
"""


def good() -> node_pb2.NodeState:
    return parse_state(GOOD)


def test_a_good_state_compiles_to_the_kernel_encoding():
    p = node_policy(good())
    s = p.sets["ps-a"]
    assert dict(s.frontends) == {FrontendKey(addr16("127.96.0.1"), 80, 6): PolicyAction.ALLOW}
    assert dict(s.prefixes) == {
        (addr16("10.0.0.0"), 104): (PortRule(0, 65535, 0, PolicyAction.ALLOW), PortRule(22, 22, 6, PolicyAction.DENY)),
        (addr16("2001:db8::"), 32): (PortRule(53, 53, 17, PolicyAction.ALLOW),)}
    assert p.specs["team/a"].cgroup == "socklb/a" and p.specs["team/a"].level == 2
    assert p.specs["team/b"].cgroup == "socklb/a/b" and p.specs["team/b"].flags == 1
    assert list(p.redirects) == ["dns-local"]
    assert p.sizes() == (1, 2)


def broken(change) -> node_pb2.NodeState:
    s = good()
    change(s)
    return s


BAD_STATES = {
    "workloads[0].name": lambda s: setattr(s.workloads[0], "name", ""),
    "workloads[2].name": lambda s: s.workloads.add(name="team/a", cgroup="socklb/other"),
    "workloads[0].cgroup": lambda s: setattr(s.workloads[0], "cgroup", "socklb/../a"),
    "workloads[0].policy_set": lambda s: setattr(s.workloads[0], "policy_set", "ps-x"),
    "workloads[2].cgroup": lambda s: s.workloads.add(name="team/c", cgroup="socklb/a/"),
    "policy_sets[1].name": lambda s: s.policy_sets.add(name="ps-a"),
    "policy_sets[0].frontends[0].frontend.address":
        lambda s: setattr(s.policy_sets[0].frontends[0].frontend, "address", "127.96.0.300"),
    "policy_sets[0].frontends[0].action": lambda s: setattr(s.policy_sets[0].frontends[0], "action", 0),
    "policy_sets[0].frontends[1].frontend": lambda s: s.policy_sets[0].frontends.add().CopyFrom(
        s.policy_sets[0].frontends[0]),
    "policy_sets[0].prefixes[0].prefix": lambda s: setattr(s.policy_sets[0].prefixes[0], "prefix", "10.1.0.0/8"),
    "policy_sets[0].prefixes[2].prefix": lambda s: s.policy_sets[0].prefixes.add(prefix="::ffff:10.0.0.0/104"),
    "policy_sets[0].prefixes[0].rules": lambda s: s.policy_sets[0].prefixes[0].rules.extend(
        [node_pb2.PortRule(port=1, end_port=1, action=1)] * (limits.MAX_PORT_RULES - 1)),
    "policy_sets[0].prefixes[0].rules[1].end_port": lambda s: setattr(s.policy_sets[0].prefixes[0].rules[1],
                                                                      "end_port", 21),
    "policy_sets[0].prefixes[0].rules[0].end_port": lambda s: setattr(s.policy_sets[0].prefixes[0].rules[0],
                                                                      "end_port", 65536),
    "policy_sets[0].prefixes[0].rules[0].protocol": lambda s: setattr(s.policy_sets[0].prefixes[0].rules[0],
                                                                      "protocol", 9),
    "policy_sets[0].prefixes[0].rules[0].action": lambda s: setattr(s.policy_sets[0].prefixes[0].rules[0],
                                                                    "action", 7),
    "redirects[1].name": lambda s: s.redirects.add(name="dns-local"),
}


@pytest.mark.parametrize("field", sorted(BAD_STATES))
def test_a_bad_state_is_refused_naming_the_field(field):
    with pytest.raises(InvalidState) as e:
        node_policy(broken(BAD_STATES[field]))
    assert e.value.field == field, e.value


@pytest.mark.parametrize("text", ["", "/", "a//b", "./a", "a/..", "a\nb", "/".join("x" * 17)])
def test_cgroup_paths(text):
    with pytest.raises(InvalidState):
        cgroup_path(text, "cgroup")


def test_cgroup_paths_are_normalised():
    assert cgroup_path("/socklb/pod-a/", "f") == "socklb/pod-a"
    assert cgroup_path("/".join("x" * 16), "f").count("/") == 15


@pytest.mark.parametrize("limit, grow, field", [
    ("MAX_WORKLOADS_PER_NODE", lambda s: s.workloads.add(name="c", cgroup="socklb/c"), "workloads"),
    ("MAX_POLICY_SETS_PER_NODE", lambda s: s.policy_sets.add(name="ps-b"), "policy_sets"),
    ("MAX_FRONTEND_VERDICTS_PER_NODE", lambda s: s.policy_sets.add(name="ps-b").frontends.add().CopyFrom(
        s.policy_sets[0].frontends[0]), "policy_sets"),
    ("MAX_PREFIXES_PER_NODE", lambda s: s.policy_sets[0].prefixes.add(prefix="10.0.0.0/16"), "policy_sets"),
])
def test_node_limits(monkeypatch, limit, grow, field):
    s = good()
    monkeypatch.setattr(limits, limit, {"MAX_WORKLOADS_PER_NODE": 2, "MAX_POLICY_SETS_PER_NODE": 1,
                                        "MAX_FRONTEND_VERDICTS_PER_NODE": 1, "MAX_PREFIXES_PER_NODE": 2}[limit])
    node_policy(s)
    grow(s)
    with pytest.raises(InvalidState) as e:
        node_policy(s)
    assert e.value.field == field and "a node takes at most" in e.value.message


BAD_DELTAS = {
    "workload_upserts[0].policy_set": node_pb2.NodeStateDelta(
        workload_upserts=[node_pb2.WorkloadState(name="c", cgroup="socklb/c", policy_set="ps-x")]),
    "workload_upserts[1].name": node_pb2.NodeStateDelta(
        workload_upserts=[node_pb2.WorkloadState(name="c", cgroup="socklb/c")] * 2),
    "workload_upserts[0].cgroup": node_pb2.NodeStateDelta(
        workload_upserts=[node_pb2.WorkloadState(name="c", cgroup="socklb/a")]),
    "workload_removals[0]": node_pb2.NodeStateDelta(
        workload_upserts=[node_pb2.WorkloadState(name="c", cgroup="socklb/c")], workload_removals=["c"]),
    "policy_set_removals[0]": node_pb2.NodeStateDelta(policy_set_removals=["ps-a"]),
    "policy_set_upserts[0].prefixes[0].prefix": node_pb2.NodeStateDelta(
        policy_set_upserts=[node_pb2.PolicySetState(name="ps-b", prefixes=[node_pb2.PrefixRules(prefix="x")])]),
}


@pytest.mark.parametrize("field", sorted(BAD_DELTAS))
def test_a_bad_delta_is_refused_naming_the_field(field):
    current = node_policy(good())
    with pytest.raises(InvalidState) as e:
        apply_policy_delta(current, BAD_DELTAS[field])
    assert e.value.field == field, e.value
    assert set(current.workloads) == {"team/a", "team/b"}  # untouched


def test_a_delta_replaces_by_name():
    current = node_policy(good())
    delta = node_pb2.NodeStateDelta(
        workload_upserts=[node_pb2.WorkloadState(name="team/a", cgroup="socklb/a2", policy_set="ps-b")],
        workload_removals=["team/b"], policy_set_upserts=[node_pb2.PolicySetState(name="ps-b")],
        policy_set_removals=["ps-a"], redirect_removals=["dns-local"])
    after = apply_policy_delta(current, delta)
    assert set(after.workloads) == {"team/a"} and after.specs["team/a"].cgroup == "socklb/a2"
    assert set(after.sets) == {"ps-b"} and not after.redirects
    assert set(current.sets) == {"ps-a"}
