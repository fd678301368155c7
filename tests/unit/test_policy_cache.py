"""The policy part of the snapshot cache: a change recomputes and sends only
what it affects, and whatever the sequence of changes, each node's state kept
incrementally (and the state a node builds from the updates) equals the
state computed from scratch."""
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklb.controlplane import compute, policy_compute
from socklb.controlplane.cache import SnapshotCache
from socklb.controlplane.policy_cache import NodePolicy, PolicyChanges
from socklb.v1 import types_pb2

from test_policy_compute import ALLOW, DENY, TCP, UDP, policy, redirect, rule, service, workload

NODES = ["n1", "n2", "n3"]


def cache_with(services=(), workloads=(), policies=(), redirects=()):
    cache = SnapshotCache()
    cache.load(services, 10, workloads, policies, redirects)
    return cache


def full(cache, node):
    """The node's policy state computed from scratch, by name."""
    st = compute.node_state(cache.services.values(), node, 0, cache.policy.workloads.values(),
                            cache.policy.policies.values(), cache.policy.redirects.values())
    return NodePolicy({w.name: w for w in st.workloads}, {s.name: s for s in st.policy_sets},
                      {r.name: r for r in st.redirects})


def changed(update, node):
    """A node's changes as names: (workloads, sets, redirects), upserted and removed."""
    c = update.policy.get(node, PolicyChanges())
    return ([w.name for w in c.workload_upserts], c.workload_removals,
            [s.name for s in c.policy_set_upserts], c.policy_set_removals,
            [r.name for r in c.redirect_upserts], c.redirect_removals)


NOTHING = ([], [], [], [], [], [])
WEB = {"app": "web"}
P1 = policy("p1", WEB, rule(ALLOW, cidrs=["10.0.0.0/8"]))
S1 = policy_compute.set_name(["p1"])


def test_a_rule_edit_upserts_the_set_only_on_the_nodes_using_it():
    ws = [workload("a", "n1", WEB), workload("b", "n1", WEB), workload("c", "n2", WEB), workload("d", "n3")]
    cache = cache_with(workloads=ws, policies=[P1])
    upd = cache.apply([], 11, [], policies=[("p1", policy("p1", WEB, rule(DENY, cidrs=["10.0.0.0/8"])))])
    assert set(upd.policy) == {"n1", "n2"}
    assert changed(upd, "n1") == changed(upd, "n2") == ([], [], [S1], [], [], [])
    # One object for the set, on every node.
    (n1_set,) = upd.policy["n1"].policy_set_upserts
    assert n1_set is upd.policy["n2"].policy_set_upserts[0] is cache.policy_for("n1").policy_sets[S1]
    # Writing the same content again (a new resource_version) changes nothing.
    same = policy("p1", WEB, rule(DENY, cidrs=["10.0.0.0/8"]))
    same.resource_version = 99
    assert cache.apply([], 12, [], policies=[("p1", same)]).empty()


def test_a_set_leaves_a_node_with_its_last_user_there():
    cache = cache_with(workloads=[workload("a", "n1", WEB), workload("b", "n1", WEB), workload("c", "n2", WEB)],
                       policies=[P1])
    upd = cache.apply([], 11, [], workloads=[("a", None)])
    assert changed(upd, "n1") == ([], ["a"], [], [], [], []) and "n2" not in upd.policy
    upd = cache.apply([], 12, [], workloads=[("b", workload("b", "n1", {"app": "db"}))])
    assert changed(upd, "n1") == (["b"], [], [], [S1], [], [])
    assert S1 in cache.policy.sets()  # still used by c on n2
    upd = cache.apply([], 13, [], workloads=[("c", None)])
    assert changed(upd, "n2") == ([], ["c"], [], [S1], [], []) and cache.policy.sets() == {}
    assert not cache.node_specific("n2")


def test_a_selector_change_selects_again():
    cache = cache_with(workloads=[workload("a", "n1", WEB), workload("b", "n2", {"app": "db"})], policies=[P1])
    upd = cache.apply([], 11, [], policies=[("p1", policy("p1", {"app": "db"}, rule(ALLOW, cidrs=["10.0.0.0/8"])))])
    assert changed(upd, "n1") == (["a"], [], [], [S1], [], [])
    assert changed(upd, "n2") == (["b"], [], [S1], [], [], [])
    assert cache.policy_for("n1").workloads["a"].policy_set == ""
    upd = cache.apply([], 12, [], policies=[("p1", None)])
    assert changed(upd, "n2") == (["b"], [], [], [S1], [], []) and set(upd.policy) == {"n2"}


