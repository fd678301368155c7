"""End to end, on both stores: a control plane and two nodes (two agents,
each on its own test cgroup and pin dir), clients inside each node's cgroup,
backends on loopback, loopback VIPs (127.96.x.y) only.

- an API change moves the traffic of both nodes;
- the control plane killed: open and new connections keep working;
- the control plane restarted on the same store: the nodes resync with no
  disruption and take the next change.
"""
from __future__ import annotations

import re

import pytest

from e2e_cluster import LOOP_INTERVAL, assert_reach_only, poll, wait_progress

STORES = pytest.mark.parametrize("cluster", ["embedded", "etcd"], indirect=True)


@STORES
def test_api_change_moves_traffic_on_both_nodes(cluster):
    a = cluster.backend("backend-a", "127.0.0.21")
    b = cluster.backend("backend-b", "127.0.0.22")
    vip, port = cluster.vip()

    svc = cluster.put_service("e2e-move", vip, port, [a])
    assert svc.resource_version > 0
    cluster.wait_applied(svc.resource_version)
    clients = [cluster.client(n) for n in cluster.nodes]
    for node, c in zip(cluster.nodes, clients):
        assert_reach_only(c, vip, port, a, where=node.name)

    moved = cluster.set_backends("e2e-move", [b])
    assert moved.resource_version > svc.resource_version
    assert [(x.address, x.port) for x in moved.backends] == [(b.addr, b.port)]
    cluster.wait_applied(moved.resource_version)
    for node, c in zip(cluster.nodes, clients):
        assert_reach_only(c, vip, port, b, where=node.name)
        info = node.info()  # `dump info -o json`
        assert info["node"] == node.name and int(info["appliedVersion"]) >= moved.resource_version, info
        # and the node's maps hold B alone for this frontend (A was removed)
        fe = [f for f in node.services() if f["service"] == "e2e-move"]
        assert len(fe) == 1, (node.name, fe)
        owned = {(x["address"], x["port"]) for x in node.dump("backends").get("backends", [])
                 if x["frontendId"] == fe[0]["id"]}
        assert owned == {(b.addr, b.port)}, (node.name, owned)


def count_lines(node, pattern: str, since: int) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in node.log_text(since).splitlines() if rx.search(line))


@STORES
def test_controlplane_killed_open_and_new_connections_keep_working(cluster):
    a = cluster.backend("backend-a", "127.0.0.23")
    b = cluster.backend("backend-b", "127.0.0.24")
    vip, port = cluster.vip()
    svc = cluster.put_service("e2e-kill", vip, port, [a, b])
    cluster.wait_applied(svc.resource_version)
    clients = [cluster.client(n) for n in cluster.nodes]
    opened = []
    for node, c in zip(cluster.nodes, clients):
        r = c.call("tcp_open", id="pre", addr=vip, port=port)
        assert "error" not in r and r["backend"] in (a.label, b.label), (node.name, r)
        opened.append(r["backend"])
    marks = [n.log_len() for n in cluster.nodes]

    cluster.cp.kill()
    assert not cluster.cp.running()
    # The nodes lost their stream and are retrying: two failed attempts each
    # (the loss, then a reconnect that found nobody).
    lost = r"control plane \S+: (UNAVAILABLE|CANCELLED|INTERNAL|UNKNOWN|not reachable)"
    assert poll(lambda: all(count_lines(n, lost, m) >= 2 for n, m in zip(cluster.nodes, marks)), 60), \
        [n.log_text(m) for n, m in zip(cluster.nodes, marks)]

    for node, c, first in zip(cluster.nodes, clients, opened):
        # the connection opened before still works
        r = c.call("tcp_ping", id="pre")
        assert r.get("error") is None and r["backend"] == first, (node.name, r)
        # new connections keep being balanced: no failure at all
        r = c.call("tcp_many", addr=vip, port=port, n=200)
        assert r["errors"] == {}, (node.name, r)
        assert sum(r["counts"].values()) == 200 and set(r["counts"]) <= {a.label, b.label}, (node.name, r)
        r = c.call("tcp_ping", id="pre")
        assert r.get("error") is None and r["backend"] == first, (node.name, r)
        c.call("close", id="pre")
        assert node.running(), f"{node.name} exited without its control plane:\n{node.log_text()}"
        assert [f["service"] for f in node.services()].count("e2e-kill") == 1, node.services()


