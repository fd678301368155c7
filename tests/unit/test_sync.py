"""The sync protocol end to end in one process: a real control plane (grpc.aio,
embedded store) and real sync clients whose agents program nothing."""
import asyncio
import threading
import time

import grpc
import pytest
from google.protobuf import json_format

from socklb.controlplane.server import ControlPlane
from socklb.controlplane.store import open_store
from socklb.dataplane.agent import Agent
from socklb.dataplane.sync_client import SyncClient
from socklb.dataplane.writer import MemoryMapWriter
from socklb.v1 import api_pb2, api_pb2_grpc, sync_pb2, sync_pb2_grpc, types_pb2


class Server:
    """A control plane on its own event loop thread."""

    def __init__(self, store_url, **cp_options):
        self.store = open_store(store_url)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cp = ControlPlane(self.store, "r1", **{"duty_interval": 0.2, **cp_options})
        self.port = self.call(self.cp.start("127.0.0.1:0"))
        self.addr = f"127.0.0.1:{self.port}"
        self.channel = grpc.insecure_channel(self.addr)
        self.api = api_pb2_grpc.LoadBalancerStub(self.channel)

    def call(self, coro, timeout=30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self):
        self.channel.close()
        self.call(self.cp.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.store.close()


def service(name, vip, backends, **kw):
    return json_format.ParseDict({"name": name, "frontends": [{"address": vip, "port": 80}],
                                  "backends": [{"address": a, "port": 80} for a in backends], **kw},
                                 api_pb2.Service())


def wait_for(pred, what, timeout=60.0):
    """Poll pred() until true; the bound only catches a hang (a busy machine is slow, not broken)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


def node(server, name, **kw):
    agent = Agent(MemoryMapWriter(), name)
    client = SyncClient(agent, [server.addr], stats_interval=kw.pop("stats_interval", 0.2), **kw)
    client.start()
    return agent, client


def backends_of(agent, svc):
    st = agent.state()
    return sorted(b.address for s in st.services if s.name == svc for b in s.backends)


def test_snapshot_then_deltas_reach_every_node(server):
    server.api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
    nodes = [node(server, f"n{i}") for i in range(3)]
    try:
        for agent, _ in nodes:
            wait_for(lambda: backends_of(agent, "a") == ["10.0.0.1"], "snapshot")
        r = server.api.AddBackends(api_pb2.AddBackendsRequest(
            service="a", backends=[types_pb2.Backend(address="10.0.0.2", port=80)]))
        for agent, _ in nodes:
            wait_for(lambda: agent.applied_version == r.resource_version, "delta applied")
            assert backends_of(agent, "a") == ["10.0.0.1", "10.0.0.2"]
        wait_for(lambda: all(n.applied_version == r.resource_version and n.health == api_pb2.NODE_HEALTH_READY
                             for n in server.api.ListNodes(api_pb2.ListNodesRequest()).nodes)
                 and len(server.api.ListNodes(api_pb2.ListNodesRequest()).nodes) == 3, "nodes READY")
        server.api.DeleteService(api_pb2.DeleteServiceRequest(name="a"))
        for agent, _ in nodes:
            wait_for(lambda: agent.state().services == [], "removal")
    finally:
        for _, c in nodes:
            c.stop()


def test_reconnect_with_same_state_needs_no_snapshot(server):
    r = server.api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
    agent, client = node(server, "n1")
    wait_for(lambda: agent.applied_version == r.resource_version, "first sync")
    client.stop()
    applied = []
    real_apply = agent.apply
    agent.apply = lambda st: applied.append(st) or real_apply(st)
    client2 = SyncClient(agent, [server.addr], stats_interval=0.2)
    client2.start()
    try:
        wait_for(lambda: client2.connected_to is not None, "reconnect")
        r2 = server.api.AddBackends(api_pb2.AddBackendsRequest(
            service="a", backends=[types_pb2.Backend(address="10.0.0.2", port=80)]))
        wait_for(lambda: agent.applied_version == r2.resource_version, "delta after resume")
        assert applied == []  # resumed by digest: no snapshot was needed
    finally:
        client2.stop()


def test_nack_leaves_the_node_on_its_last_good_state_and_shows_in_status(server):
    r = server.api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
    agent, client = node(server, "n1")
    try:
        wait_for(lambda: agent.applied_version == r.resource_version, "first sync")
        agent.limits = type(agent.limits)(backends=1)  # this node now holds only one backend
        r2 = server.api.AddBackends(api_pb2.AddBackendsRequest(
            service="a", backends=[types_pb2.Backend(address="10.0.0.2", port=80)]))
        def degraded():
            (n,) = server.api.ListNodes(api_pb2.ListNodesRequest()).nodes
            return n.health == api_pb2.NODE_HEALTH_DEGRADED and "backends map holds 1" in n.last_error
        wait_for(degraded, "NACK in node status")
        assert agent.applied_version == r.resource_version
        assert backends_of(agent, "a") == ["10.0.0.1"]
        assert r2.resource_version > r.resource_version
    finally:
        client.stop()


def test_a_hello_without_node_name_is_refused(server):
    stub = sync_pb2_grpc.NodeSyncStub(server.channel)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.Sync(iter([sync_pb2.NodeMessage(hello=sync_pb2.Hello())])))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "hello.node" in e.value.details()


def test_large_snapshot_arrives_in_chunks(server):
    for i in range(60):
        svc = service(f"s{i}", f"127.96.{i // 250}.{i % 250 + 1}", [f"10.1.{i}.{j}" for j in range(1, 200)])
        server.api.PutService(api_pb2.PutServiceRequest(service=svc))
    agent, client = node(server, "n1")
    try:
        wait_for(lambda: len(agent.state().services) == 60, "chunked snapshot", timeout=30)
        assert sum(len(s.backends) for s in agent.state().services) == 60 * 199
    finally:
        client.stop()


def test_stats_flow_back_to_the_api(server):
    agent, client = node(server, "n1")
    try:
        wait_for(lambda: [n.node for n in server.api.GetStats(api_pb2.GetStatsRequest()).nodes] == ["n1"],
                 "stats report stored")
    finally:
        client.stop()


def test_records_of_a_dead_replica_read_as_disconnected_then_gone(tmp_path):
    """A replica that dies cannot write "disconnected": its records go stale,
    and the leader turns them DISCONNECTED, then GONE."""
    from socklb.controlplane import keys
    from socklb.controlplane.nodes import NodeRegistry, is_stale, mark_gone
    from socklb.controlplane.store import Compare

    store = open_store(f"embedded://{tmp_path}/s")
    try:
        reg = NodeRegistry(store, "dead-replica", heartbeat=1.0)
        n = api_pb2.Node(name="n1", health=api_pb2.NODE_HEALTH_READY, replica="dead-replica")
        n.last_seen.FromSeconds(1000)
        store.txn([], [(keys.node("n1"), n.SerializeToString())])
        assert is_stale(n, reg.stale_after, now=1000 + reg.stale_after + 1)
        assert [x.health for x in reg.list(now=1000 + reg.stale_after + 1)] == [api_pb2.NODE_HEALTH_DISCONNECTED]
        lead = store.campaign("duties", "me", 5)
        wait_for(lead.is_leader, "leadership")
        # The leader itself was paused while n1 kept its stream to it: not marked.
        assert mark_gone(store, lead.fence(), timeout=60, stale_after=reg.stale_after, now=1010,
                         connected_here=frozenset({"n1"})) == []
        assert api_pb2.Node.FromString(store.get(keys.node("n1")).value).health == api_pb2.NODE_HEALTH_READY
        assert mark_gone(store, lead.fence(), timeout=60, stale_after=reg.stale_after, now=1010) == ["n1"]
        assert reg.list(now=1010)[0].health == api_pb2.NODE_HEALTH_DISCONNECTED
        # Its last statistics report counts while it is DISCONNECTED (it still forwards), not once GONE.
        report = sync_pb2.StatsReport()
        store.txn([], [(keys.stats("n1"), report.SerializeToString()),
                       (keys.stats("never-registered"), report.SerializeToString())])
        assert set(reg.list_stats()) == {"n1", "never-registered"}
        assert mark_gone(store, lead.fence(), timeout=60, stale_after=reg.stale_after, now=1100) == ["n1"]
        assert reg.list(now=1100)[0].health == api_pb2.NODE_HEALTH_GONE
        assert reg.list_stats() == {}, "a GONE node's report and an orphaned one are removed"
        # A fence that no longer holds writes nothing.
        assert mark_gone(store, Compare("/socklb/leader/none", -1), 60, reg.stale_after, now=2000) == []
        lead.close()
    finally:
        store.close()


def test_terminate_flows_reaches_every_node_and_collects_reports(server):
    server.api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
    nodes = [node(server, f"n{i}") for i in range(2)]
    try:
        wait_for(lambda: len([n for n in server.api.ListNodes(api_pb2.ListNodesRequest()).nodes
                              if n.health == api_pb2.NODE_HEALTH_READY]) == 2, "nodes ready")
        term = server.api.TerminateFlows(api_pb2.TerminateFlowsRequest(
            service="a", backends=[api_pb2.BackendRef(address="10.0.0.1", port=80)], dry_run=True))
        assert term.id.startswith("t-") and sorted(term.pending_nodes) == ["n0", "n1"]

        def reported():
            t = server.api.GetTermination(api_pb2.GetTerminationRequest(id=term.id))
            return sorted(r.node for r in t.reports) == ["n0", "n1"] and not t.pending_nodes
        wait_for(reported, "reports from both nodes")
        t = server.api.GetTermination(api_pb2.GetTerminationRequest(id=term.id))
        # These nodes program no datapath: they say so instead of pretending.
        assert all(r.error and r.trigger == "request" and r.dry_run for r in t.reports)
        listed = server.api.ListTerminations(api_pb2.ListTerminationsRequest(service="a")).terminations
        assert [x.id for x in listed] == [term.id]
        with pytest.raises(grpc.RpcError) as e:
            server.api.TerminateFlows(api_pb2.TerminateFlowsRequest(service="nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as e:
            server.api.GetTermination(api_pb2.GetTerminationRequest(id="t-none"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for _, c in nodes:
            c.stop()


def test_keep_sockets_reaches_nodes_as_keep_flows(server):
    server.api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1", "10.0.0.2"])))
    agent, client = node(server, "n1")
    try:
        r = server.api.RemoveBackends(api_pb2.RemoveBackendsRequest(
            service="a", backends=[api_pb2.BackendRef(address="10.0.0.2", port=80)], keep_sockets=True))
        assert [(b.address, b.port) for b in r.released] == [("10.0.0.2", 80)]
        wait_for(lambda: agent.applied_version == r.resource_version, "delta")
        (entry,) = agent.state().services
        assert [(k.address, k.port) for k in entry.keep_flows] == [("10.0.0.2", 80)]
        # Adding it back forgets the release; a plain put keeps what is stored.
        r2 = server.api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
        assert [(b.address, b.port) for b in r2.released] == [("10.0.0.2", 80)]
        r3 = server.api.AddBackends(api_pb2.AddBackendsRequest(
            service="a", backends=[types_pb2.Backend(address="10.0.0.2", port=80)]))
        assert list(r3.released) == []
    finally:
        client.stop()


def test_node_deltas_are_checked_and_applied_incrementally():
    """A delta is validated against the rest of the state without re-reading
    it: duplicates with untouched services, capacity, and the same result as
    the full state would give."""
    from socklb.dataplane.desired import Limits
    from socklb.lb.errors import InvalidState
    from socklb.v1 import node_pb2

    def st(name, vip, backends):
        return json_format.ParseDict({"name": name, "frontends": [{"address": vip, "port": 80}],
                                      "backends": [{"address": b, "port": 80} for b in backends]},
                                     node_pb2.ServiceState())

    agent = Agent(MemoryMapWriter(Limits(backends=6)), "n")
    agent.apply(node_pb2.NodeState(version=1, services=[st(f"s{i}", f"127.96.0.{i}", ["10.0.0.1"])
                                                        for i in range(1, 5)]))
    before = agent.state()
    bad = [
        (node_pb2.NodeStateDelta(from_version=1, version=2, upserts=[st("x", "127.96.0.2", ["10.0.0.9"])]),
         "upserts[0].frontends"),
        (node_pb2.NodeStateDelta(from_version=1, version=2, upserts=[st("s1", "127.96.0.1", ["10.0.0.1", "10.0.0.2",
                                                                                               "10.0.0.3", "10.0.0.4"])]),
         "services"),
        (node_pb2.NodeStateDelta(from_version=7, version=8), "from_version"),
        (node_pb2.NodeStateDelta(from_version=1, version=2, upserts=[st("", "127.96.0.9", [])]), "upserts[0].name"),
    ]
    for delta, field in bad:
        with pytest.raises(InvalidState) as e:
            agent.apply_delta(delta)
        assert e.value.field == field, str(e.value)
        assert agent.state() == before
    # Moving a VIP between services in one delta is fine; removing frees it.
    agent.apply_delta(node_pb2.NodeStateDelta(from_version=1, version=2, removals=["s2"],
                                              upserts=[st("x", "127.96.0.2", ["10.0.0.9"]),
                                                       st("s1", "127.96.0.1", ["10.0.0.1", "10.0.0.2"])]))
    full = Agent(MemoryMapWriter(), "m")
    full.apply(agent.state())
    def view(a):  # ids differ (allocation history); addresses must not
        p = a.catalog.current().programmed
        return {k: (f.service, [p.backends[i].addr for i in f.slots]) for k, f in p.frontends.items()}
    assert view(agent) == view(full)
    assert agent._totals == full._totals
    assert [s.name for s in agent.state().services] == ["s1", "s3", "s4", "x"]


def test_a_state_the_node_cannot_apply_is_nacked_without_losing_the_stream(server):
    """A service written to the store past validation (e.g. straight into
    etcd) with more backends than a node takes: the node NACKs it with the
    reason, keeps its stream, takes later changes to the other services
    (without the bad one, still DEGRADED), and the change that fixes it. The
    refused snapshot is not sent again until the next change."""
    from socklb.controlplane import keys

    r = server.api.PutService(api_pb2.PutServiceRequest(service=service("a", "127.96.0.10", ["10.0.0.1"])))
    agent, client = node(server, "n1")
    try:
        wait_for(lambda: agent.applied_version == r.resource_version, "first sync")
        stream = client.connected_to
        snapshots = []  # versions of the full states the node applied
        real_apply = agent.apply
        agent.apply = lambda st, **kw: snapshots.append(st.version) or real_apply(st, **kw)
        bad = service("big", "127.96.0.11", [f"10.1.{i >> 8}.{i & 255}" for i in range(5000)])
        bad_version = server.store.txn([], puts=[(keys.service("big"), bad.SerializeToString())])
        assert bad_version is not None

        def record():
            (n,) = server.api.ListNodes(api_pb2.ListNodesRequest()).nodes
            return n

        # The delta is refused first (its error names `upserts[0]`); the snapshot that follows is
        # applied without the service and refused with the reason: wait for that answer.
        snapshot_refused = f"version {bad_version}: applied without 1 service(s) it cannot take: services["
        wait_for(lambda: record().last_error.startswith(snapshot_refused), "the snapshot's NACK")
        n = record()
        assert n.health == api_pb2.NODE_HEALTH_DEGRADED and "].backends: 5000 backends: more than 4096" in \
            n.last_error, n
        assert backends_of(agent, "a") == ["10.0.0.1"] and "big" not in {s.name for s in agent.state().services}
        assert n.applied_version == r.resource_version  # the control plane sees the node behind
        assert client.connected_to == stream  # no reconnect loop

        # A later change reaches the node (as a snapshot: it diverged) while the bad service is still
        # there; the node takes it without the bad one and stays DEGRADED, naming it.
        r2 = server.api.AddBackends(api_pb2.AddBackendsRequest(
            service="a", backends=[types_pb2.Backend(address="10.0.0.2", port=80)]))
        wait_for(lambda: record().last_error.startswith(f"version {r2.resource_version}: applied without 1 "),
                 "the later change's NACK")
        assert backends_of(agent, "a") == ["10.0.0.1", "10.0.0.2"]
        assert "big" not in {s.name for s in agent.state().services}
        n = record()
        assert n.health == api_pb2.NODE_HEALTH_DEGRADED and "more than 4096" in n.last_error, n
        assert n.applied_version == r.resource_version
        assert client.connected_to == stream
        # The refused snapshot was sent once, not again and again until the next change.
        assert snapshots == [bad_version, r2.resource_version]

        fixed = server.api.DeleteService(api_pb2.DeleteServiceRequest(name="big"))
        wait_for(lambda: agent.applied_version == fixed.revision, "the fixing change applied")
        wait_for(lambda: record().health == api_pb2.NODE_HEALTH_READY, "node ready again")
        assert record().applied_version == fixed.revision
    finally:
        client.stop()


def test_hand_encoded_nonce_is_what_protobuf_writes():
    """Every delta's nonce is joined as bytes (sync._nonce_bytes): the same
    bytes protobuf writes, for every length class of the varint."""
    from socklb.controlplane.sync import _nonce_bytes

    for nonce in ["", "r1-1", "x" * 127, "y" * 128, "z" * 300, "é" * 70, "q" * 20000]:
        assert _nonce_bytes(nonce) == sync_pb2.ControlMessage(nonce=nonce).SerializeToString()
