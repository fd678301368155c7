"""The policy plan (dataplane/policy_plan.py, with the entries and ids of
policy_desired.desired_entries): executed op by op on the in-memory maps,
every workload is decided at every moment by its old policy or by its new
one; ids are reused but never two live sets share one; counters restart for
a new workload; a restart rewrites nothing."""
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from socklb.dataplane.layout import PolicyAction
from socklb.dataplane.policy_desired import Ids, desired_entries, node_policy, prefix_is_v4
from socklb.dataplane.policy_plan import (DeletePrefix, PolicyEntries, PutPrefix, PutWorkload, ResetDenies,
                                          make_policy_plan)
from socklb.dataplane.workloads import Cgroup
from socklb.dataplane.writer import MemoryMapWriter
from socklb.lb.addresses import V4MAPPED, addr16
from socklb.lb.frontends import FrontendKey
from socklb.v1 import node_pb2, policy_pb2, types_pb2

PROP = settings(max_examples=150, deadline=None, derandomize=True)

PREFIXES = ["::/0", "0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/16", "10.0.0.0/24", "10.0.0.0/25", "10.0.0.128/25",
            "10.0.0.0/28", "10.0.0.4/30", "10.0.0.5/32", "10.0.0.200/32"]
RULES = [(0, 65535, 0, "ALLOW"), (22, 22, 6, "DENY"), (80, 80, 6, "ALLOW"), (53, 53, 17, "ALLOW"),
         (1000, 2000, 0, "DENY"), (1500, 1500, 0, "ALLOW")]
VIPS = {1: ("127.96.0.1", 80, 6), 2: ("127.96.0.2", 80, 6), 3: ("127.96.0.1", 53, 17)}  # frontend id -> key
DESTS = [(a, p, proto) for a in ("10.0.0.5", "10.0.0.4", "10.0.0.130", "10.0.0.200", "10.1.0.1", "11.0.0.1", "fd00::1")
         for p in (22, 80, 53, 1500) for proto in (6, 17)] + [("vip", fid, 0) for fid in VIPS]
CGROUPS = {"w1": 101, "w2": 102, "w3": 103}
SETS = ("s1", "s2", "s3")


def proto_pb(p: int) -> int:
    return {0: types_pb2.PROTOCOL_UNSPECIFIED, 6: types_pb2.PROTOCOL_TCP, 17: types_pb2.PROTOCOL_UDP}[p]


def frontend_pb(fid: int) -> types_pb2.Frontend:
    addr, port, proto = VIPS[fid]
    return types_pb2.Frontend(address=addr, port=port, protocol=proto_pb(proto))


def frontend_id(key: FrontendKey) -> int | None:
    return next((fid for fid, (a, p, pr) in VIPS.items() if FrontendKey(addr16(a), p, pr) == key), None)


SET = st.fixed_dictionaries({
    "frontends": st.dictionaries(st.sampled_from(sorted(VIPS)), st.sampled_from(["ALLOW", "DENY"]), max_size=3),
    "prefixes": st.dictionaries(st.sampled_from(PREFIXES), st.lists(st.sampled_from(RULES), max_size=4, unique=True),
                                max_size=6),
})
POLICY = st.fixed_dictionaries({
    "sets": st.fixed_dictionaries({name: SET for name in SETS}),
    "workloads": st.dictionaries(st.sampled_from(sorted(CGROUPS)), st.tuples(st.sampled_from(("",) + SETS),
                                                                             st.booleans()), max_size=3),
})


def state(policy: dict) -> node_pb2.NodeState:
    s = node_pb2.NodeState(version=1)
    for name, ps in policy["sets"].items():
        s.policy_sets.append(node_pb2.PolicySetState(
            name=name,
            frontends=[node_pb2.FrontendVerdict(frontend=frontend_pb(f), action=policy_pb2.Action.Value(f"ACTION_{a}"))
                       for f, a in ps["frontends"].items()],
            prefixes=[node_pb2.PrefixRules(prefix=p, rules=[
                node_pb2.PortRule(port=lo, end_port=hi, protocol=proto_pb(pr),
                                  action=policy_pb2.Action.Value(f"ACTION_{a}"))
                for lo, hi, pr, a in rules]) for p, rules in ps["prefixes"].items()]))
    for name, (ps, bypass) in policy["workloads"].items():
        s.workloads.append(node_pb2.WorkloadState(name=name, cgroup=f"socklb/{name}", policy_set=ps,
                                                  bypass_socket_lb=bypass))
    return s


