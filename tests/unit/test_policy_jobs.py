"""Policy terminations without a kernel (socklb/dataplane/policyjobs.py and
their place in termjobs.py): which workloads a change concerns, whose
cgroups, how each socket is judged, what the report says, and the
termination part running them on its worker. A fake terminator stands for
sockdestroy.Terminator (tests/kernel/test_kernel_policy_termination.py runs
the real one)."""
from __future__ import annotations

import queue
import socket

import pytest

from socklb.dataplane.cgroupids import cgroup_ids, workload_cgroup_ids
from socklb.dataplane.policyjobs import (changed_workloads, judge, owned_cgroups, policy_job, read_learned,
                                         run_policy_job)
from socklb.dataplane.sockdestroy import Method
from socklb.dataplane.termjobs import MemoryTerminations, TerminationService, policy_report
from socklb.dataplane.termtypes import CookieReport, ListedSocket, SocketListing
from socklb.lb.addresses import addr16
from socklb.lb.errors import InvalidState
from socklb.v1 import node_pb2, policy_pb2, types_pb2

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
ALLOW, DENY = policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY
VIP = "127.96.0.10"


def fe(address, port, proto=types_pb2.PROTOCOL_TCP):
    return types_pb2.Frontend(address=address, port=port, protocol=proto)


def ps(name, web=ALLOW, rules=()):
    return node_pb2.PolicySetState(
        name=name, frontends=[node_pb2.FrontendVerdict(service="web", frontend=fe(VIP, 80), action=web)],
        prefixes=[node_pb2.PrefixRules(prefix="10.0.0.0/8", rules=[
            node_pb2.PortRule(port=0, end_port=65535, protocol=types_pb2.PROTOCOL_TCP, action=ALLOW), *rules])])


def wl(name, cgroup, policy_set=""):
    return node_pb2.WorkloadState(name=name, cgroup=cgroup, policy_set=policy_set)


SERVICES = [node_pb2.ServiceState(name="web", frontends=[fe(VIP, 80)]),
            node_pb2.ServiceState(name="dns", frontends=[fe(VIP, 53, types_pb2.PROTOCOL_UDP)])]


def state(version, workloads, sets):
    return node_pb2.NodeState(version=version, services=SERVICES, workloads=workloads, policy_sets=sets)


# cgroup ids: a/ = 1 (2, 3 below it; 3 = a/b is workload "inner"), c/ = 4
IDS = {"outer": {1, 2, 3}, "inner": {3}, "other": {4}}


def listed(cookie, cgroup_id, dst, dport, proto=TCP, vip=None, vip_port=0, family=socket.AF_INET, netns="net:[1]"):
    return ListedSocket(netns, cookie, cgroup_id, family, proto, 1, addr16("10.9.9.9"), 40000 + cookie,
                        addr16(dst), dport, 7 if vip else 0, 9 if vip else 0,
                        addr16(vip) if vip else bytes(16), vip_port)


# --- which workloads ----------------------------------------------------------------------------

def test_changed_workloads():
    a, b = ps("ps-a"), ps("ps-b")
    before = state(1, [wl("same", "x/same", "ps-a"), wl("moved", "x/m1", "ps-a"), wl("switch", "x/s", "ps-a"),
                       wl("freed", "x/f", "ps-a"), wl("free", "x/free")], [a, b])
    after = state(2, [wl("same", "/x/same/", "ps-a"), wl("moved", "x/m2", "ps-a"), wl("switch", "x/s", "ps-b"),
                      wl("freed", "x/f"), wl("free", "x/free"), wl("new", "x/n", "ps-b"), wl("newfree", "x/nf")],
                  [a, b])
    assert [w.name for w in changed_workloads(before, after)] == ["moved", "new", "switch"]
    # a set's content changes: every workload using it
    edited = state(3, list(after.workloads), [ps("ps-a", web=DENY), b])
    assert [w.name for w in changed_workloads(after, edited)] == ["moved", "same"]
    assert changed_workloads(after, after) == []


