"""End to end: a policy previewed with the API (PreviewPolicy, `socklb
policy put --dry-run`) is judged by the real node whose workload it selects
against its real open sockets: the node reports exactly the sockets the
policy would end (an open TCP connection and a connected UDP socket), and
nothing changes: the sockets stay open and usable, the node's policy maps
and applied version are as before, no policy is stored (issue 12, the
`--dry-run` bullet). A redirect preview is answered by the node that would
serve it, with the open socket the redirect would take over (left open). The embedded store
only: the path under test is the same on etcd."""
from __future__ import annotations

import uuid

import grpc
import pytest

import netenv
from e2e_cluster import RPC_DEADLINE, poll
from test_e2e_policy import socklb

from socklb.v1 import api_pb2, policy_pb2, types_pb2


def kernel_view(node) -> tuple:
    """What the node's maps and state say about policy, and its version."""
    return node.dump("policy"), node.dump("workloads"), node.applied_version()


@pytest.mark.parametrize("cluster", ["embedded"], indirect=True)
def test_a_policy_preview_reports_exactly_the_sockets_it_would_end_and_ends_none(cluster, tmp_path):
    api = cluster.cp.api
    node, other = cluster.nodes[0], cluster.nodes[1]
    tag = uuid.uuid4().hex[:10]  # parallel runs select their own workloads only
    allowed = cluster.backend("allowed", "127.0.0.41")
    denied = cluster.backend("denied", "127.0.0.42")
    dns = netenv.Backend("dns", "127.0.0.43", proto="udp")
    cluster.backends.append(dns)  # stopped by the cluster's cleanup, whatever happens here
    cg = node.cgroup.child(f"e2e-preview-{tag}")
    client = netenv.Client(cg)
    workload = f"e2e/preview-{tag}"
    try:
        for sid, b in (("ok", allowed), ("no", denied)):
            assert client.call("tcp_open", id=sid, addr=b.addr, port=b.port).get("backend") == b.label
        assert client.call("udp_open", id="udp", addr=dns.addr, port=dns.port).get("backend") == "dns"
        w = api.PutWorkload(api_pb2.PutWorkloadRequest(workload=policy_pb2.Workload(
            name=workload, node=node.name, cgroup=cg.rel.lstrip("/"), labels={"preview": tag})),
            timeout=RPC_DEADLINE)
        cluster.wait_applied(w.resource_version, nodes=[node])  # the other node's state does not change
        before = kernel_view(node)
        config = api.ListPolicies(api_pb2.ListRequest(), timeout=RPC_DEADLINE).policies

        pol = policy_pb2.Policy(name=f"e2e-preview-{tag}", selector={"preview": tag}, egress=[policy_pb2.EgressRule(
            action=policy_pb2.ACTION_ALLOW, to_cidrs=[f"{allowed.addr}/32"])])
        term = api.PreviewPolicy(api_pb2.PutPolicyRequest(policy=pol), timeout=RPC_DEADLINE)
        assert term.dry_run and term.trigger == "policy" and list(term.pending_nodes) == [node.name]
        got = poll(lambda: (t := api.GetTermination(api_pb2.GetTerminationRequest(id=term.id),
                                                     timeout=RPC_DEADLINE)).reports and t, 30)
        assert got, "no report from the node"
        [rep] = got.reports  # the other node's state would not change: it was not asked
        assert rep.node == node.name and other.name not in got.pending_nodes and not got.pending_nodes
        assert (rep.trigger, rep.dry_run, rep.error, rep.destroyed) == ("policy", True, "", 0), rep
        shown = {(s.protocol, s.destination, s.state) for s in rep.sockets}
        assert shown == {(types_pb2.PROTOCOL_TCP, f"{denied.addr}:{denied.port}", "ESTABLISHED"),
                         (types_pb2.PROTOCOL_UDP, f"{dns.addr}:{dns.port}", "CONNECTED")}, rep
        assert rep.found == 2

        # Nothing ended, nothing changed: the sockets still work, the maps and the store are as before.
        assert client.call("tcp_ping", id="no").get("backend") == denied.label
        assert client.call("tcp_ping", id="ok").get("backend") == allowed.label
        assert client.call("udp_ping", id="udp").get("backend") == "dns"
        assert kernel_view(node) == before
        assert api.ListPolicies(api_pb2.ListRequest(), timeout=RPC_DEADLINE).policies == config
        with pytest.raises(grpc.RpcError) as e:
            api.GetPolicy(api_pb2.GetRequest(name=pol.name), timeout=RPC_DEADLINE)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND

        # The CLI: the same preview from a file, waiting for the node's answer.
        f = tmp_path / "policy.yaml"
        f.write_text(f"name: {pol.name}\nselector: {{preview: '{tag}'}}\n"
                     f"egress: [{{action: ACTION_ALLOW, to_cidrs: ['{allowed.addr}/32']}}]\n")
        out = socklb(cluster, "policy", "put", "--dry-run", "--wait", "30", "-f", str(f))
        assert f"preview of policy {pol.name}: nothing written" in out and "pending -" in out, out
        rows = [line.split() for line in out.splitlines() if line.startswith(node.name + " ")]
        # NODE NETNS STATE SOURCE DESTINATION RESULT WORKLOAD REASON...
        assert all(row[6] == workload for row in rows if row[5:6] == ["listed"]), out
        assert sorted(row[4] for row in rows if row[5:6] == ["listed"]) == sorted(
            [f"{denied.addr}:{denied.port}", f"{dns.addr}:{dns.port}"]), out
        assert client.call("tcp_ping", id="no").get("backend") == denied.label
        assert kernel_view(node) == before
    finally:
        client.close()
        api.DeleteWorkload(api_pb2.DeleteRequest(name=workload), timeout=RPC_DEADLINE)
        cg.remove()


