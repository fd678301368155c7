"""The agent takes workloads, policy sets and redirects with the services of
the same update, all or nothing: kept in its state (GetState), programmed
through its map writer (rolled back with the services on a failed write),
picked up when a cgroup appears, reported per workload, shown by the dump
views."""
import pytest

from socklb.dataplane.agent import Agent, StateUnknown
from socklb.dataplane.policy_dump import policy_view, workloads_view
from socklb.dataplane.stats import MemoryStatistics
from socklb.dataplane.statefile import parse_state
from socklb.dataplane.termjobs import MemoryTerminations
from socklb.dataplane.workloads import Cgroup, MemoryCgroups
from socklb.dataplane.writer import MemoryMapWriter
from socklb.lb.errors import InvalidState
from socklb.v1 import node_pb2

STATE = """
version: 1
services:
  - name: web
    frontends: [{address: 127.96.0.1, port: 80}]
    backends: [{address: 10.0.0.2, port: 8080}]
policy_sets:
  - name: ps-a
    frontends: [{service: web, frontend: {address: 127.96.0.1, port: 80}, action: ACTION_ALLOW}]
    prefixes: [{prefix: 10.0.0.0/8, rules: [{port: 0, end_port: 65535, action: ACTION_ALLOW}]}]
workloads:
  - {name: team/a, cgroup: socklb/a, policy_set: ps-a}
  - {name: team/b, cgroup: socklb/b, bypass_socket_lb: true}
redirects:
  - {name: dns-local}
"""
CGROUPS = {"socklb/a": Cgroup(11), "socklb/b": Cgroup(12)}


def node(cgroups=None, writer=None, statistics=None):
    return Agent(writer or MemoryMapWriter(), "n", statistics=statistics,
                 cgroups=MemoryCgroups(CGROUPS if cgroups is None else cgroups))


def snapshot(agent):
    w = agent.writer
    return (agent.state(), dict(w.services), dict(w.backends), dict(w.workloads), dict(w.verdicts),
            dict(w.prefixes), w.policy_cfg)


def test_applied_state_keeps_the_policy_and_programs_it():
    a = node()
    a.apply(parse_state(STATE))
    st = a.state()
    assert [w.name for w in st.workloads] == ["team/a", "team/b"]
    assert [p.name for p in st.policy_sets] == ["ps-a"] and [r.name for r in st.redirects] == ["dns-local"]
    assert a.applied == st
    w = a.writer
    entry_a, entry_b = w.workloads[11], w.workloads[12]
    assert entry_a.policy_set and not entry_b.policy_set and entry_b.flags == 1
    fe_id = a.catalog.current().frontends()[0].id
    assert w.verdicts == {(entry_a.policy_set, fe_id): 1}
    assert w.policy_cfg.cgroups == 2 and (w.policy_cfg.min_level, w.policy_cfg.max_level) == (2, 2)
    names = a.catalog.workloads()
    assert names["team/a"].set_id == entry_a.policy_set and names["team/a"].cgroup_id == 11


def test_a_bad_policy_refuses_the_whole_state_and_the_node_goes_on():
    a = node()
    a.apply(parse_state(STATE))
    before = snapshot(a)
    bad = parse_state(STATE)
    bad.version = 2
    bad.services[0].backends[0].port = 9090
    bad.workloads[0].policy_set = "ps-x"
    with pytest.raises(InvalidState) as e:
        a.apply(bad, isolate=True)  # isolation is for services; a bad policy refuses everything
    assert e.value.field == "workloads[0].policy_set"
    assert snapshot(a) == before and a.applied_version == 1
    bad.workloads[0].policy_set = ""
    a.apply(bad)
    assert a.applied_version == 2 and not a.writer.workloads[11].policy_set


def test_deltas_change_the_policy_by_name():
    a = node()
    a.apply(parse_state(STATE))
    a.apply_delta(node_pb2.NodeStateDelta(
        from_version=1, version=2, workload_removals=["team/a"], policy_set_removals=["ps-a"],
        workload_upserts=[node_pb2.WorkloadState(name="team/b", cgroup="socklb/b")]))
    assert [w.name for w in a.state().workloads] == ["team/b"] and not a.state().policy_sets
    assert set(a.writer.workloads) == {12} and not a.writer.verdicts and not a.writer.prefixes
    assert a.writer.policy_cfg.cgroups == 0  # nothing restricted or bypassed: the hooks skip it all
    with pytest.raises(InvalidState) as e:
        a.apply_delta(node_pb2.NodeStateDelta(from_version=2, version=3, workload_upserts=[
            node_pb2.WorkloadState(name="c", cgroup="socklb/c", policy_set="ps-a")]))
    assert e.value.field == "workload_upserts[0].policy_set" and a.applied_version == 2


def test_a_delta_before_a_full_state_after_a_restart_is_refused():
    w = MemoryMapWriter()
    node(writer=w).apply(parse_state(STATE))
    restarted = node(writer=w)
    with pytest.raises(StateUnknown):
        restarted.apply_delta(node_pb2.NodeStateDelta(from_version=1, version=2))
    assert restarted.apply(parse_state(STATE)).policy_written == 0