def test_nested_cgroups_belong_to_the_deepest_workload():
    ws = [wl("outer", "a", "ps-a"), wl("inner", "a/b", "ps-b"), wl("other", "c")]
    assert owned_cgroups(ws, IDS) == {1: "outer", 2: "outer", 3: "inner", 4: "other"}
    assert owned_cgroups(list(reversed(ws)), IDS) == {1: "outer", 2: "outer", 3: "inner", 4: "other"}


def test_policy_job_scopes():
    a, b = ps("ps-a"), ps("ps-b")
    before = state(1, [wl("outer", "a"), wl("inner", "a/b", "ps-b"), wl("other", "c")], [b])
    after = state(7, [wl("outer", "a", "ps-a"), wl("inner", "a/b", "ps-b"), wl("other", "c")], [a, b])
    job = policy_job("v7-policy", before, after, IDS)
    assert job.id == "v7-policy" and not job.dry_run and job.trigger == "policy" and job.service == ""
    # outer changed; inner's cgroup (3) stays inner's, which did not change
    assert [(w.name, w.policy_set, set(w.cgroup_ids)) for w in job.workloads] == [("outer", "ps-a", {1, 2})]
    assert set(job.cgroups) == {1, 2} and not job.empty
    # asked to look again at inner (e.g. its cgroup just appeared); not at an unrestricted one
    again = policy_job("x", before, after, IDS, dry_run=True, workloads=["inner", "other"])
    assert [w.name for w in again.workloads] == ["inner", "outer"] and again.dry_run
    # nothing changed, or no cgroup on this node: nothing to do
    assert policy_job("x", after, after, IDS) is None
    assert policy_job("x", before, after, {"inner": {3}}) is None
    with pytest.raises(KeyError, match="ps-gone"):
        policy_job("x", before, state(8, [wl("outer", "a", "ps-gone")], [a]), IDS)
    bad = state(9, [wl("outer", "a", "ps-a")], [a])
    bad.services.add(name="bad", frontends=[fe("127.96.0.300", 80)])
    with pytest.raises(InvalidState, match="services"):
        policy_job("x", before, bad, IDS)


# --- judging -----------------------------------------------------------------------------------

@pytest.fixture
def job():
    before = state(1, [wl("outer", "a"), wl("other", "c")], [])
    after = state(2, [wl("outer", "a", "ps-a"), wl("other", "c")],
                  [ps("ps-a", rules=[node_pb2.PortRule(port=22, end_port=22, action=DENY)])])
    return policy_job("v2-policy", before, after, IDS)


def test_judge_by_frontend_as_addressed_or_by_peer(job):
    socks = [
        listed(1, 1, "10.0.0.2", 8080, vip=VIP, vip_port=80),             # web through the LB: ALLOW
        listed(2, 2, "10.0.0.2", 53, UDP, vip=VIP, vip_port=53),          # dns through the LB: no verdict
        listed(3, 1, "10.1.1.1", 443),                                    # 10/8 allows TCP
        listed(4, 1, "10.1.1.1", 22),                                     # deny wins
        listed(5, 1, "11.0.0.1", 80),                                     # no prefix
        listed(6, 1, VIP, 80),                                            # direct to a VIP (bypass): its verdict
        listed(7, 1, "10.0.0.2", 8080, vip="10.0.0.99", vip_port=81),     # flow of a frontend gone: its VIP by prefix
        listed(8, 4, "11.0.0.1", 80),                                     # another workload's cgroup: not judged
        listed(9, 1, "::ffff:11.0.0.1", 80, family=socket.AF_INET6),      # v4-mapped: IPv4
        listed(10, 1, "10.2.2.2", 22, vip="10.0.0.99", vip_port=22),      # the same to port 22: the deny
    ]
    got = {c.socket.cookie: c for c in judge(job, socks)}
    assert sorted(got) == [2, 4, 5, 9, 10]
    assert got[2].destination == f"{VIP}:53/udp (dns)" and got[2].service == "dns"
    assert got[2].reason == f"policy set ps-a: frontend {VIP}:53/udp has no verdict"
    assert got[4].destination == "10.1.1.1:22/tcp" and got[4].reason == "policy set ps-a: 10.0.0.0/8 denies 10.1.1.1:22/tcp"
    assert got[5].reason == "policy set ps-a: no prefix holds 11.0.0.1:80/tcp"
    assert got[10].address == "10.0.0.99" and got[10].port == 22
    assert {c.workload for c in got.values()} == {"outer"}