@pytest.mark.parametrize("cluster", ["embedded"], indirect=True)
def test_a_redirect_preview_lists_the_socket_it_would_take_over_and_ends_none(cluster):
    """The node with a local workload the redirect selects is asked and
    answers with the open socket the redirect would take over (a client's
    connected UDP socket to the redirected address; not the cache's own),
    which stays open; nothing is stored, the node's maps are as before."""
    api = cluster.cp.api
    node = cluster.nodes[1]
    tag = uuid.uuid4().hex[:10]
    cg = node.cgroup.child(f"e2e-preview-cache-{tag}")
    client_cg = node.cgroup.child(f"e2e-preview-client-{tag}")
    upstream = netenv.Backend("upstream", "127.96.53.53", proto="udp")
    cluster.backends.append(upstream)  # stopped by the cluster's cleanup, whatever happens here
    client, cache = netenv.Client(client_cg), netenv.Client(cg)
    workload = f"e2e/preview-cache-{tag}"
    try:
        for c in (client, cache):
            assert c.call("udp_open", id="udp", addr=upstream.addr, port=upstream.port).get("backend") == "upstream"
        w = api.PutWorkload(api_pb2.PutWorkloadRequest(workload=policy_pb2.Workload(
            name=workload, node=node.name, cgroup=cg.rel.lstrip("/"), labels={"preview-cache": tag},
            addresses=["127.0.0.53"])), timeout=RPC_DEADLINE)
        cluster.wait_applied(w.resource_version, nodes=[node])
        before = kernel_view(node), node.dump("services")
        r = policy_pb2.LocalRedirect(name=f"e2e/preview-dns-{tag}", selector={"preview-cache": tag},
                                     frontend=types_pb2.Frontend(address=upstream.addr, port=upstream.port,
                                                                 protocol=types_pb2.PROTOCOL_UDP))
        term = api.PreviewLocalRedirect(api_pb2.PutLocalRedirectRequest(local_redirect=r), timeout=RPC_DEADLINE)
        assert term.trigger == "local-redirect" and list(term.pending_nodes) == [node.name]
        got = poll(lambda: (t := api.GetTermination(api_pb2.GetTerminationRequest(id=term.id),
                                                     timeout=RPC_DEADLINE)).reports and t, 30)
        assert got, "no report from the node"
        [rep] = got.reports
        assert (rep.node, rep.trigger, rep.dry_run, rep.error, rep.found, rep.destroyed) == (
            node.name, "local-redirect", True, "", 1, 0), rep
        [sock] = rep.sockets  # the client's; the cache (exempt) keeps reaching the upstream
        assert (sock.protocol, sock.destination, sock.state) == (
            types_pb2.PROTOCOL_UDP, f"{upstream.addr}:{upstream.port}", "CONNECTED"), rep
        for c in (client, cache):
            assert c.call("udp_ping", id="udp").get("backend") == "upstream"
        assert (kernel_view(node), node.dump("services")) == before
        with pytest.raises(grpc.RpcError) as e:
            api.GetLocalRedirect(api_pb2.GetRequest(name=r.name), timeout=RPC_DEADLINE)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        client.close()
        cache.close()
        api.DeleteWorkload(api_pb2.DeleteRequest(name=workload), timeout=RPC_DEADLINE)
        cg.remove()
        client_cg.remove()