def reference(policy: dict, workload: str, dest) -> bool:
    """The issue's semantics, straight from the policy (not from the maps)."""
    w = policy["workloads"].get(workload)
    if w is None or not w[0]:
        return True
    ps = policy["sets"][w[0]]
    addr, port, proto = dest
    if addr == "vip":
        return ps["frontends"].get(port) == "ALLOW"
    ip = ipaddress.ip_address(addr)
    holding = [p for p in ps["prefixes"] if ip in ipaddress.ip_network(p)]
    if not holding:
        return False
    rules = ps["prefixes"][max(holding, key=lambda p: ipaddress.ip_network(p).prefixlen)]
    hits = [a for lo, hi, pr, a in rules if lo <= port <= hi and pr in (0, proto)]
    return "DENY" not in hits and "ALLOW" in hits


def kernel(maps: MemoryMapWriter, cgroup: int, dest) -> bool:
    """What the hooks decide from the maps as they are (exact cgroup match)."""
    e = maps.workloads.get(cgroup)
    if e is None or not e.policy_set:
        return True
    addr, port, proto = dest
    if addr == "vip":
        return maps.verdicts.get((e.policy_set, port)) == PolicyAction.ALLOW
    raw = int.from_bytes(addr16(addr), "big")
    v4 = addr16(addr)[:12] == V4MAPPED  # IPv4 destinations are looked up among IPv4 prefixes only
    best = None
    for (sid, (net, length)), rules in maps.prefixes.items():
        mask = ((1 << length) - 1) << (128 - length) if length else 0
        if (sid == e.policy_set and prefix_is_v4((net, length)) == v4 and raw & mask == int.from_bytes(net, "big")
                and (best is None or length > best[0])):
            best = (length, rules)
    if best is None:
        return False
    hits = [r.action for r in best[1] if r.port <= port <= r.end_port and r.proto in (0, proto)]
    return PolicyAction.DENY not in hits and PolicyAction.ALLOW in hits


class Node:
    """The policy half of an agent on in-memory maps."""

    def __init__(self, maps: MemoryMapWriter | None = None):
        self.maps = maps or MemoryMapWriter()
        self.ids = Ids()
        self.cgroups = {f"socklb/{n}": Cgroup(cg) for n, cg in CGROUPS.items()}

    def plan(self, policy: dict):
        given = node_policy(state(policy))
        resolved = {n: self.cgroups.get(s.cgroup) for n, s in given.specs.items()}
        current = self.maps.read_policy()
        ids, desired, fresh = desired_entries(given, resolved, frontend_id, self.ids, current)
        return ids, make_policy_plan(current, desired, fresh)

    def apply(self, policy: dict, each=lambda: None):
        ids, plan = self.plan(policy)
        each()
        for op in plan.ops:
            self.maps.execute_policy([op])
            each()
        self.ids = ids
        return plan


@PROP
@given(POLICY, POLICY)
def test_every_moment_decides_by_the_old_or_the_new_policy(old, new):
    node = Node()
    node.apply(old)
    for w, cg in CGROUPS.items():
        for d in DESTS:
            assert kernel(node.maps, cg, d) == reference(old, w, d), (w, d)

    def check():
        for w, cg in CGROUPS.items():
            for d in DESTS:
                assert kernel(node.maps, cg, d) in (reference(old, w, d), reference(new, w, d)), (w, d)

    node.apply(new, check)
    for w, cg in CGROUPS.items():
        for d in DESTS:
            assert kernel(node.maps, cg, d) == reference(new, w, d), (w, d)
    # Nothing stale is left: the maps hold exactly the entries of `new`.
    _, again = node.plan(new)
    assert again.ops == []


@PROP
@given(st.lists(POLICY, min_size=2, max_size=5))
def test_set_ids_are_reused_but_never_shared_by_two_live_sets(policies):
    node = Node()
    for policy in policies:
        held, live = dict(node.ids.sets), node.maps.read_policy().set_ids()
        ids, _ = node.plan(policy)
        assert len(set(ids.sets.values())) == len(ids.sets) and min(ids.sets.values(), default=1) >= 1
        for name, sid in ids.sets.items():
            if sid in live:  # an id the maps use goes only to the set that has it
                assert held.get(name) == sid, (name, sid, held)
        node.apply(policy)
        # Freed ids come back: never more than the sets of two updates.
        assert max(node.ids.sets.values(), default=0) <= 2 * len(SETS)