class FakeTerminator:
    """list_cgroups / destroy_cookies over a fixed set of sockets; records
    the calls. gone: cookies closed between the listing and the destroy."""

    method = Method.KFUNC

    def __init__(self, sockets, gone=(), fail=()):
        self.sockets, self.gone, self.fail = list(sockets), set(gone), set(fail)
        self.calls = []
        self.closed = False

    def list_cgroups(self, ids):
        """ids None: every cgroup's sockets (a redirect's job)."""
        self.calls.append(("list", None if ids is None else set(ids)))
        return SocketListing([s for s in self.sockets if ids is None or s.cgroup_id in set(ids)], netns_scanned=2)

    def destroy_cookies(self, sockets, dry_run=False):
        sockets = list(sockets)
        self.calls.append(("destroy", [s.cookie for s in sockets]))
        rep = CookieReport("kfunc", dry_run, asked=len(sockets))
        for s in sockets:
            if s.cookie not in self.gone:
                rep.results[s.cookie] = -1 if s.cookie in self.fail else 0
        rep.found = len(rep.results)
        rep.destroyed = sum(r == 0 for r in rep.results.values())
        rep.failed = rep.found - rep.destroyed
        return rep

    def close(self):
        self.closed = True


SOCKS = [listed(1, 1, "10.0.0.2", 8080, vip=VIP, vip_port=80), listed(4, 1, "10.1.1.1", 22),
         listed(5, 2, "11.0.0.1", 80, netns="net:[2]"), listed(11, 2, "11.0.0.1", 81), listed(12, 2, "10.1.1.1", 22),
         listed(8, 4, "11.0.0.1", 80)]


class FakeKernelJudge(FakeTerminator):
    """A terminator whose judge programs loaded: judge_cgroups answers as
    the kernel would (here by the evaluator of `job`), destroying the denied
    in the same walk; list_cgroups and destroy_cookies must not be called."""

    kernel_judge = True

    def __init__(self, sockets, job, gone=(), fail=()):
        super().__init__(sockets, gone, fail)
        self.job = job

    def judge_cgroups(self, sets, cgroup_workloads=None):
        self.calls.append(("judge", dict(sets)))
        self.workloads = dict(cgroup_workloads or {})
        learned = read_learned(self.job) if self.workloads else None
        denied = [c.socket for c in judge(self.job, [s for s in self.sockets if s.cgroup_id in sets], learned=learned)]
        rep = FakeTerminator.destroy_cookies(self, denied)
        self.calls.pop()
        return SocketListing(denied, netns_scanned=2, judged=sum(s.cgroup_id in sets for s in self.sockets)), rep


