"""A policy written with the API ends open sockets, end to end in one
process: a real control plane (grpc.aio, embedded store), a node's sync
client and agent whose maps are in memory and whose terminations run on
their worker with a fake terminator (the sockets of the workload's cgroup);
the node's report reaches the control plane, which lists it with trigger
policy, and `socklb termination list|get` show it.
(tests/kernel/test_kernel_policy_wiring.py does it with real sockets.)"""
import json

from socklb import cli
from socklb.controlplane import keys, terminations
from socklb.dataplane.agent import Agent
from socklb.dataplane.sync_client import SyncClient
from socklb.dataplane.termjobs import TerminationService
from socklb.dataplane.workloads import Cgroup, MemoryCgroups
from socklb.dataplane.writer import MemoryMapWriter
from socklb.v1 import api_pb2, node_pb2

from test_policy_compute import ALLOW, DENY, UDP, policy, rule, service, workload
from test_policy_jobs import FakeTerminator, listed
from test_sync import wait_for

DNS = service("dns", ("10.96.0.10", 53, UDP))
CLIENT = workload("client", "n1", {"app": "client"})
# The client's open sockets (cgroup 7): through the dns VIP, to a denied
# prefix, to no prefix at all, to an allowed one; cgroup 8 is no workload's.
SOCKETS = [listed(1, 7, "10.0.0.53", 53, proto=17, vip="10.96.0.10", vip_port=53),
           listed(2, 7, "10.1.1.1", 22), listed(3, 7, "172.16.0.1", 80, netns="net:[2]"),
           listed(4, 7, "192.168.1.1", 443), listed(5, 8, "10.1.1.1", 22)]
P1 = policy("p1", {"app": "client"}, rule(ALLOW, services=["dns"]), rule(DENY, cidrs=["10.0.0.0/8"]),
            rule(ALLOW, cidrs=["192.168.0.0/16"]))


def policy_terminations(server):
    listed_ = server.api.ListTerminations(api_pb2.ListTerminationsRequest()).terminations
    return [t for t in listed_ if t.trigger == "policy"]


def test_a_policy_write_ends_the_denied_sockets_and_is_listed(server, capsys):
    server.api.PutService(api_pb2.PutServiceRequest(service=DNS))
    server.api.PutWorkload(api_pb2.PutWorkloadRequest(workload=CLIENT))
    t = FakeTerminator(SOCKETS)
    agent = Agent(MemoryMapWriter(), "n1", terminations=TerminationService("n1", t),
                  cgroups=MemoryCgroups({"socklb/client": Cgroup(7)}))
    client = SyncClient(agent, [server.addr], stats_interval=60)
    client.start()
    try:
        wait_for(lambda: [w.name for w in agent.state().workloads] == ["client"], "the workload on the node")
        assert t.calls == []  # an unrestricted workload: nothing judged

        rev = server.api.PutPolicy(api_pb2.PutPolicyRequest(policy=P1)).resource_version
        wait_for(lambda: policy_terminations(server), "the node's policy report")
        [term] = policy_terminations(server)
        assert (term.id, term.service, term.dry_run) == (f"v{rev}-policy", "", False)
        [rep] = term.reports
        assert (rep.node, rep.found, rep.destroyed, rep.failed, rep.method) == ("n1", 2, 2, 0, "kfunc")
        assert term.found == term.destroyed == 2
        assert {(b.address, b.port) for b in term.backends} == {("10.1.1.1", 22), ("172.16.0.1", 80)}
        assert t.calls == [("list", {7}), ("destroy", [2, 3])]

        assert cli.main(["--server", server.addr, "termination", "list"]) == 0
        out = capsys.readouterr().out.splitlines()
        row = next(line.split() for line in out if line.startswith(term.id))
        assert row[:7] == [term.id, "-", "policy", "no", "1", "2", "2"], out
        assert cli.main(["--server", server.addr, "-o", "json", "termination", "get", term.id]) == 0
        got = json.loads(capsys.readouterr().out)
        assert got["trigger"] == "policy" and {s["destination"] for s in got["reports"][0]["sockets"]} == {
            "10.1.1.1:22", "172.16.0.1:80"}
    finally:
        client.stop()
        agent.close()


def test_policy_reports_of_several_nodes_make_one_termination():
    """assemble(): the same id from two nodes is one termination, created
    when the first node reported, with the destinations of both."""
    class Store:
        def __init__(self, kvs):
            self.kvs = kvs

        def range(self, prefix):
            return sorted(self.kvs, key=lambda kv: kv.key), 0

    class KV:
        def __init__(self, key, value):
            self.key, self.value = key, value

    def report(node, at, dst):
        r = node_pb2.TerminationReport(id="v9-policy", node=node, trigger="policy", found=1, destroyed=1,
                                       backends=[node_pb2.BackendTermination(address=dst, port=22, found=1,
                                                                             destroyed=1)])
        r.at.FromSeconds(at)
        return KV(keys.termination_report("v9-policy", node), r.SerializeToString())

    [t] = terminations.assemble(Store([report("n1", 20, "10.1.1.1"), report("n2", 10, "10.2.2.2")]))
    assert (t.id, t.service, t.trigger, t.found, t.destroyed) == ("v9-policy", "", "policy", 2, 2)
    assert t.created.seconds == 10 and [r.node for r in t.reports] == ["n1", "n2"]
    assert sorted(b.address for b in t.backends) == ["10.1.1.1", "10.2.2.2"]
