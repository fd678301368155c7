"""End to end: an FQDN egress policy written with the API (issue 13) is
computed into the node's state and enforced by its kernel. A workload whose
policy allows `*.example.test` on one TCP port and DNS to a dnsmasq (on a
loopback address, port 53) connects to an address only after it resolved an
allowed name to it; `socklb-dataplane dump fqdn` on the node lists it. The
embedded store only."""
from __future__ import annotations

import shutil
import subprocess

import pytest

import netenv
from e2e_cluster import RPC_DEADLINE, poll
from netenv import require
from support import loopback_block

from socklb.v1 import api_pb2, policy_pb2, types_pb2

# dnsmasq listens on port 53 (what the policy's DNS rule allows): addresses of
# their own, so that runs side by side do not take each other's.
DNS_ADDR, SHOP, OTHER = loopback_block(3, 53)  # DNS, shop.example.test, shop.other.test

EXTRA = r'''
import sys
sys.path.insert(0, sys.argv.pop(1))
import client
import dns.message, dns.query, dns.rdatatype

def op_dns(self, server, name):
    r = dns.query.udp(dns.message.make_query(name, "A"), server, port=53, timeout=10)
    return {"addrs": [rd.address for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset]}

client.main(globals())
'''


@pytest.mark.parametrize("cluster", ["embedded"], indirect=True)
def test_an_fqdn_policy_allows_what_the_workload_resolved(cluster):
    require(shutil.which("dnsmasq") is not None, "dnsmasq (scripts/setup.sh installs dnsmasq-base)")
    api = cluster.cp.api
    node = cluster.nodes[0]
    shop = cluster.backend("shop", SHOP)
    other = cluster.backend("other", OTHER)
    dnsmasq = subprocess.Popen(
        ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         "--bind-interfaces", f"--listen-address={DNS_ADDR}", "--port=53", "--user=root", "--group=root",
         "--pid-file=", "--local-ttl=300", f"--host-record=shop.example.test,{SHOP}",
         f"--host-record=shop.other.test,{OTHER}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cg = node.cgroup.child("e2e-fqdn-client")
    client = None
    try:
        api.PutWorkload(api_pb2.PutWorkloadRequest(workload=policy_pb2.Workload(
            name="e2e/fqdn-client", node=node.name, cgroup=cg.rel.lstrip("/"), labels={"app": "e2e-fqdn"})),
            timeout=RPC_DEADLINE)
        pol = api.PutPolicy(api_pb2.PutPolicyRequest(policy=policy_pb2.Policy(
            name="e2e-fqdn", selector={"app": "e2e-fqdn"}, egress=[
                policy_pb2.EgressRule(action=policy_pb2.ACTION_ALLOW, to_cidrs=[DNS_ADDR],
                                      ports=[policy_pb2.PortRange(port=53)]),
                policy_pb2.EgressRule(action=policy_pb2.ACTION_ALLOW, to_fqdns=["*.Example.TEST"],
                                      ports=[policy_pb2.PortRange(port=shop.port,
                                                                  protocol=types_pb2.PROTOCOL_TCP)])])),
            timeout=RPC_DEADLINE)
        cluster.wait_applied(pol.resource_version, nodes=[node])
        stored = api.GetPolicy(api_pb2.GetRequest(name="e2e-fqdn"), timeout=RPC_DEADLINE)
        assert list(stored.egress[1].to_fqdns) == ["*.example.test"]
        client = netenv.Client(cg, extra=EXTRA)

        assert client.call("connect_error", addr=SHOP, port=shop.port)["error"] == "EPERM"
        assert poll(lambda: client.call("dns", server=DNS_ADDR, name="shop.example.test")["addrs"] == [SHOP], 30)
        assert client.call("connect_error", addr=SHOP, port=shop.port)["error"] is None
        assert client.call("dns", server=DNS_ADDR, name="shop.other.test")["addrs"] == [OTHER]
        assert client.call("connect_error", addr=OTHER, port=other.port)["error"] == "EPERM"
        rows = node.dump("fqdn")["learned"]
        assert [(r["workload"], r["address"], r["pattern"]) for r in rows] == [
            ("e2e/fqdn-client", SHOP, "*.example.test")], rows
    finally:
        if client is not None:
            client.close()
        for call, name in ((api.DeletePolicy, "e2e-fqdn"), (api.DeleteWorkload, "e2e/fqdn-client")):
            call(api_pb2.DeleteRequest(name=name), timeout=RPC_DEADLINE)
        dnsmasq.terminate()
        dnsmasq.wait(10)
        cg.remove()