def test_the_kernel_judges_when_it_holds_the_applied_sets(job):
    """A job given the applied sets' kernel ids, on a terminator with the
    judge programs: one judge_cgroups call (cgroup -> set id), nothing
    listed, nothing destroyed by cookie; the same condemned and report as
    the user-space way. Without the ids (or a set missing among them), a dry
    run or a terminator without the judge: user space."""
    with_ids = policy_job("v2-policy", job_state_before(), job_state_after(), IDS, set_ids={"ps-a": 7})
    t = FakeKernelJudge(SOCKS, with_ids, fail={12})
    run = run_policy_job(t, with_ids)
    assert t.calls == [("judge", {1: 7, 2: 7, 3: 7})]
    assert run.judge == "kernel" and [c.socket.cookie for c in run.condemned] == [4, 5, 11, 12]
    assert run.summary().startswith("destroyed 3/4 denied of 5 sockets judged in the kernel in 2 netns, ")
    user = run_policy_job(FakeTerminator(SOCKS, fail={12}), job)
    kernel_rep, user_rep = policy_report(with_ids, "n1", run), policy_report(job, "n1", user)
    assert [(s.cookie, s.result, s.workload, s.reason) for s in kernel_rep.sockets] == [
        (s.cookie, s.result, s.workload, s.reason) for s in user_rep.sockets]
    for other in (policy_job("x", job_state_before(), job_state_after(), IDS, set_ids={"ps-b": 7}),
                  policy_job("x", job_state_before(), job_state_after(), IDS, dry_run=True, set_ids={"ps-a": 7})):
        t = FakeKernelJudge(SOCKS, other)
        assert run_policy_job(t, other).judge == "user" and t.calls[0][0] == "list"
    t = FakeKernelJudge(SOCKS, with_ids)
    t.kernel_judge = False  # judge programs not loaded, or forced to user space
    assert run_policy_job(t, with_ids).judge == "user" and t.calls[0][0] == "list"


def test_a_set_with_fqdn_rules_without_the_learned_is_judged_in_user_space_keeping_what_a_pattern_may_allow():
    """A job for a set with FQDN rules given no FqdnSource (no workload ids,
    no learner) is judged here, and a destination no prefix decides is kept
    when a pattern of the set allows its port (11.0.0.1:80 below), not
    destroyed."""
    after = job_state_after()
    after.policy_sets[0].fqdns.add(pattern="*.example.test", rules=[
        node_pb2.PortRule(port=80, end_port=80, action=ALLOW)])
    j = policy_job("v2-policy", job_state_before(), after, IDS, set_ids={"ps-a": 7})
    t = FakeKernelJudge(SOCKS, j)
    run = run_policy_job(t, j)
    assert run.judge == "user" and t.calls[0][0] == "list"
    assert 5 not in [c.socket.cookie for c in run.condemned] and 11 in [c.socket.cookie for c in run.condemned]


def fqdn_after(*patterns):
    """job_state_after with FQDN patterns: (pattern, port, action) each."""
    after = job_state_after()
    for pattern, port, action in patterns:
        after.policy_sets[0].fqdns.add(pattern=pattern, rules=[
            node_pb2.PortRule(port=port, end_port=port, action=action)])
    return after