def test_a_service_frontend_change_recomputes_the_sets_and_redirects_naming_it():
    svc = service("web", ("127.96.0.1", 80, TCP))
    p = policy("p", {}, rule(ALLOW, services=["web"]))
    r = redirect("r", {"app": "cache"}, "web")
    ws = [workload("a", "n1"), workload("cache", "n2", {"app": "cache"}, ["10.0.0.5"])]
    cache = cache_with([svc], ws, [p], [r])
    name = policy_compute.set_name(["p"])
    # Backends only: the node's policy entries do not change.
    with_backend = service("web", ("127.96.0.1", 80, TCP))
    with_backend.backends.add(address="10.0.0.9", port=80)
    assert not cache.apply([("web", with_backend)], 11, NODES).policy
    moved = service("web", ("127.96.0.1", 80, TCP), ("127.96.0.1", 443, TCP))
    upd = cache.apply([("web", moved)], 12, NODES)
    assert changed(upd, "n1") == ([], [], [name], [], [], [])
    assert changed(upd, "n2") == ([], [], [name], [], ["r"], [])
    assert len(cache.policy_for("n1").policy_sets[name].frontends) == 2
    upd = cache.apply([("web", None)], 13, NODES)
    assert changed(upd, "n2") == ([], [], [name], [], [], ["r"])
    assert not cache.policy_for("n1").policy_sets[name].frontends


def test_a_redirect_follows_its_local_workloads():
    dns = service("kube-dns", ("10.96.0.10", 53, UDP))
    cache = cache_with([dns], [workload("client", "n1"), workload("client2", "n2")], redirects=[redirect()])
    assert not cache.policy_for("n1").redirects
    upd = cache.apply([], 11, [], workloads=[("cache", workload("cache", "n1", {"app": "node-dns"}, ["10.0.0.5"]))])
    assert changed(upd, "n1") == (["cache"], [], [], [], ["dns"], []) and set(upd.policy) == {"n1"}
    assert list(cache.policy_for("n1").redirects["dns"].exempt) == ["cache"]
    upd = cache.apply([], 12, [], workloads=[("cache", workload("cache", "n2", {"app": "node-dns"}, ["10.0.0.6"]))])
    assert changed(upd, "n1") == ([], ["cache"], [], [], [], ["dns"])
    assert changed(upd, "n2") == (["cache"], [], [], [], ["dns"], [])
    upd = cache.apply([], 13, [], redirects=[("dns", None)])
    assert changed(upd, "n2") == ([], [], [], [], [], ["dns"]) and set(upd.policy) == {"n2"}


def test_the_cache_revision_never_goes_back():
    cache = cache_with()
    cache.apply([], 20, [], workloads=[("a", workload("a"))])
    upd = cache.apply([], 15, [], policies=[("p1", P1)])
    assert cache.revision == upd.revision == 20


# --- the invariant ------------------------------------------------------------------------

COUNTS = {"workloads": 6, "policies": 4, "redirects": 2, "services": 3}  # names of each kind: w0..w5, ...
names = lambda prefix, n: st.sampled_from([f"{prefix}{i}" for i in range(n)])  # noqa: E731
# Few labels, short selectors: most selectors match some workload.
label_maps = st.dictionaries(st.sampled_from(["app", "env"]), st.sampled_from(["web", "db"]), max_size=2)
selectors = st.dictionaries(st.sampled_from(["app", "env"]), st.sampled_from(["web", "db"]), max_size=1)
ports = st.tuples(st.sampled_from([0, 53, 80, 443, 8000]), st.sampled_from([0, 8100]),
                  st.sampled_from([0, TCP, UDP]))
CIDRS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.3", "::/0", "fd00::/8", "fd00::1"]
FRONTENDS = [("127.96.0.1", 80, TCP), ("127.96.0.1", 53, UDP), ("127.96.0.2", 443, 0), ("fd00::10", 80, TCP)]

workloads = st.builds(lambda name, node, labels, addrs, bypass: workload(name, node, labels, addrs,
                                                                          bypass_socket_lb=bypass),
                      names("w", COUNTS["workloads"]), st.sampled_from(NODES), label_maps,
                      st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1"]), min_size=1, max_size=2,
                               unique=True),
                      st.booleans())
FQDNS = ["api.example.test", "*.example.test", "**.example.test", "*", "a.b.example.test"]
rules = st.builds(lambda action, svcs, cidrs, ps, fqdns: rule(action, svcs, cidrs, ps, fqdns),
                  st.sampled_from([ALLOW, DENY]), st.lists(names("s", COUNTS["services"]), max_size=2, unique=True),
                  st.lists(st.sampled_from(CIDRS), max_size=3, unique=True), st.lists(ports, max_size=2),
                  st.lists(st.sampled_from(FQDNS), max_size=2, unique=True))
