"""End to end on a real etcd (Debian's etcd-server):

- a second control-plane replica on the same etcd serves the same state, and
  a node connected to it takes a change written through the first (and the
  other way round);
- a node given both replicas fails over when its replica dies, without a
  failed connection;
- etcd restarted (stopped, started on the same data dir): the control plane
  recovers without operator action and the nodes never stop balancing.
"""
from __future__ import annotations

import grpc
import pytest

from e2e_cluster import LOOP_INTERVAL, RPC_DEADLINE, assert_reach_only, code_of, retry_unavailable, wait_progress
from socklb.v1 import api_pb2

ETCD = pytest.mark.parametrize("cluster", ["etcd"], indirect=True)


def by_name(services: dict) -> dict:
    return {name: svc.SerializeToString(deterministic=True) for name, svc in services.items()}


@ETCD
def test_second_replica_serves_the_same_state(cluster):
    a = cluster.backend("backend-a", "127.0.0.31")
    b = cluster.backend("backend-b", "127.0.0.32")
    vip, port = cluster.vip()
    svc = cluster.put_service("e2e-replicas", vip, port, [a])
    cluster.wait_applied(svc.resource_version)

    r1 = cluster.cp
    r2 = cluster.add_replica("etcd-r2")
    # Both replicas list the same services, resource versions included.
    listed1, listed2 = cluster.list_services(r1), cluster.list_services(r2)
    assert "e2e-replicas" in listed2
    assert listed2["e2e-replicas"].resource_version == svc.resource_version
    assert by_name(listed1) == by_name(listed2)
    got = r2.api.GetService(api_pb2.GetServiceRequest(name="e2e-replicas"), timeout=RPC_DEADLINE)
    assert got == listed1["e2e-replicas"]

    # A third node that knows only replica 2: it gets the current state from it,
    # and replica 1 sees it (node status lives in the store).
    n3 = cluster.add_node("node-3", [r2.addr])
    cluster.wait_nodes_ready([n3], version=svc.resource_version, replica=r2.replica, cp=r1)
    cluster.wait_nodes_ready([n3], version=svc.resource_version, replica=r2.replica, cp=r2)
    c3 = cluster.client(n3)
    assert_reach_only(c3, vip, port, a, where=n3.name)

    everyone = cluster.nodes + [n3]
    clients = [cluster.client(n) for n in cluster.nodes] + [c3]

    # Written through replica 1: reaches node 3 (on replica 2) and nodes 1, 2.
    moved = cluster.set_backends("e2e-replicas", [b], cp=r1)
    cluster.wait_applied(moved.resource_version, nodes=everyone)
    for node, c in zip(everyone, clients):
        assert_reach_only(c, vip, port, b, where=node.name)

    # Written through replica 2: reaches nodes 1 and 2 (on replica 1) and node 3.
    back = cluster.set_backends("e2e-replicas", [a], cp=r2)
    assert back.resource_version > moved.resource_version
    cluster.wait_applied(back.resource_version, nodes=everyone)
    for node, c in zip(everyone, clients):
        assert_reach_only(c, vip, port, a, where=node.name)

    # Each replica reports every node, on the replica it is connected to.
    for cp in (r1, r2):
        nodes = cluster.list_nodes(cp)
        assert {n: nodes[n].replica for n in ("node-1", "node-2", "node-3")} == {
            "node-1": r1.replica, "node-2": r1.replica, "node-3": r2.replica}, nodes


@ETCD
def test_etcd_restart_controlplane_recovers_without_operator(cluster):
    a = cluster.backend("backend-a", "127.0.0.33")
    b = cluster.backend("backend-b", "127.0.0.34")
    vip, port = cluster.vip()
    svc = cluster.put_service("e2e-etcd-restart", vip, port, [a])
    cluster.wait_applied(svc.resource_version)
    cp_pid = cluster.cp.pid

    clients = [cluster.client(n) for n in cluster.nodes]
    for c in clients:
        c.call("loop_start", addr=vip, port=port, max=1_000_000, interval=LOOP_INTERVAL)
    wait_progress(clients, 20)

    assert cluster.etcd.stop(), "etcd did not stop on SIGTERM"
    # While etcd is down, a write is refused as UNAVAILABLE (nothing written)...
    with pytest.raises(grpc.RpcError) as err:
        cluster.set_backends("e2e-etcd-restart", [b])
    assert code_of(err.value) == grpc.StatusCode.UNAVAILABLE, (code_of(err.value), err.value.details())
    # ...and the nodes keep balancing.
    wait_progress(clients, 20)

    cluster.etcd.start()
    # No operator action: the same control-plane process takes writes again.
    moved, attempts = retry_unavailable(lambda: cluster.set_backends("e2e-etcd-restart", [b]))
    assert moved.resource_version > svc.resource_version
    assert [(x.address, x.port) for x in moved.backends] == [(b.addr, b.port)]
    # ...and its store watch delivers the change to both nodes.
    cluster.wait_applied(moved.resource_version)
    assert cluster.cp.running() and cluster.cp.pid == cp_pid

    wait_progress(clients, 20)
    for node, c in zip(cluster.nodes, clients):
        r = c.call("loop_stop")
        assert r["failed"] == 0 and r["errors"] == {}, (node.name, r)
        assert set(r["counts"]) <= {a.label, b.label}, (node.name, r)
        assert_reach_only(c, vip, port, b, where=node.name)


@ETCD
def test_node_fails_over_to_the_other_replica(cluster):
    """A node given both replicas keeps balancing when the one it is connected
    to dies, reconnects to the other, and takes the next change from it."""
    a = cluster.backend("backend-a", "127.0.0.35")
    b = cluster.backend("backend-b", "127.0.0.36")
    vip, port = cluster.vip()
    svc = cluster.put_service("e2e-failover", vip, port, [a])
    r2 = cluster.add_replica("etcd-r2")
    n3 = cluster.add_node("node-3", [cluster.cp.addr, r2.addr])
    cluster.wait_nodes_ready([n3], version=svc.resource_version, cp=r2)
    replicas = {cluster.cp.replica: cluster.cp, r2.replica: r2}
    first = cluster.list_nodes(r2)["node-3"].replica
    assert first in replicas, first
    victim = replicas.pop(first)
    (survivor,) = replicas.values()

    c3 = cluster.client(n3)
    c3.call("loop_start", addr=vip, port=port, max=1_000_000, interval=LOOP_INTERVAL)
    wait_progress([c3], 20)
    victim.kill()
    cluster.wait_nodes_ready([n3], version=svc.resource_version, replica=survivor.replica, cp=survivor)
    wait_progress([c3], 50)
    r = c3.call("loop_stop")
    assert r["failed"] == 0 and r["errors"] == {} and set(r["counts"]) == {a.label}, r

    moved = cluster.set_backends("e2e-failover", [b], cp=survivor)
    cluster.wait_nodes_ready([n3], version=moved.resource_version, replica=survivor.replica, cp=survivor)
    assert_reach_only(c3, vip, port, b, where=n3.name)