def test_fqdn_destinations_are_judged_by_what_the_workload_learned():
    """11.0.0.1 (no prefix decides it) learned by workload "outer" (id 3)
    through *.example.test (port 80 allowed): cookie 5 (port 80) is kept,
    11 (port 81) condemned; without a learned entry, or learned only through
    a pattern the set no longer has, both are condemned, naming FQDN; a
    learned pattern whose rules deny the port denies (deny wins); a dry run,
    not given what was learned, keeps what a pattern may have allowed."""
    from socklb.dataplane.policyjobs import FqdnSource, MemoryLearned
    from socklb.lb.fqdn import pattern_id
    ex, other = pattern_id("*.example.test"), pattern_id("*.other.test")
    after = fqdn_after(("*.example.test", 80, ALLOW), ("bad.other.test", 80, DENY))

    def condemned(entries, state=after, dry_run=False):
        src = FqdnSource({"outer": 3, "other": 4}, MemoryLearned(entries))
        j = policy_job("v2-policy", job_state_before(), state, IDS, dry_run=dry_run, set_ids={"ps-a": 7}, fqdn=src)
        user = run_policy_job(FakeTerminator(SOCKS), j)
        k = FakeKernelJudge(SOCKS, j)
        run = run_policy_job(k, j)
        # the kernel judges FQDN sets too, given the workloads' ids (a dry run: user space)
        assert (run.judge, k.workloads if not dry_run else None) == (("user", None) if dry_run else
                                                                     ("kernel", {1: 3, 2: 3, 3: 3}))
        assert [(c.socket.cookie, c.reason) for c in run.condemned] == [
            (c.socket.cookie, c.reason) for c in user.condemned]
        return {c.socket.cookie: c.reason for c in run.condemned if c.socket.cookie in (5, 11)}

    addr = addr16("11.0.0.1")
    assert set(condemned({(3, addr): frozenset({ex})})) == {11}
    assert "FQDN: *.example.test (what resolved to it) does not allow 11.0.0.1:81/tcp" in \
        condemned({(3, addr): frozenset({ex})})[11]
    for entries in ({}, {(4, addr): frozenset({ex})}, {(3, addr): frozenset({other})}):
        got = condemned(entries)
        assert set(got) == {5, 11} and "FQDN: no allowed name resolved to 11.0.0.1:80/tcp" in got[5], entries
    # the shared address was also learned through a denied name: deny wins
    got = condemned({(3, addr): frozenset({ex, pattern_id("bad.other.test")})})
    assert set(got) == {5, 11} and "bad.other.test" in got[5] and "denies" in got[5]
    # the name removed from the set, the other kept: the address stays through the other
    narrowed = fqdn_after(("*.other.test", 80, ALLOW))
    assert set(condemned({(3, addr): frozenset({ex, other})}, narrowed)) == {11}
    assert set(condemned({(3, addr): frozenset({ex})}, narrowed)) == {5, 11}
    # a dry run reads nothing: kept when a pattern allows the port
    assert set(condemned({}, dry_run=True)) == {11}


def test_memory_learned_reads_the_asked_workloads_only():
    from socklb.dataplane.policyjobs import MemoryLearned
    m = MemoryLearned({(3, b"a" * 16): frozenset({1}), (4, b"b" * 16): frozenset({2})})
    assert m.learned_patterns({3}) == {(3, b"a" * 16): frozenset({1})}


def test_run_and_report(job):
    t = FakeTerminator(SOCKS, gone={11}, fail={12})
    run = run_policy_job(t, job)
    assert t.calls == [("list", {1, 2, 3}), ("destroy", [4, 5, 11, 12])]
    assert run.method == "kfunc" and run.workloads == {"outer": 4} and len(run.listing.sockets) == 5
    assert run.summary().startswith("destroyed 2/3 denied of 5 sockets listed in 2 netns, ")
    rep = policy_report(job, "n1", run)
    assert (rep.id, rep.node, rep.trigger, rep.service, rep.dry_run, rep.method) == (
        "v2-policy", "n1", "policy", "", False, "kfunc")
    # 11 was closed before it could be destroyed: not found, not listed
    assert (rep.found, rep.destroyed, rep.failed, rep.namespaces) == (3, 2, 1, 2)
    assert [(s.cookie, s.result, s.destination, s.state, s.protocol) for s in rep.sockets] == [
        (4, 0, "10.1.1.1:22", "ESTABLISHED", types_pb2.PROTOCOL_TCP), (5, 0, "11.0.0.1:80", "ESTABLISHED",
                                                                     types_pb2.PROTOCOL_TCP),
        (12, -1, "10.1.1.1:22", "ESTABLISHED", types_pb2.PROTOCOL_TCP)]
    assert rep.sockets[1].netns == "net:[2]" and rep.sockets[0].source == "10.9.9.9:40004"
    # each with whose it is and why, as the evaluator says it
    assert {s.workload for s in rep.sockets} == {"outer"}
    why = {c.socket.cookie: c.reason for c in run.condemned}
    assert [s.reason for s in rep.sockets] == [why[4], why[5], why[12]] and all(why.values())
    assert [(b.address, b.port, b.found, b.destroyed) for b in rep.backends] == [
        ("10.1.1.1", 22, 2, 1), ("11.0.0.1", 80, 1, 1)]

    dry = policy_job("d", job_state_before(), job_state_after(), IDS, dry_run=True)
    t = FakeTerminator(SOCKS)
    run = run_policy_job(t, dry)
    assert t.calls == [("list", {1, 2, 3})] and run.destroyed is None and run.method == "none"
    rep = policy_report(dry, "n1", run)
    assert rep.dry_run and rep.method == "none" and rep.found == 4 and rep.destroyed == 0
    assert [s.cookie for s in rep.sockets] == [4, 5, 11, 12] and not any(s.HasField("result") for s in rep.sockets)
    # nothing denied: nothing destroyed, nothing asked
    t = FakeTerminator(SOCKS[:1])
    run = run_policy_job(t, job)
    assert t.calls == [("list", {1, 2, 3})] and run.condemned == [] and policy_report(job, "n", run).found == 0