policies = st.builds(lambda name, sel, rs: policy(name, sel, *rs), names("p", COUNTS["policies"]), selectors,
                     st.lists(rules, max_size=3))
redirects = st.builds(lambda name, sel, target, port: redirect(name, sel, target, None if target else
                                                               types_pb2.Frontend(address="169.254.0.1", port=53),
                                                               port),
                      names("r", COUNTS["redirects"]), selectors, st.sampled_from(["s0", "s1", "s2", ""]), st.sampled_from([0, 5353]))
# Backends matter to the sets when a frontend is on port 53 (their DNS servers).
services = st.builds(lambda name, fes, bes: service(name, *fes, backends=bes), names("s", COUNTS["services"]),
                     st.lists(st.sampled_from(FRONTENDS), min_size=1, max_size=2, unique=True),
                     st.lists(st.sampled_from([("10.9.0.1", 53), ("10.9.0.2", 5353), ("fd00::53", 0)]), max_size=2,
                              unique=True))


def change(kind, things):
    """(kind, name, message or None): a write or a delete of a name of that kind."""
    return st.one_of(things.map(lambda m: (kind, m.name, m)),
                     names(kind[0], COUNTS[kind]).map(lambda n: (kind, n, None)))


changes = st.one_of(change("workloads", workloads), change("workloads", workloads), change("policies", policies),
                    change("redirects", redirects), change("services", services), change("services", services))
batches = st.lists(st.lists(changes, min_size=1, max_size=4), min_size=1, max_size=16)
# Twice the API fuzz cases: a sequence finds a bug only when its steps line up.
EXAMPLES = 2 * int(os.environ.get("SOCKLB_FUZZ_EXAMPLES", "250"))


def replay(mirror: dict[str, NodePolicy], update) -> None:
    """What a node does with its changes: entries replaced whole by name."""
    for node, c in update.policy.items():
        m = mirror.setdefault(node, NodePolicy())
        for table, upserts, removals in ((m.workloads, c.workload_upserts, c.workload_removals),
                                         (m.policy_sets, c.policy_set_upserts, c.policy_set_removals),
                                         (m.redirects, c.redirect_upserts, c.redirect_removals)):
            assert not {e.name for e in upserts} & set(removals)
            for name in removals:
                assert name in table, f"{node}: removal of {name!r}, which it does not have"
                del table[name]
            for e in upserts:
                table[e.name] = e


@settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_incremental_state_equals_the_full_recompute(steps):
    cache = cache_with()
    mirror: dict[str, NodePolicy] = {}
    for revision, batch in enumerate(steps, start=11):
        by_kind = {"services": [], "workloads": [], "policies": [], "redirects": []}
        for kind, name, msg in batch:
            by_kind[kind].append((name, msg))
        update = cache.apply(by_kind.pop("services"), revision, NODES, **by_kind)
        replay(mirror, update)
        sets = cache.policy.sets()
        for node in NODES:
            now = cache.policy_for(node)
            assert now == full(cache, node), node
            assert mirror.get(node, NodePolicy()) == now, node
            for name, entry in now.policy_sets.items():
                assert entry is sets[name]  # one object per set, shared by its nodes
        # Only the sets some workload uses are kept.
        used = {w.policy_set for n in NODES for w in cache.policy_for(n).workloads.values()} - {""}
        assert set(sets) == used
    # Loading what the store holds gives the same state.
    loaded = cache_with(cache.services.values(), cache.policy.workloads.values(), cache.policy.policies.values(),
                        cache.policy.redirects.values())
    for node in NODES:
        assert loaded.policy_for(node) == cache.policy_for(node)
        assert loaded.state_for(node).workloads == cache.state_for(node).workloads


def test_the_invariant_holds_on_a_hand_written_sequence():
    """The property test's first case, written out: readable when it fails."""
    steps = [
        [("workloads", "w0", workload("w0", "n1", WEB, ["10.0.0.1"])), ("policies", "p1", P1)],
        [("redirects", "r0", redirect("r0", WEB, "s0", None, 5353)), ("services", "s0", service("s0", FRONTENDS[0]))],
        [("workloads", "w0", workload("w0", "n2", WEB, ["10.0.0.1"]))],
        [("policies", "p1", None), ("workloads", "w1", workload("w1", "n2", {}, []))],
    ]
    test_incremental_state_equals_the_full_recompute.hypothesis.inner_test(steps)
