"""Previews of policy and redirect writes (PreviewPolicy,
PreviewLocalRedirect): the hypothetical node states the control plane
computes (pure, against the from-scratch reference), and, in one process
with a real control plane and real sync clients, the nodes' dry-run
reports, with nothing written and nothing destroyed."""
from __future__ import annotations

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklb.controlplane import keys
from socklb.controlplane.policy_cache import NodePolicy
from socklb.dataplane.agent import Agent
from socklb.dataplane.sync_client import SyncClient
from socklb.dataplane.termjobs import TerminationService
from socklb.dataplane.workloads import Cgroup, MemoryCgroups
from socklb.dataplane.writer import MemoryMapWriter
from socklb.v1 import api_pb2, node_pb2, sync_pb2

from test_policy_cache import EXAMPLES, NODES, batches, cache_with, full, policies, redirects
from test_policy_compute import ALLOW, DENY, UDP, policy, redirect, rule, service, workload
from test_policy_jobs import FakeTerminator, listed
from test_sync import wait_for


def applied(steps):
    cache = cache_with()
    for revision, batch in enumerate(steps, start=11):
        by_kind = {"services": [], "workloads": [], "policies": [], "redirects": []}
        for kind, name, msg in batch:
            by_kind[kind].append((name, msg))
        cache.apply(by_kind.pop("services"), revision, NODES, **by_kind)
    return cache


def expected_preview(cache, kind: str, resource) -> dict[str, NodePolicy]:
    """The reference: the state from scratch with the resource written, for
    the nodes whose state it changes."""
    before = {n: full(cache, n) for n in NODES}
    after = cache_with(cache.services.values(), cache.policy.workloads.values(),
                       cache.policy.policies.values(), cache.policy.redirects.values())
    after.apply([], 99, NODES, **{kind: [(resource.name, resource)]})
    return {n: full(after, n) for n in NODES if full(after, n) != before[n]}