def job_state_before():
    return state(1, [wl("outer", "a"), wl("other", "c")], [])


def job_state_after():
    return state(2, [wl("outer", "a", "ps-a"), wl("other", "c")],
                 [ps("ps-a", rules=[node_pb2.PortRule(port=22, end_port=22, action=DENY)])])


# --- the termination part ----------------------------------------------------------------------

def test_the_service_runs_policy_jobs_on_its_worker():
    t = FakeTerminator(SOCKS)
    svc = TerminationService("n1", t)
    reports = queue.Queue()
    svc.listen(reports.put)
    try:
        before, after = job_state_before(), job_state_after()
        rep = svc.after_policy_change(before, after, IDS, wait=True)
        assert rep.id == "v2-policy" and rep.trigger == "policy" and rep.found == rep.destroyed == 4, rep
        assert reports.get(timeout=5) == rep  # the listeners hear of it too
        assert svc.after_policy_change(before, after, IDS) is None  # in the background
        later = reports.get(timeout=5)
        assert later.id == "v2-policy" and later.destroyed == 4
        # a dry run of a state not applied, under the caller's id
        dry = svc.after_policy_change(after, state(3, [wl("outer", "a", "ps-b")], [ps("ps-b", web=DENY)]), IDS,
                                      dry_run=True, wait=True, job_id="t-dry")
        # ps-b denies web and has no deny on port 22: 1 (web), 5 and 11 (no prefix)
        assert dry.id == "t-dry" and dry.dry_run and dry.found == 3 and dry.destroyed == 0
        assert {s.cookie for s in dry.sockets} == {1, 5, 11}
        # nothing to look at: no job; waiting gives an empty report
        assert svc.after_policy_change(after, after, IDS) is None
        empty = svc.after_policy_change(after, after, IDS, wait=True, dry_run=True)
        assert empty.trigger == "policy" and empty.found == 0 and empty.dry_run and empty.id == "v2-policy"
        assert [r.trigger for r in svc.recent()][-1] == "policy"
    finally:
        svc.close()
    assert t.closed


def test_a_failing_or_missing_terminator_is_a_report_with_the_error():
    class Broken(FakeTerminator):
        def list_cgroups(self, ids):
            raise RuntimeError("iterator refused")

    svc = TerminationService("n1", Broken([]))
    try:
        rep = svc.after_policy_change(job_state_before(), job_state_after(), IDS, wait=True)
        assert rep.error == "iterator refused" and rep.trigger == "policy" and rep.found == 0
    finally:
        svc.close()
    svc = TerminationService("n1", None, unavailable="no way")
    try:
        rep = svc.after_policy_change(job_state_before(), job_state_after(), IDS, wait=True)
        assert rep.error == "cannot terminate: no way"
    finally:
        svc.close()