class Failing(MemoryMapWriter):
    """Refuses the n-th policy write."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def put_prefix(self, *args):
        self.n -= 1
        if self.n == 0:
            raise OSError(28, "no space left in policy_prefixes")
        super().put_prefix(*args)


def test_a_failed_write_restores_services_and_policy():
    w = Failing(3)
    a = node(writer=w)
    a.apply(parse_state(STATE))
    before = snapshot(a)
    change = parse_state(STATE)
    change.version = 2
    change.services[0].backends.add(address="10.0.0.3", port=8080)
    change.policy_sets[0].prefixes.add(prefix="11.0.0.0/8").rules.add(port=80, end_port=80, action=1)
    change.policy_sets[0].prefixes.add(prefix="12.0.0.0/8").rules.add(port=80, end_port=80, action=1)
    with pytest.raises(OSError):
        a.apply(change)
    assert snapshot(a) == before and a.applied_version == 1
    w.n = 0
    a.apply(change)
    assert a.applied_version == 2 and len(w.prefixes) == 3


def test_a_cgroup_that_appears_later_is_picked_up_by_the_recheck():
    cgroups = {}
    stats = MemoryStatistics()
    a = node(cgroups, statistics=stats)
    a.apply(parse_state(STATE))
    assert not a.writer.workloads
    reports = {r.name: r for r in a.stats_parts()["workloads"]()}
    assert not reports["team/a"].cgroup_found and reports["team/a"].denied == 0
    assert a.recheck_workloads() is False

    a.policy.cgroups.cgroups["socklb/a"] = Cgroup(21, below=(22, 23))  # exact matching: cgroups below too
    assert a.recheck_workloads() is True
    assert set(a.writer.workloads) == {21, 22, 23}
    stats.denied[a.catalog.workloads()["team/a"].id] = 5
    reports = {r.name: r for r in a.stats_parts()["workloads"]()}
    assert reports["team/a"].cgroup_found and reports["team/a"].denied == 5 and not reports["team/b"].cgroup_found

    a.policy.cgroups.cgroups["socklb/a"] = Cgroup(31)  # made anew: another id
    assert a.recheck_workloads() is True and set(a.writer.workloads) == {31}
    del a.policy.cgroups.cgroups["socklb/a"]
    assert a.recheck_workloads() is True and not a.writer.workloads and not a.writer.verdicts


def test_the_deepest_registered_workload_wins_with_exact_matching():
    cgroups = {"socklb/a": Cgroup(11, below=(12, 13)), "socklb/a/b": Cgroup(12, below=(13,))}
    state = parse_state(STATE)
    state.workloads[1].cgroup = "socklb/a/b"
    a = node(cgroups)
    a.apply(state)
    ids = a.catalog.workloads()
    assert {cg: e.id for cg, e in a.writer.workloads.items()} == {11: ids["team/a"].id, 12: ids["team/b"].id,
                                                                  13: ids["team/b"].id}


def test_dump_views_name_what_is_programmed():
    a = node()
    a.apply(parse_state(STATE))
    state, entries = a.state(), a.writer.read_policy()
    ids = {"team/a": 11, "team/b": 12}
    view = workloads_view(state, entries, ids, lambda i: 7 if i == a.catalog.workloads()["team/a"].id else 0)
    rows = {r["name"]: r for r in view["workloads"]}
    assert rows["team/a"]["programmedSet"] == "ps-a" and rows["team/a"]["denied"] == 7
    assert rows["team/b"]["bypassProgrammed"] and rows["team/b"]["setId"] == 0
    assert view["unnamedEntries"] == [] and view["config"]["cgroups"] == 2
    services = node_pb2.DumpServicesResponse(frontends=[node_pb2.ProgrammedFrontend(
        id=fe.id, service=fe.service, frontend={"address": "127.96.0.1", "port": 80, "protocol": 1})
        for fe in a.catalog.current().frontends()])
    sets = policy_view(state, entries, ids, services)["policySets"]
    assert sets == [{"setId": entries.workloads[11].policy_set, "name": "ps-a", "workloads": ["team/a"],
                     "frontends": [{"frontendId": services.frontends[0].id, "service": "web",
                                    "frontend": "127.96.0.1:80/tcp", "action": "ALLOW"}],
                     "prefixes": [{"prefix": "10.0.0.0/8", "rules": ["ALLOW any 0-65535"]}]}]


def test_too_many_cgroups_below_the_workloads_are_refused():
    """With exact matching every cgroup below a workload takes an entry; more
    than half the map (the rest is room for an update) is refused whole."""
    from socklb.dataplane.layout import WORKLOAD_CGROUPS_MAX

    a = node({"socklb/a": Cgroup(1, below=tuple(range(2, WORKLOAD_CGROUPS_MAX))), "socklb/b": Cgroup(12)})
    with pytest.raises(InvalidState) as e:
        a.apply(parse_state(STATE))
    assert e.value.field == "workloads" and "a node takes at most" in e.value.message
    assert not a.writer.workloads and a.applied_version == 0


def test_workload_matching_way():
    """ancestor where the kernel allows the helper, else exact with the
    reason; exact when forced; ancestor when asked for and refused: an error."""
    from socklb.dataplane.loader import LoadError, workload_way

    assert workload_way("auto", None) == "ancestor"
    assert workload_way("auto", "connect4: Invalid argument") == "exact: connect4: Invalid argument"
    assert workload_way("exact", None) == "exact: forced"
    for asked, refused in (("ancestor", "connect4: Invalid argument"), ("sideways", None)):
        with pytest.raises(LoadError):
            workload_way(asked, refused)


# --- open sockets: the policy jobs an update gives the terminations ------------------------------

class Watching(MemoryTerminations):
    """Keeps the jobs, and what the maps held when each was made."""

    def __init__(self, writer):
        super().__init__("n")
        self.writer = writer
        self.seen = []

    def later(self, work):
        self.seen.append(dict(self.writer.workloads))
        super().later(work)


def policy_node(cgroups=None):
    w = MemoryMapWriter()
    return Agent(w, "n", terminations=Watching(w), cgroups=MemoryCgroups(CGROUPS if cgroups is None else cgroups))


def policy_jobs(a):
    return [j for j in a.terminations.jobs if j.trigger == "policy"]


def scopes(job):
    return {w.name: (w.policy_set, set(w.cgroup_ids)) for w in job.workloads}


def test_a_policy_change_gives_one_policy_job_once_written():
    a = policy_node()
    a.apply(parse_state(STATE))
    # The first state since the start: every restricted workload, under the node's own id.
    [first] = policy_jobs(a)
    assert first.id == "v1-policy-start-n" and scopes(first) == {"team/a": ("ps-a", {11})}

    change = parse_state(STATE)
    change.version = 2
    change.policy_sets[0].prefixes[0].rules[0].end_port = 443
    change.workloads[1].policy_set = "ps-a"
    a.apply(change)
    job = policy_jobs(a)[-1]
    assert len(policy_jobs(a)) == 2 and job.id == "v2-policy" and not job.dry_run
    assert scopes(job) == {"team/a": ("ps-a", {11}), "team/b": ("ps-a", {12})}
    assert a.terminations.seen[-1][12].policy_set  # made after team/b's entry was written

    a.apply_delta(node_pb2.NodeStateDelta(from_version=2, version=3, workload_upserts=[
        node_pb2.WorkloadState(name="team/b", cgroup="socklb/b", bypass_socket_lb=True)]))
    assert len(policy_jobs(a)) == 2  # team/b freed: it has nothing to lose
    edited = node_pb2.PolicySetState()
    edited.CopyFrom(change.policy_sets[0])
    edited.prefixes[0].rules[0].end_port = 80
    a.apply_delta(node_pb2.NodeStateDelta(from_version=3, version=4, policy_set_upserts=[edited]))
    job = policy_jobs(a)[-1]
    assert job.id == "v4-policy" and scopes(job) == {"team/a": ("ps-a", {11})}


def test_a_change_of_services_only_gives_no_policy_job():
    a = policy_node()
    a.apply(parse_state(STATE))
    n = len(a.terminations.seen)
    change = parse_state(STATE)
    change.version = 2
    change.services[0].backends[0].port = 9090
    a.apply(change)
    a.apply_delta(node_pb2.NodeStateDelta(from_version=2, version=3, upserts=[node_pb2.ServiceState(
        name="db", frontends=[{"address": "127.96.0.2", "port": 5432}],
        backends=[{"address": "10.0.0.5", "port": 5432}])]))
    assert len(a.terminations.seen) == n and len(policy_jobs(a)) == 1  # the start's only
    assert [j.trigger for j in a.terminations.jobs] == ["policy", "backend-removed"]


def test_a_cgroup_found_later_gives_a_job_for_its_workload():
    cgroups = {}
    a = policy_node(cgroups)
    a.apply(parse_state(STATE))
    assert policy_jobs(a) == []  # no cgroup on this node: no socket to judge
    cgroups = a.policy.cgroups.cgroups
    cgroups["socklb/a"] = Cgroup(21)
    assert a.recheck_workloads()
    [job] = policy_jobs(a)
    assert job.id.startswith("v1-policy-cgroup-n-") and scopes(job) == {"team/a": ("ps-a", {21})}

    cgroups["socklb/b"] = Cgroup(31)  # an unrestricted workload: nothing to judge
    assert a.recheck_workloads() and len(policy_jobs(a)) == 1
    cgroups["socklb/a"] = Cgroup(21, below=(22,))  # exact matching: a cgroup below it
    assert a.recheck_workloads()
    assert scopes(policy_jobs(a)[-1]) == {"team/a": ("ps-a", {21, 22})}
    del cgroups["socklb/a"]  # gone: nothing left to judge
    assert a.recheck_workloads() and len(policy_jobs(a)) == 2


def test_a_failed_write_gives_no_policy_job():
    w = Failing(1)
    a = Agent(w, "n", cgroups=MemoryCgroups(CGROUPS))
    with pytest.raises(OSError):
        a.apply(parse_state(STATE))
    assert list(a.terminations.jobs) == []