@settings(max_examples=EXAMPLES // 2, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches, st.one_of(policies.map(lambda p: ("policies", p)), redirects.map(lambda r: ("redirects", r))))
def test_a_preview_is_the_state_the_write_would_make_on_the_nodes_it_changes(steps, write):
    kind, resource = write
    cache = applied(steps)
    held = {n: cache.policy_for(n) for n in NODES}
    got = cache.policy.preview(resource)
    assert got == expected_preview(cache, kind, resource)
    assert {n: cache.policy_for(n) for n in NODES} == held  # nothing held was touched
    assert cache.policy.policies.get(resource.name) is not resource


WEB, DB = {"app": "web"}, {"app": "db"}


def test_only_the_nodes_whose_part_changes_are_previewed():
    p1 = policy("p1", WEB, rule(ALLOW, cidrs=["10.0.0.0/8"]))
    cache = cache_with([service("dns", ("10.96.0.10", 53, UDP))],
                       [workload("w1", "n1", WEB), workload("w2", "n2", DB), workload("w3", "n3", WEB)], [p1])
    assert cache.policy.preview(p1) == {}  # what is stored: nothing changes
    narrower = policy("p1", WEB, rule(ALLOW, cidrs=["10.1.0.0/16"]))
    got = cache.policy.preview(narrower)
    assert sorted(got) == ["n1", "n3"]  # n2's workload is not selected, before or after
    [ps] = got["n1"].policy_sets.values()
    assert [p.prefix for p in ps.prefixes] == ["10.1.0.0/16"] and ps.name == got["n1"].workloads["w1"].policy_set
    assert cache.policy.preview(policy("p2", {"app": "none"}, rule(DENY, cidrs=["0.0.0.0/0"]))) == {}
    moved = cache.policy.preview(policy("p1", DB, rule(ALLOW, cidrs=["10.0.0.0/8"])))
    assert sorted(moved) == NODES and moved["n1"].workloads["w1"].policy_set == "" and not moved["n1"].policy_sets
    # A redirect: only the node with a local workload it selects (and an address to send to).
    cache = cache_with([service("dns", ("10.96.0.10", 53, UDP))],
                       [workload("w1", "n1", WEB), workload("w2", "n2", DB, ["10.0.0.9"])])
    r = redirect("dns", {"app": "db"}, "dns")
    got = cache.policy.preview(r)
    assert sorted(got) == ["n2"] and [b.address for b in got["n2"].redirects["dns"].backends] == ["10.0.0.9"]


# --- through the control plane and the nodes ---------------------------------------------------

DNS = service("dns", ("10.96.0.10", 53, UDP))
CLIENT = workload("client", "n1", {"app": "client"})
OTHER = workload("other", "n2", {"app": "other"})
# The client's open sockets (cgroup 7): UDP through the dns VIP, TCP to 10.1.1.1:22 and to 192.168.1.1:443.
SOCKETS = [listed(1, 7, "10.0.0.53", 53, proto=17, vip="10.96.0.10", vip_port=53),
           listed(2, 7, "10.1.1.1", 22), listed(4, 7, "192.168.1.1", 443), listed(5, 8, "10.1.1.1", 22)]
# Allows dns and 192.168.0.0/16: the socket to 10.1.1.1:22 would be ended.
P1 = policy("p1", {"app": "client"}, rule(ALLOW, services=["dns"]), rule(ALLOW, cidrs=["192.168.0.0/16"]))


def config(server):
    """What the configuration range holds, with the revisions that wrote it."""
    kvs, _ = server.store.range(keys.CONFIG_START, end=keys.CONFIG_END)
    return [(kv.key, kv.value, kv.mod_revision) for kv in kvs]


def reported(server, term_id, n=1):
    wait_for(lambda: len(server.api.GetTermination(api_pb2.GetTerminationRequest(id=term_id)).reports) >= n,
             "the nodes' reports")
    return server.api.GetTermination(api_pb2.GetTerminationRequest(id=term_id))


@pytest.fixture
def nodes(server):
    """n1 runs the client (a terminator with SOCKETS), n2 another workload
    (its maps in memory: it cannot list sockets)."""
    server.api.PutService(api_pb2.PutServiceRequest(service=DNS))
    server.api.PutWorkload(api_pb2.PutWorkloadRequest(workload=CLIENT))
    server.api.PutWorkload(api_pb2.PutWorkloadRequest(workload=OTHER))
    t = FakeTerminator(SOCKETS)
    n1 = Agent(MemoryMapWriter(), "n1", terminations=TerminationService("n1", t),
               cgroups=MemoryCgroups({"socklb/client": Cgroup(7), "socklb/cache": Cgroup(9)}))
    n2 = Agent(MemoryMapWriter(), "n2")
    clients = [SyncClient(a, [server.addr], stats_interval=60) for a in (n1, n2)]
    for c in clients:
        c.start()
    try:
        for a, w in ((n1, "client"), (n2, "other")):
            wait_for(lambda a=a, w=w: [x.name for x in a.state().workloads] == [w], "the workloads on the nodes")
        wait_for(lambda: sorted(n.name for n in server.api.ListNodes(api_pb2.ListNodesRequest()).nodes
                                if n.health == api_pb2.NODE_HEALTH_READY) == ["n1", "n2"], "both nodes ready")
        yield n1, n2, t
    finally:
        for c in clients:
            c.stop()
        n1.close()
        n2.close()


def test_a_policy_preview_lists_what_the_node_would_end_and_writes_nothing(server, nodes):
    n1, n2, t = nodes
    before, states = config(server), (n1.state(), n2.state())
    term = server.api.PreviewPolicy(api_pb2.PutPolicyRequest(policy=P1))
    assert term.id.startswith("t-") and term.dry_run and term.trigger == "policy" and term.service == ""
    assert list(term.pending_nodes) == ["n1"]  # n2's workload is not selected: not asked
    assert term.policy.name == "p1" and not term.policy.resource_version
    got = reported(server, term.id)
    [rep] = got.reports
    assert (rep.node, rep.trigger, rep.dry_run, rep.method, rep.error) == ("n1", "policy", True, "none", "")
    assert rep.found == got.found == 1 and rep.destroyed == got.destroyed == 0 and not got.pending_nodes
    assert [(s.destination, s.cookie) for s in rep.sockets] == [("10.1.1.1:22", 2)]
    assert [(b.address, b.port) for b in got.backends] == [("10.1.1.1", 22)]  # the destinations judged
    assert t.calls == [("list", {7})]  # listed, nothing destroyed
    # Nothing written: the configuration, the policies, the nodes' states.
    assert config(server) == before
    code = pytest.raises(grpc.RpcError, server.api.GetPolicy, api_pb2.GetRequest(name="p1")).value.code()
    assert code == grpc.StatusCode.NOT_FOUND
    assert list(server.api.ListPolicies(api_pb2.ListRequest()).policies) == []
    assert (n1.state(), n2.state()) == states
    listed_ = server.api.ListTerminations(api_pb2.ListTerminationsRequest()).terminations
    assert [(x.id, x.trigger, x.dry_run) for x in listed_] == [(term.id, "policy", True)]


def test_a_node_that_cannot_judge_answers_with_an_error(server, nodes):
    n1, n2, t = nodes
    term = server.api.PreviewPolicy(api_pb2.PutPolicyRequest(policy=policy(
        "deny-all", {}, rule(DENY, cidrs=["0.0.0.0/0"]))))
    assert list(term.pending_nodes) == ["n1", "n2"]
    got = reported(server, term.id, 2)
    by_node = {r.node: r for r in got.reports}
    assert by_node["n1"].error == "" and by_node["n1"].found == 3
    assert "programs no datapath" in by_node["n2"].error and by_node["n2"].dry_run
    assert not got.pending_nodes
    # A part the node refuses is reported, never left unanswered.
    bad = sync_pb2.NodePolicyPreview(trigger="policy", workloads=[node_pb2.WorkloadState(
        name="x", cgroup="socklb/x", policy_set="ps-missing")])
    seen = []
    n1.terminations.listen(seen.append)
    n1.preview("t-bad", bad)
    wait_for(lambda: [r.id for r in seen] == ["t-bad"], "the refusal")
    assert seen[0].error.startswith("the previewed state is not valid here: workloads[0].policy_set: ")


def test_a_redirect_preview_lists_the_sockets_the_redirect_would_take_over(server, nodes):
    n1, _, t = nodes
    server.api.PutWorkload(api_pb2.PutWorkloadRequest(workload=workload(
        "cache", "n1", {"app": "node-dns"}, ["10.0.0.53"])))
    wait_for(lambda: len(n1.state().workloads) == 2, "the cache workload")
    # The client's socket through the dns VIP carries n1's id of that frontend.
    [fid] = [fe.id for fe in n1._programmed.frontends.values() if fe.service == "dns"]
    t.sockets = [s._replace(frontend_id=fid) if s.frontend_id else s for s in t.sockets]
    term = server.api.PreviewLocalRedirect(api_pb2.PutLocalRedirectRequest(local_redirect=redirect(
        "dns", {"app": "node-dns"}, "dns")))
    assert term.trigger == "local-redirect" and term.local_redirect.name == "dns" and list(term.pending_nodes) == ["n1"]
    [rep] = reported(server, term.id).reports
    assert (rep.trigger, rep.dry_run, rep.found, rep.destroyed, rep.error) == ("local-redirect", True, 1, 0, "")
    assert [(s.cookie, s.destination) for s in rep.sockets] == [(1, "10.0.0.53:53")]
    assert [(b.address, b.port) for b in rep.backends] == [("10.96.0.10", 53)]  # as the client addressed it
    assert list(server.api.ListLocalRedirects(api_pb2.ListRequest()).local_redirects) == []
    assert ("list", None) in t.calls and all(call[0] != "destroy" for call in t.calls)
    assert not [fe for fe in n1._programmed.frontends.values() if fe.service.startswith("redirect:")]
    # A cache whose cgroup is not on the node: the node would not program the redirect, nor move anything.
    server.api.PutWorkload(api_pb2.PutWorkloadRequest(workload=workload(
        "ghost", "n1", {"app": "ghost-dns"}, ["10.0.0.54"])))
    wait_for(lambda: len(n1.state().workloads) == 3, "the ghost workload")
    term = server.api.PreviewLocalRedirect(api_pb2.PutLocalRedirectRequest(local_redirect=redirect(
        "dns", {"app": "ghost-dns"}, "dns")))
    [rep] = reported(server, term.id).reports
    assert (rep.trigger, rep.found, rep.error) == ("local-redirect", 0, "")


def test_the_cli_dry_run_waits_for_the_nodes_and_shows_their_sockets(server, nodes, tmp_path, capsys):
    from socklb import cli
    f = tmp_path / "p1.yaml"
    f.write_text("name: p1\nselector: {app: client}\negress:\n"
                 "- {action: ACTION_ALLOW, to_services: [dns]}\n- {action: ACTION_ALLOW, to_cidrs: [192.168.0.0/16]}\n")
    assert cli.main(["--server", server.addr, "policy", "put", "--dry-run", "-f", str(f)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "trigger policy  (dry run)" in lines[0] and lines[1] == "preview of policy p1: nothing written"
    assert lines[2].startswith("found 1  destroyed 0  failed 0  pending -"), out
    row = next(line.split() for line in lines if line.startswith("n1 ") and "10.1.1.1:22" in line)
    # the socket, whose it is and why the previewed policy would end it
    assert row[4:8] == ["10.1.1.1:22", "listed", "client", "policy"], out
    assert row[-3:] == ["prefix", "holds", "10.1.1.1:22/tcp"], out
    assert cli.main(["--server", server.addr, "policy", "get", "p1"]) == 3


def test_a_node_whose_agent_does_not_answer_previews_is_answered_for(server):
    """An older agent (no policy_preview in its Hello) would take the command
    for a request about no service: it is not sent one, and the control
    plane reports for it."""
    from socklb.controlplane import terminations
    from socklb.dataplane import sync_client
    from test_policy_sync import connect
    assert terminations.PREVIEW_CAPABILITY == sync_client.PREVIEW_CAPABILITY
    server.api.PutService(api_pb2.PutServiceRequest(service=DNS))
    server.api.PutWorkload(api_pb2.PutWorkloadRequest(workload=CLIENT))
    old = connect(server, "n1")
    try:
        old.update()
        wait_for(lambda: [n.health for n in server.api.ListNodes(api_pb2.ListNodesRequest()).nodes] == [
            api_pb2.NODE_HEALTH_READY], "the node ready")
        term = server.api.PreviewPolicy(api_pb2.PutPolicyRequest(policy=P1))
        assert list(term.pending_nodes) == ["n1"]
        [rep] = reported(server, term.id).reports
        assert (rep.node, rep.trigger, rep.dry_run, rep.found) == ("n1", "policy", True, 0)
        assert rep.error == "this node's agent does not answer previews (older version)"
        assert old.inbox.empty()  # no command reached it
    finally:
        old.close()


def test_a_preview_reaches_nodes_served_by_another_replica(server, tmp_path):
    """The API's replica stores the request; the replica a node is connected
    to computes its part and sends it the preview."""
    from socklb.controlplane.server import ControlPlane
    server.api.PutService(api_pb2.PutServiceRequest(service=DNS))
    server.api.PutWorkload(api_pb2.PutWorkloadRequest(workload=CLIENT))
    other = ControlPlane(server.store, "r2", duty_interval=0.2)
    port = server.call(other.start("127.0.0.1:0"))
    t = FakeTerminator(SOCKETS)
    n1 = Agent(MemoryMapWriter(), "n1", terminations=TerminationService("n1", t),
               cgroups=MemoryCgroups({"socklb/client": Cgroup(7), "socklb/cache": Cgroup(9)}))
    client = SyncClient(n1, [f"127.0.0.1:{port}"], stats_interval=60)
    client.start()
    try:
        wait_for(lambda: [x.name for x in n1.state().workloads] == ["client"], "the workload on the node")
        wait_for(lambda: [(n.name, n.replica, n.health) for n in server.api.ListNodes(
            api_pb2.ListNodesRequest()).nodes] == [("n1", "r2", api_pb2.NODE_HEALTH_READY)], "n1 ready on r2")
        term = server.api.PreviewPolicy(api_pb2.PutPolicyRequest(policy=P1))
        assert list(term.pending_nodes) == ["n1"] and "n1" not in server.cp.sync.sessions
        [rep] = reported(server, term.id).reports
        assert (rep.node, rep.found, rep.error, rep.dry_run) == ("n1", 1, "", True)
        assert t.calls == [("list", {7})]
    finally:
        client.stop()
        n1.close()
        server.call(other.stop())


def test_a_part_the_control_plane_cannot_compute_is_reported_not_left_pending(server, nodes, monkeypatch):
    policy_cache = server.cp.cache.policy
    real, calls = policy_cache.preview, []

    def once(resource):  # the API's call works; the fan-out's fails
        calls.append(resource.name)
        if len(calls) > 1:
            raise RuntimeError("boom")
        return real(resource)
    monkeypatch.setattr(policy_cache, "preview", once)
    term = server.api.PreviewPolicy(api_pb2.PutPolicyRequest(policy=P1))
    [rep] = reported(server, term.id).reports
    assert rep.node == "n1" and rep.error == "the control plane could not compute this node's part: " \
                                             "RuntimeError('boom')"
