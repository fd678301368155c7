"""End to end: a local redirect written with the API applies only on the
node that runs a matching workload (issue 12, "Local redirect"): there the
open connection to the service moves to the local workload (trigger
local-redirect, listed by `socklb termination list`), the local workload
itself still reaches the service, and the other node keeps the service as
it is; deleting the redirect moves the connection back. The embedded store
only: the path under test is the same on etcd."""
from __future__ import annotations

import pytest

import netenv
from e2e_cluster import RPC_DEADLINE, poll
from test_e2e_policy import DEAD_TCP, socklb

from socklb.v1 import api_pb2, policy_pb2

WAIT = 120.0  # the first termination may wait for the node's termination programs to load


def one(client, addr: str, port: int) -> str:
    r = client.call("tcp_many", addr=addr, port=port, n=1)
    assert r["errors"] == {} and len(r["counts"]) == 1, r
    return next(iter(r["counts"]))


@pytest.mark.parametrize("cluster", ["embedded"], indirect=True)
def test_a_redirect_applies_only_on_the_node_with_a_local_workload(cluster):
    api = cluster.cp.api
    near, far = cluster.nodes
    vip, port = cluster.vip()
    name = f"e2e-rd-{cluster.index}"
    remote = cluster.backend("cluster-svc", "127.0.0.41")
    cache = cluster.backend("local-cache", "127.0.0.42")
    cache_cg, app_cg, far_cg = (near.cgroup.child("e2e-rd-cache"), near.cgroup.child("e2e-rd-app"),
                                far.cgroup.child("e2e-rd-app"))
    clients = []
    try:
        cluster.put_service(name, vip, port, [remote])
        app, cache_proc, far_app = (netenv.Client(cg) for cg in (app_cg, cache_cg, far_cg))
        clients += [app, cache_proc, far_app]
        for c in clients:
            r = poll(lambda c=c: c.call("tcp_open", id="svc", addr=vip, port=port), WAIT)
            assert r.get("backend") == remote.label, r
        api.PutWorkload(api_pb2.PutWorkloadRequest(workload=policy_pb2.Workload(
            name="e2e/local-cache", node=near.name, cgroup=cache_cg.rel.lstrip("/"),
            labels={"app": "e2e-local-cache"}, addresses=[cache.addr])), timeout=RPC_DEADLINE)
        rd = api.PutLocalRedirect(api_pb2.PutLocalRedirectRequest(local_redirect=policy_pb2.LocalRedirect(
            name="e2e-node-local", service=name, selector={"app": "e2e-local-cache"}, backend_port=cache.port)),
            timeout=RPC_DEADLINE)
        cluster.wait_applied(rd.resource_version, nodes=[near])

        # The near node: the app's connection is taken over, new ones go to the cache.
        assert poll(lambda: app.call("tcp_ping", id="svc").get("error") == DEAD_TCP, WAIT)
        assert one(app, vip, port) == cache.label
        # The cache itself still reaches the service, its connection untouched.
        assert cache_proc.call("tcp_ping", id="svc").get("backend") == remote.label
        assert one(cache_proc, vip, port) == remote.label
        # The far node has no local workload: the service as it is, nothing redirected programmed.
        assert far_app.call("tcp_ping", id="svc").get("backend") == remote.label
        assert one(far_app, vip, port) == remote.label
        assert not [f for f in far.services() if f.get("service", "").startswith("redirect:")]
        assert [f["service"] for f in near.services() if f.get("service", "").startswith("redirect:")] == [
            "redirect:e2e-node-local"]

        term_id = f"v{rd.resource_version}-local-redirect"

        def listed() -> list[str] | None:
            rows = [line.split() for line in socklb(cluster, "termination", "list").splitlines()]
            return next((row for row in rows if row and row[0] == term_id), None)
        row = poll(listed, WAIT)
        # ID SERVICE TRIGGER DRY-RUN NODES FOUND DESTROYED: the near node alone
        assert row and row[2:7] == ["local-redirect", "no", "1", "1", "1"], row

        # Delete: the app's connection to the cache ends, new ones reach the service.
        r = app.call("tcp_open", id="local", addr=vip, port=port)
        assert r.get("backend") == cache.label, r
        gone = api.DeleteLocalRedirect(api_pb2.DeleteRequest(name="e2e-node-local"), timeout=RPC_DEADLINE)
        cluster.wait_applied(gone.revision, nodes=[near])
        assert poll(lambda: app.call("tcp_ping", id="local").get("error") == DEAD_TCP, WAIT)
        assert one(app, vip, port) == remote.label
        assert cache_proc.call("tcp_ping", id="svc").get("backend") == remote.label
    finally:
        for c in clients:
            c.close()
        for call, rname in ((api.DeleteLocalRedirect, "e2e-node-local"), (api.DeleteWorkload, "e2e/local-cache")):
            try:
                call(api_pb2.DeleteRequest(name=rname), timeout=RPC_DEADLINE)
            except Exception:  # already deleted by the test
                pass
        for cg in (cache_cg, app_cg, far_cg):
            cg.remove()