def test_a_restart_rewrites_nothing():
    policy = {"sets": {"s1": {"frontends": {1: "ALLOW"}, "prefixes": {"10.0.0.0/8": [RULES[0], RULES[1]]}},
                       "s2": {"frontends": {}, "prefixes": {}}, "s3": {"frontends": {}, "prefixes": {}}},
              "workloads": {"w1": ("s1", False), "w2": ("s1", True), "w3": ("", True)}}
    node = Node()
    node.apply(policy)
    restarted = Node(node.maps)  # the same maps, no ids: an agent after a restart
    ids, plan = restarted.plan(policy)
    assert plan.ops == []
    assert dict(ids.workloads) == dict(node.ids.workloads) and dict(ids.sets) == dict(node.ids.sets)


def test_a_new_workload_gets_a_free_id_with_its_counters_reset():
    sets = {n: {"frontends": {}, "prefixes": {}} for n in SETS}
    node = Node()
    node.apply({"sets": sets, "workloads": {"w1": ("s1", False)}})
    first = dict(node.ids.workloads)
    # w1 leaves and w2 comes in one update: w2 must not take w1's id while
    # w1's entry (and its counters) may still be counting.
    plan = node.apply({"sets": sets, "workloads": {"w2": ("s1", False)}})
    assert node.ids.workloads["w2"] != first["w1"]
    resets = [op.id for op in plan.ops if isinstance(op, ResetDenies)]
    assert resets == [node.ids.workloads["w2"]]
    put = next(i for i, op in enumerate(plan.ops) if isinstance(op, PutWorkload))
    assert plan.ops.index(ResetDenies(resets[0])) < put
    # Later the freed id is given again.
    node.apply({"sets": sets, "workloads": {"w2": ("s1", False), "w3": ("s1", False)}})
    assert node.ids.workloads["w3"] == first["w1"]


def test_prefixes_are_written_longest_first_and_deleted_shortest_first():
    s = lambda prefixes: {"sets": {"s1": {"frontends": {}, "prefixes": prefixes},  # noqa: E731
                                   "s2": {"frontends": {}, "prefixes": {}}, "s3": {"frontends": {}, "prefixes": {}}},
                          "workloads": {"w1": ("s1", False)}}
    node = Node()
    node.apply(s({p: [RULES[0]] for p in ("10.0.0.0/8", "10.0.0.0/24", "10.0.0.5/32")}))
    plan = node.apply(s({p: [RULES[2]] for p in ("0.0.0.0/0", "10.0.0.0/16", "10.0.0.4/30")}))
    puts = [op.prefix[1] for op in plan.ops if isinstance(op, PutPrefix)]
    dels = [op.prefix[1] for op in plan.ops if isinstance(op, DeletePrefix)]
    assert puts == sorted(puts, reverse=True) and dels == sorted(dels)
    assert plan.ops.index(next(op for op in plan.ops if isinstance(op, DeletePrefix))) > \
        plan.ops.index(next(op for op in plan.ops if isinstance(op, PutPrefix)))


def test_a_set_left_while_edited_is_written_anew():
    """w1 moves from s1 to s2 while s1 is edited for w2: s1's new content goes
    to a fresh id, so w1 never meets s1 half edited."""
    sets = {"s1": {"frontends": {1: "ALLOW"}, "prefixes": {}}, "s2": {"frontends": {2: "ALLOW"}, "prefixes": {}},
            "s3": {"frontends": {}, "prefixes": {}}}
    node = Node()
    node.apply({"sets": sets, "workloads": {"w1": ("s1", False), "w2": ("s1", False)}})
    old_s1 = node.ids.sets["s1"]
    edited = {**sets, "s1": {"frontends": {3: "ALLOW"}, "prefixes": {}}}
    node.apply({"sets": edited, "workloads": {"w1": ("s2", False), "w2": ("s1", False)}})
    assert node.ids.sets["s1"] != old_s1
    assert old_s1 not in node.maps.read_policy().set_ids()
    # Edited with no one leaving: in place.
    s1 = node.ids.sets["s1"]
    node.apply({"sets": {**edited, "s1": {"frontends": {1: "DENY"}, "prefixes": {}}},
                "workloads": {"w1": ("s2", False), "w2": ("s1", False)}})
    assert node.ids.sets["s1"] == s1


def test_no_restricted_or_bypassed_workload_costs_the_hooks_nothing():
    sets = {n: {"frontends": {}, "prefixes": {}} for n in SETS}
    node = Node()
    node.apply({"sets": sets, "workloads": {"w1": ("", False), "w2": ("", False)}})
    assert node.maps.policy_cfg.cgroups == 0 and len(node.maps.workloads) == 2
    node.apply({"sets": sets, "workloads": {"w1": ("", True)}})
    assert node.maps.policy_cfg.cgroups == 1
    assert make_policy_plan(PolicyEntries(), PolicyEntries()).ops == []