def test_memory_terminations_keep_policy_jobs():
    m = MemoryTerminations("n1")
    assert m.after_policy_change(job_state_before(), job_state_after(), IDS) is None
    [job] = m.jobs
    assert job.trigger == "policy" and [w.name for w in job.workloads] == ["outer"]
    rep = m.after_policy_change(job_state_before(), job_state_after(), IDS, wait=True)
    assert rep.error == MemoryTerminations.WHY and rep.trigger == "policy"


# --- cgroup ids ----------------------------------------------------------------------------------

def test_cgroup_ids_are_the_inodes_of_the_tree(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "d").mkdir()
    (tmp_path / "a" / "file").write_text("not a cgroup")
    want = {p.stat().st_ino for p in (tmp_path / "a", tmp_path / "a/b", tmp_path / "a/b/c", tmp_path / "a/d")}
    assert cgroup_ids(tmp_path / "a") == want
    assert cgroup_ids(tmp_path / "nowhere") == set()
    got = workload_cgroup_ids(tmp_path, [wl("w", "/a/b/"), wl("gone", "x")])
    assert got == {"w": {(tmp_path / "a/b").stat().st_ino, (tmp_path / "a/b/c").stat().st_ino}, "gone": set()}


def test_work_given_for_later_runs_on_the_worker_in_order():
    """Terminations.later: what a job takes to build runs on the worker,
    after what was given before it, and a failure is logged, not fatal;
    MemoryTerminations runs it at once."""
    gate = queue.Queue()

    class Slow(FakeTerminator):
        def list_cgroups(self, ids):
            gate.get(timeout=5)  # holds the worker until the test lets it go
            return super().list_cgroups(ids)

    svc = TerminationService("n1", Slow(SOCKS))
    done, reports = [], queue.Queue()
    svc.listen(reports.put)
    try:
        svc.after_policy_change(job_state_before(), job_state_after(), IDS)
        svc.later(lambda: done.append("first"))
        svc.later(lambda: 1 / 0)
        svc.later(lambda: svc.after_policy_change(job_state_before(), job_state_after(), IDS, job_id="second"))
        assert done == []  # the worker is still on the job given before: the caller did not wait
        gate.put(None)
        gate.put(None)
        assert reports.get(timeout=5).id == "v2-policy" and reports.get(timeout=5).id == "second"
        assert done == ["first"]
    finally:
        svc.close()
    m = MemoryTerminations("n1")
    m.later(lambda: m.after_policy_change(job_state_before(), job_state_after(), IDS))
    assert [j.id for j in m.jobs] == ["v2-policy"]


def test_kernel_cgroups_take_the_ids_below_from_the_one_walk(tmp_path):
    """workloads.KernelCgroups: resolve (exact: the ids below, sorted) and
    tree (the cgroup and all below) walk the tree with cgroupids.py; a
    cgroup outside the balanced one is neither."""
    from socklb.dataplane.cgroupids import ids_below
    from socklb.dataplane.workloads import Cgroup, KernelCgroups

    (tmp_path / "lb" / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "lb" / "a" / "d").mkdir()
    (tmp_path / "out").mkdir()
    ino = {p: (tmp_path / p).stat().st_ino for p in ("lb/a", "lb/a/b", "lb/a/b/c", "lb/a/d")}
    below = {ino["lb/a/b"], ino["lb/a/b/c"], ino["lb/a/d"]}
    assert ids_below(tmp_path / "lb/a") == below and ids_below(tmp_path / "nowhere") == set()
    exact = KernelCgroups(tmp_path, tmp_path / "lb", exact=True)
    assert exact.resolve("lb/a") == Cgroup(ino["lb/a"], tuple(sorted(below)))
    assert KernelCgroups(tmp_path, tmp_path / "lb").resolve("lb/a") == Cgroup(ino["lb/a"])
    assert exact.tree("lb/a") == below | {ino["lb/a"]} == cgroup_ids(tmp_path / "lb/a")
    assert exact.resolve("out") is None and exact.tree("out") == set() and exact.tree("lb/gone") == set()