@STORES
@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_controlplane_restart_resyncs_without_disruption(cluster, stop):
    a = cluster.backend("backend-a", "127.0.0.25")
    b = cluster.backend("backend-b", "127.0.0.26")
    vip, port = cluster.vip()
    svc = cluster.put_service("e2e-restart", vip, port, [a])
    cluster.wait_applied(svc.resource_version)
    def programmed(node):
        return [f for f in node.services() if f["service"] == "e2e-restart"]

    before = {n.name: programmed(n) for n in cluster.nodes}
    assert all(len(fe) == 1 for fe in before.values()), before

    clients = [cluster.client(n) for n in cluster.nodes]
    for c in clients:
        c.call("loop_start", addr=vip, port=port, max=1_000_000, interval=LOOP_INTERVAL)
    wait_progress(clients, 20)

    old = cluster.cp.replica
    if stop == "SIGKILL":
        cluster.cp.kill()
    else:
        assert cluster.cp.stop(), f"the control plane did not exit on SIGTERM:\n{cluster.cp.output()}"
    wait_progress(clients, 20)  # balanced by the nodes alone
    cluster.restart_cp()
    assert cluster.cp.replica != old
    # Both nodes reconnect to the new process and are READY on the current version.
    cluster.wait_nodes_ready(cluster.nodes, version=svc.resource_version, replica=cluster.cp.replica)
    wait_progress(clients, 50)

    for node, c in zip(cluster.nodes, clients):
        r = c.call("loop_stop")
        assert r["failed"] == 0 and r["errors"] == {}, (node.name, r)
        assert r["ok"] > 0 and set(r["counts"]) == {a.label}, (node.name, r)
        # the resync did not reprogram anything (same frontend ids and slots)
        assert programmed(node) == before[node.name], node.name

    # A change after the restart reaches both nodes.
    moved = cluster.set_backends("e2e-restart", [b])
    cluster.wait_applied(moved.resource_version)
    for node, c in zip(cluster.nodes, clients):
        assert_reach_only(c, vip, port, b, where=node.name)


@pytest.mark.parametrize("cluster", ["embedded"], indirect=True)
def test_stats_show_open_flows_per_backend(cluster):
    """What `socklb stats` shows after traffic through a VIP: the open flows
    of every node per backend, read in the kernel by the way each node took
    (node list names it); closed connections leave the counts."""
    from socklb.v1 import api_pb2

    a = cluster.backend("backend-a", "127.0.0.25")
    b = cluster.backend("backend-b", "127.0.0.26")
    vip_a, port_a = cluster.vip()
    vip_b, port_b = cluster.vip()
    cluster.put_service("e2e-stats-a", vip_a, port_a, [a])
    svc = cluster.put_service("e2e-stats-b", vip_b, port_b, [b])
    cluster.wait_applied(svc.resource_version)
    clients = [cluster.client(n) for n in cluster.nodes]
    opened = {0: [("a", vip_a, port_a)] * 3 + [("b", vip_b, port_b)], 1: [("a", vip_a, port_a)] * 2}
    for i, conns in opened.items():
        for j, (_, vip, port) in enumerate(conns):
            r = clients[i].call("tcp_open", id=f"c{j}", addr=vip, port=port)
            assert "error" not in r, r

    def flows():
        stats = cluster.cp.api.GetStats(api_pb2.GetStatsRequest())
        per = {(s.service, x.address, x.port): x.active_flows for s in stats.services for x in s.backends
               if s.service.startswith("e2e-stats")}
        nodes = {n.node: (n.active_flows, dict(n.unavailable)) for n in stats.nodes}
        return per, nodes

    want = {("e2e-stats-a", a.addr, a.port): 5, ("e2e-stats-b", b.addr, b.port): 1}
    assert poll(lambda: flows()[0] == want, 30), flows()
    _, nodes = flows()
    assert nodes == {cluster.nodes[0].name: (4, {}), cluster.nodes[1].name: (2, {})}, nodes
    listed = {n.name: n for n in cluster.cp.api.ListNodes(api_pb2.ListNodesRequest()).nodes}
    for node in cluster.nodes:
        caps = listed[node.name].capabilities
        assert caps["flows"] in ("map-iter", "socket-iter"), dict(caps)
        assert caps["flows"] == ("map-iter" if caps["map_elem_iter"] == "yes" else "socket-iter"), dict(caps)
        assert not listed[node.name].stats_unavailable, listed[node.name]

    for i, conns in opened.items():
        for j in range(len(conns)):
            clients[i].call("close", id=f"c{j}")
    assert poll(lambda: not any(flows()[0].values()), 30), flows()
