"""Compute and the snapshot cache: per-node entries, traffic policy LOCAL,
and updates that touch only the nodes and entries a change affects."""
from google.protobuf import json_format

from socklb.controlplane import compute
from socklb.controlplane.cache import SnapshotCache
from socklb.lb.digest import entries_digest, state_digest
from socklb.v1 import api_pb2, types_pb2


def svc(name, backends, policy=api_pb2.TRAFFIC_POLICY_CLUSTER, vip="127.96.0.10", port=80, **kw):
    s = json_format.ParseDict({"name": name, "frontends": [{"address": vip, "port": port}],
                               "backends": backends, **kw}, api_pb2.Service())
    s.traffic_policy = policy
    return s


B = [{"address": "10.0.0.1", "port": 80, "node": "n1"}, {"address": "10.0.0.2", "port": 80, "node": "n2"}]


def test_cluster_service_is_the_same_everywhere():
    s = svc("a", B)
    assert compute.node_service(s, "n1") == compute.node_service(s, "n2") == compute.shared_entry(s)


def test_local_policy_prefers_local_backends_and_falls_back():
    s = svc("a", B, policy=api_pb2.TRAFFIC_POLICY_LOCAL)
    assert compute.shared_entry(s) is None
    assert [b.address for b in compute.node_service(s, "n1").backends] == ["10.0.0.1"]
    assert [b.address for b in compute.node_service(s, "n3").backends] == ["10.0.0.1", "10.0.0.2"]
    # A node whose local backends are all draining uses every backend.
    s.backends[0].state = types_pb2.BACKEND_STATE_DRAINING
    assert len(compute.node_service(s, "n1").backends) == 2


def test_affinity_and_drain_deadline_on_node_entries():
    s = svc("a", B, affinity={"mode": "AFFINITY_MODE_CLIENT"})
    assert compute.node_service(s, None).affinity_timeout_seconds == compute.DEFAULT_AFFINITY_SECONDS
    s.backends[0].state = types_pb2.BACKEND_STATE_DRAINING
    before = compute.node_service(s, None)
    s.backends[0].drain_deadline.FromSeconds(2_000_000_000)
    assert compute.node_service(s, None) == before  # the deadline is not a node's business


def test_cache_update_of_a_cluster_service_is_shared_and_minimal():
    cache = SnapshotCache()
    others = [svc(f"s{i}", B, vip=f"127.96.1.{i}") for i in range(200)]
    cache.load(others, revision=10)
    upd = cache.apply([("s7", svc("s7", B[:1], vip="127.96.1.7"))], 11, nodes=["n1", "n2", "n3"])
    assert [e.name for e in upd.shared_upserts] == ["s7"] and not upd.per_node and not upd.removals
    # Re-writing the same content changes nothing.
    assert cache.apply([("s7", svc("s7", B[:1], vip="127.96.1.7"))], 12, nodes=["n1"]).empty()
    assert cache.apply([("s9", None)], 13, nodes=["n1"]).removals == ["s9"]
    assert "s9" not in cache.entries_for("n1")


def test_cache_update_of_a_local_service_touches_only_affected_nodes():
    cache = SnapshotCache()
    cache.load([svc("loc", B, policy=api_pb2.TRAFFIC_POLICY_LOCAL)], revision=1)
    nodes = ["n1", "n2", "n3"]
    for n in nodes:
        cache.entries_for(n)
    # Change n2's backend: n1 is unaffected; n3 (no local backend: sees all) is affected too.
    changed = B[:1] + [{"address": "10.0.0.9", "port": 80, "node": "n2"}]
    upd = cache.apply([("loc", svc("loc", changed, policy=api_pb2.TRAFFIC_POLICY_LOCAL))], 2, nodes)
    assert set(upd.per_node) == {"n2", "n3"} and not upd.shared_upserts


def test_policy_switch_goes_per_node():
    cache = SnapshotCache()
    cache.load([svc("a", B)], revision=1)
    upd = cache.apply([("a", svc("a", B, policy=api_pb2.TRAFFIC_POLICY_LOCAL))], 2, ["n1", "n3"])
    assert set(upd.per_node) == {"n1"}  # n3 has no local backend: its entry did not change
    upd = cache.apply([("a", svc("a", B))], 3, ["n1", "n3"])
    assert set(upd.per_node) == {"n1"}


def test_last_write_in_a_batch_wins():
    cache = SnapshotCache()
    cache.load([], revision=1)
    upd = cache.apply([("a", svc("a", B)), ("a", None)], 3, ["n1"])
    assert upd.empty()
    upd = cache.apply([("a", None), ("a", svc("a", B))], 4, ["n1"])
    assert [e.name for e in upd.shared_upserts] == ["a"]


def test_digest_ignores_version_and_order():
    cache = SnapshotCache()
    cache.load([svc("b", B, vip="127.96.0.2"), svc("a", B)], revision=5)
    entries = cache.entries_for("n1")
    st = compute.node_state(cache.services.values(), "n1", version=99)
    assert state_digest(st) == entries_digest(entries)
    st2 = compute.node_state(reversed(list(cache.services.values())), "n1", version=1)
    assert state_digest(st2) == state_digest(st)


def test_stats_aggregate_flows_and_socket_statistics_over_nodes():
    from socklb.controlplane.api import aggregate_stats
    from socklb.v1 import node_pb2, sync_pb2

    def report(flows, socks):
        r = sync_pb2.StatsReport()
        for svc, addr, n in flows:
            r.flows.add(service=svc, backend_address=addr, backend_port=80, active=n)
        for svc, addr, n, sent, rtt in socks:
            st = r.sockets.add(service=svc, backend_address=addr, backend_port=80,
                               protocol=types_pb2.PROTOCOL_TCP, sockets=n, bytes_sent=sent, srtt_us=rtt)
            st.states["ESTABLISHED"] = n
        return r

    reports = {"n1": report([("a", "10.0.0.1", 2)], [("a", "10.0.0.1", 2, 100, 10)]),
               "n2": report([("a", "10.0.0.1", 1), ("b", "10.0.0.9", 4)], [("a", "10.0.0.1", 1, 50, 40)])}
    out = aggregate_stats(reports)
    (a, b) = out.services
    assert (a.service, a.active_flows, b.active_flows) == ("a", 3, 4)
    (st,) = a.backends[0].sockets
    assert (st.sockets, st.bytes_sent, st.srtt_us, st.states["ESTABLISHED"]) == (3, 150, 20, 3)
    only = aggregate_stats(reports, service="b", node="n2")
    assert [s.service for s in only.services] == ["b"] and [n.node for n in only.nodes] == ["n2"]
