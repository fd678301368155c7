"""Workloads, policies and local redirects through the real API over gRPC on
an embedded store: CRUD, optimistic concurrency, create_only, idempotence,
validation that names the field and writes nothing, per-workload status from
the nodes' reports, Watch events of every kind, the dry runs' checks and roles."""
from __future__ import annotations

import ipaddress

import grpc
import pytest
from google.protobuf import json_format

from socklb.controlplane import auth, keys, watch
from socklb.lb import limits
from socklb.v1 import api_pb2, policy_pb2, sync_pb2, types_pb2

from test_sync import Server, wait_for


@pytest.fixture
def server(tmp_path):
    s = Server(f"embedded://{tmp_path}/store")
    # The replica's leader campaign writes its key once started: after that,
    # nothing but the test moves the store's revision.
    wait_for(lambda: s.store.get(keys.leader("duties")) is not None, "the leader key")
    yield s
    s.close()


def workload(name="ns/web-1", **kw) -> policy_pb2.Workload:
    return json_format.ParseDict({"name": name, "node": "node-a", "cgroup": "socklb/web-1",
                                  "labels": {"app": "web"}, "addresses": ["10.0.1.5"], **kw},
                                 policy_pb2.Workload())


def policy(name="ns/web-egress", **kw) -> policy_pb2.Policy:
    return json_format.ParseDict({"name": name, "selector": {"app": "web"}, "egress": [
        {"action": "ACTION_ALLOW", "to_services": ["ns/db"], "to_cidrs": ["10.20.0.0/16"],
         "ports": [{"port": 5432, "protocol": "PROTOCOL_TCP"}]},
        {"action": "ACTION_DENY", "to_cidrs": ["10.20.9.0/24"]}], **kw}, policy_pb2.Policy())


def redirect(name="kube-system/node-local-dns", **kw) -> policy_pb2.LocalRedirect:
    return json_format.ParseDict({"name": name, "service": "kube-system/dns",
                                  "selector": {"app": "node-local-dns"}, **kw}, policy_pb2.LocalRedirect())


class Kind:
    """One resource kind's RPCs and a valid example of it, with a changed variant."""

    def __init__(self, word, make, change, field, put_request, put, get, list_, list_field, delete, preview=None,
                 list_request=api_pb2.ListRequest):
        self.word, self.make, self.change, self.field = word, make, change, field
        self.put_request, self.put, self.get, self.list, self.list_field = put_request, put, get, list_, list_field
        self.delete, self.preview, self.list_request = delete, preview, list_request

    def request(self, resource, **kw):
        return self.put_request(**{self.field: resource}, **kw)


KINDS = {
    "workload": Kind("workload", workload, lambda w: w.labels.update({"tier": "frontend"}), "workload",
                     api_pb2.PutWorkloadRequest, "PutWorkload", "GetWorkload", "ListWorkloads", "workloads",
                     "DeleteWorkload", list_request=api_pb2.ListWorkloadsRequest),
    "policy": Kind("policy", policy, lambda p: p.egress[0].ports.add(port=5433), "policy", api_pb2.PutPolicyRequest,
                   "PutPolicy", "GetPolicy", "ListPolicies", "policies", "DeletePolicy", preview="PreviewPolicy"),
    "local redirect": Kind("local redirect", redirect, lambda r: setattr(r, "backend_port", 5353), "local_redirect",
                           api_pb2.PutLocalRedirectRequest, "PutLocalRedirect", "GetLocalRedirect",
                           "ListLocalRedirects", "local_redirects", "DeleteLocalRedirect",
                           preview="PreviewLocalRedirect"),
}


def error(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def rpc(server, method, request):
    return getattr(server.api, method)(request, timeout=30)


# --- CRUD, versions, idempotence ------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_put_get_list_delete(server, kind):
    resource = kind.make()
    put = rpc(server, kind.put, kind.request(resource))
    assert put.resource_version == server.store.revision()  # the revision of the write itself
    expected = type(resource)()
    expected.CopyFrom(resource)
    expected.resource_version = put.resource_version
    assert put == expected
    assert rpc(server, kind.get, api_pb2.GetRequest(name=resource.name)) == put
    listed = rpc(server, kind.list, kind.list_request())
    assert list(getattr(listed, kind.list_field)) == [put] and listed.revision >= put.resource_version

    deleted = rpc(server, kind.delete, api_pb2.DeleteRequest(name=resource.name))
    assert deleted.existed and deleted.revision == server.store.revision() > put.resource_version
    code, details = error(lambda: rpc(server, kind.get, api_pb2.GetRequest(name=resource.name)))
    assert code == grpc.StatusCode.NOT_FOUND and details == f"{kind.word} {resource.name!r} does not exist"
    again = rpc(server, kind.delete, api_pb2.DeleteRequest(name=resource.name))
    assert not again.existed and again.revision == deleted.revision  # idempotent: nothing written


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_versions_create_only_and_idempotent_puts(server, kind):
    first = rpc(server, kind.put, kind.request(kind.make(), create_only=True))
    code, details = error(lambda: rpc(server, kind.put, kind.request(kind.make(), create_only=True)))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "already exists" in details

    # Writing what is stored writes nothing and answers the stored version; resource_version on input is ignored.
    same = kind.make()
    same.resource_version = 12345
    rev = server.store.revision()
    assert rpc(server, kind.put, kind.request(same)).resource_version == first.resource_version
    assert server.store.revision() == rev

    changed = kind.make()
    kind.change(changed)
    second = rpc(server, kind.put, kind.request(changed, expected_version=first.resource_version))
    assert second.resource_version > first.resource_version
    code, details = error(lambda: rpc(server, kind.put, kind.request(kind.make(),
                                                                     expected_version=first.resource_version)))
    assert code == grpc.StatusCode.ABORTED and str(second.resource_version) in details
    assert rpc(server, kind.get, api_pb2.GetRequest(name=changed.name)) == second

    name = changed.name
    code, _ = error(lambda: rpc(server, kind.delete, api_pb2.DeleteRequest(name=name,
                                                                           expected_version=first.resource_version)))
    assert code == grpc.StatusCode.ABORTED
    assert rpc(server, kind.delete, api_pb2.DeleteRequest(name=name, expected_version=second.resource_version)).existed
    code, _ = error(lambda: rpc(server, kind.delete, api_pb2.DeleteRequest(name=name, expected_version=7)))
    assert code == grpc.StatusCode.ABORTED  # expected a version of something that does not exist
    code, _ = error(lambda: rpc(server, kind.put, kind.request(kind.make(), expected_version=7)))
    assert code == grpc.StatusCode.ABORTED


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
def test_the_resource_is_required_and_names_are_checked(server, kind):
    rev = server.store.revision()
    code, details = error(lambda: rpc(server, kind.put, kind.put_request()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == f"{kind.field}: is required"
    for method, request in ((kind.get, api_pb2.GetRequest(name="Bad Name")),
                            (kind.delete, api_pb2.DeleteRequest(name=""))):
        code, details = error(lambda: rpc(server, method, request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("name:"), details
    assert server.store.revision() == rev


def test_stored_forms_are_canonical(server):
    w = rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload(addresses=["[FD00::0:5]",
                                                                                           "::ffff:10.0.1.5"])))
    assert list(w.addresses) == ["fd00::5", "10.0.1.5"]
    p = policy()
    p.egress[1].to_cidrs[:] = ["10.20.9.7", "FD00::/8", "::ffff:10.30.0.0/112", "10.40.0.0/255.255.0.0"]
    stored = rpc(server, "PutPolicy", api_pb2.PutPolicyRequest(policy=p))
    assert list(stored.egress[1].to_cidrs) == ["10.20.9.7/32", "fd00::/8", "10.30.0.0/16", "10.40.0.0/16"]
    # The same prefixes in their stored spelling are the same policy: nothing to write.
    again = policy()
    again.egress[1].to_cidrs[:] = list(stored.egress[1].to_cidrs)
    assert rpc(server, "PutPolicy", api_pb2.PutPolicyRequest(policy=again)).resource_version == \
        stored.resource_version
    r = rpc(server, "PutLocalRedirect", api_pb2.PutLocalRedirectRequest(local_redirect=redirect(
        service="", frontend={"address": "[FD00:96::0:10]", "port": 53, "protocol": "PROTOCOL_UDP"})))
    assert r.frontend.address == "fd00:96::10"


# --- validation: every rule names its field and writes nothing -----------------------------------

def _w(**kw):
    return ("PutWorkload", api_pb2.PutWorkloadRequest(workload=workload(**kw)))


def _p(mutate):
    p = policy()
    mutate(p)
    return "PutPolicy", api_pb2.PutPolicyRequest(policy=p)


def _r(**kw):
    return "PutLocalRedirect", api_pb2.PutLocalRedirectRequest(local_redirect=redirect(**kw))


def _rule(**kw):
    return policy_pb2.EgressRule(**{"action": policy_pb2.ACTION_ALLOW, **kw})


def _set_egress(*rules):
    def mutate(p):
        del p.egress[:]
        p.egress.extend(rules)
    return mutate


def _cidrs(n):
    return [str(ipaddress.IPv4Address(0x0A000000 + i)) for i in range(n)]


def _port_ranges(n):
    return [policy_pb2.PortRange(port=1000 + i) for i in range(n)]


INVALID = [
    # workloads
    ("workload name", _w(name="Web"), "workload.name", "must be 'name' or 'namespace/name'"),
    ("workload node empty", _w(node=""), "workload.node", "must not be empty"),
    ("workload node blank", _w(node="node a"), "workload.node", "whitespace"),
    ("cgroup empty", _w(cgroup=""), "workload.cgroup", "must not be empty"),
    ("cgroup absolute", _w(cgroup="/socklb/a"), "workload.cgroup", "no leading '/'"),
    ("cgroup ..", _w(cgroup="socklb/../a"), "workload.cgroup", "'..'"),
    ("cgroup .", _w(cgroup="socklb/./a"), "workload.cgroup", "'.'"),
    ("cgroup empty part", _w(cgroup="socklb//a"), "workload.cgroup", "empty"),
    ("cgroup trailing /", _w(cgroup="socklb/a/"), "workload.cgroup", "empty"),
    ("cgroup too deep", _w(cgroup="/".join(["d"] * (limits.MAX_CGROUP_DEPTH + 1))), "workload.cgroup",
     f"more than {limits.MAX_CGROUP_DEPTH}"),
    ("label key", _w(labels={"Bad Key": "x"}), "workload.labels", "key 'Bad Key'"),
    ("label key prefix", _w(labels={"Example.com/app": "x"}), "workload.labels", "prefix"),
    ("label key long", _w(labels={"a" * 64: "x"}), "workload.labels", "1..63"),
    ("label value", _w(labels={"app": "-web"}), "workload.labels", "value of 'app'"),
    ("label value long", _w(labels={"app": "v" * 64}), "workload.labels", "value of 'app'"),
    ("too many labels", _w(labels={f"k{i}": "v" for i in range(limits.MAX_LABELS + 1)}), "workload.labels",
     f"more than {limits.MAX_LABELS}"),
    ("address", _w(addresses=["10.0.1.5", "10.0.1.300"]), "workload.addresses[1]", "is not an IPv4 or IPv6"),
    ("address duplicate", _w(addresses=["10.0.1.5", "::ffff:10.0.1.5"]), "workload.addresses[1]",
     "duplicate of workload.addresses[0]"),
    ("too many addresses", _w(addresses=_cidrs(limits.MAX_ADDRESSES_PER_WORKLOAD + 1)), "workload.addresses",
     f"more than {limits.MAX_ADDRESSES_PER_WORKLOAD}"),
    # policies
    ("policy name", _p(lambda p: setattr(p, "name", "a/b/c")), "policy.name", "must be"),
    ("selector", _p(lambda p: p.selector.update({"app/": "x"})), "policy.selector", "key 'app/'"),
    ("action unspecified", _p(lambda p: setattr(p.egress[1], "action", policy_pb2.ACTION_UNSPECIFIED)),
     "policy.egress[1].action", "must be ACTION_ALLOW or ACTION_DENY"),
    ("action unknown", _p(lambda p: setattr(p.egress[0], "action", 7)), "policy.egress[0].action", "unknown value 7"),
    ("no destination", _p(_set_egress(_rule(ports=[policy_pb2.PortRange(port=80)]))), "policy.egress[0]",
     "needs to_services, to_cidrs or to_fqdns"),
    ("service name", _p(lambda p: p.egress[0].to_services.append("Db")), "policy.egress[0].to_services[1]",
     "must be"),
    ("service duplicate", _p(lambda p: p.egress[0].to_services.append("ns/db")), "policy.egress[0].to_services[1]",
     "duplicate of policy.egress[0].to_services[0]"),
    *[(f"cidr {why}", _p(lambda p, text=text: p.egress[1].to_cidrs.append(text)), "policy.egress[1].to_cidrs[1]",
       why) for text, why in [
        ("10.0.0.0/33", "'10.0.0.0/33' is not an IPv4 or IPv6 prefix"),
        ("web", "'web' is not an IPv4 or IPv6 prefix"),
        ("fe80::1%eth0", "zone ids"),
        ("10.20.9.1/24", "10.20.9.1/24 has host bits set: the prefix is 10.20.9.0/24"),
        ("fd00::1/64", "fd00::1/64 has host bits set: the prefix is fd00::/64"),
        ("10.20.9.0/255.255.255.0", "10.20.9.0/24 is a duplicate of policy.egress[1].to_cidrs[0]"),
    ]],
    ("port", _p(lambda p: setattr(p.egress[0].ports[0], "port", 65536)), "policy.egress[0].ports[0].port",
     "out of range 0..65535"),
    ("end port", _p(lambda p: setattr(p.egress[0].ports[0], "end_port", 65536)),
     "policy.egress[0].ports[0].end_port", "out of range"),
    ("end port below", _p(lambda p: setattr(p.egress[0].ports[0], "end_port", 5000)),
     "policy.egress[0].ports[0].end_port", "5000 is below port 5432"),
    ("port 0 with end", _p(lambda p: p.egress[0].ports.add(port=0, end_port=80)),
     "policy.egress[0].ports[1].end_port", "must be 0 when port is 0"),
    ("protocol", _p(lambda p: setattr(p.egress[0].ports[0], "protocol", 3)), "policy.egress[0].ports[0].protocol",
     "unknown value 3"),
    ("fqdn wildcard inside", _p(lambda p: p.egress[1].to_fqdns.extend(["example.com", "api-*.example.com"])),
     "policy.egress[1].to_fqdns[1]", "a wildcard stands only as the first label"),
    ("fqdn wildcard right", _p(lambda p: p.egress[1].to_fqdns.append("a.*.example.com")),
     "policy.egress[1].to_fqdns[0]", "a wildcard stands only as the first label"),
    ("fqdn bad label", _p(lambda p: p.egress[1].to_fqdns.append("-a.example.com")),
     "policy.egress[1].to_fqdns[0]", "is not a DNS label"),
    ("fqdn long label", _p(lambda p: p.egress[1].to_fqdns.append("a" * 64 + ".com")),
     "policy.egress[1].to_fqdns[0]", "1 to 63 characters"),
    ("fqdn duplicate", _p(lambda p: p.egress[1].to_fqdns.extend(["*.Example.com", "*.example.COM."])),
     "policy.egress[1].to_fqdns[1]", "duplicate of policy.egress[1].to_fqdns[0]"),
    ("too many fqdns", _p(_set_egress(_rule(to_fqdns=[f"h{i}.example.com"
                                                      for i in range(limits.MAX_FQDNS_PER_RULE + 1)]))),
     "policy.egress[0].to_fqdns", f"more than {limits.MAX_FQDNS_PER_RULE}"),
    ("fqdn port rules", _p(_set_egress(_rule(to_fqdns=["**.example.com"], ports=_port_ranges(10)),
                                       _rule(to_fqdns=["api.example.com"], ports=_port_ranges(7)))),
     "policy.egress[1].to_fqdns[0]", "would carry 17 port rules"),
    ("too many rules", _p(_set_egress(*[_rule(to_services=["ns/db"])] * (limits.MAX_RULES_PER_POLICY + 1))),
     "policy.egress", f"more than {limits.MAX_RULES_PER_POLICY}"),
    ("too many services",
     _p(_set_egress(_rule(to_services=[f"s{i}" for i in range(limits.MAX_SERVICES_PER_RULE + 1)]))),
     "policy.egress[0].to_services", f"more than {limits.MAX_SERVICES_PER_RULE}"),
    ("too many ports", _p(_set_egress(_rule(to_services=["ns/db"], ports=_port_ranges(limits.MAX_PORTS_PER_RULE + 1)))),
     "policy.egress[0].ports", f"more than {limits.MAX_PORTS_PER_RULE}"),
    # MAX_CIDRS_PER_POLICY counts over all rules: two rules, each under it, together over it.
    ("too many cidrs", _p(_set_egress(_rule(to_cidrs=_cidrs(limits.MAX_CIDRS_PER_POLICY // 2 + 1)),
                                      _rule(to_cidrs=_cidrs(limits.MAX_CIDRS_PER_POLICY // 2)))),
     "policy.egress", f"{limits.MAX_CIDRS_PER_POLICY + 1} prefixes over all rules: more than "
                      f"{limits.MAX_CIDRS_PER_POLICY}"),
    # Flattened port rules of one prefix: its own rules' and those of the prefixes containing it.
    ("port rules of a prefix", _p(_set_egress(
        _rule(to_cidrs=["10.0.0.0/8"], ports=_port_ranges(limits.MAX_PORTS_PER_RULE)),
        _rule(action=policy_pb2.ACTION_DENY, to_cidrs=["10.1.0.0/16"], ports=_port_ranges(1)))),
     "policy.egress[1].to_cidrs[0]", f"10.1.0.0/16 would carry {limits.MAX_PORTS_PER_RULE + 1} port rules"),
    ("port rules, ports empty counts one", _p(_set_egress(
        _rule(to_cidrs=["fd00::/8"], ports=_port_ranges(limits.MAX_PORTS_PER_RULE)),
        _rule(action=policy_pb2.ACTION_DENY, to_cidrs=["fd00:1::/32"]))),
     "policy.egress[1].to_cidrs[0]", f"fd00:1::/32 would carry {limits.MAX_PORTS_PER_RULE + 1} port rules"),
    # local redirects
    ("redirect name", _r(name=""), "local_redirect.name", "must not be empty"),
    ("neither service nor frontend", _r(service=""), "local_redirect.service", "give a service name, or a frontend"),
    ("service and frontend", _r(frontend={"address": "127.96.0.10", "port": 53, "protocol": "PROTOCOL_UDP"}),
     "local_redirect.frontend", "not both"),
    ("redirect service name", _r(service="DNS"), "local_redirect.service", "must be"),
    ("frontend address", _r(service="", frontend={"address": "127.96.0.300", "port": 53,
                                                  "protocol": "PROTOCOL_UDP"}),
     "local_redirect.frontend.address", "is not an IPv4 or IPv6"),
    ("frontend port 0", _r(service="", frontend={"address": "127.96.0.10", "protocol": "PROTOCOL_UDP"}),
     "local_redirect.frontend.port", "out of range 1..65535"),
    ("frontend protocol", _r(service="", frontend={"address": "127.96.0.10", "port": 53}),
     "local_redirect.frontend.protocol", "must be PROTOCOL_TCP or PROTOCOL_UDP"),
    ("selector empty", _r(selector={}), "local_redirect.selector", "must not be empty"),
    ("selector key", _r(selector={"app": "dns", "-x": "y"}), "local_redirect.selector", "key '-x'"),
    ("backend port", _r(backend_port=70000), "local_redirect.backend_port", "out of range 0..65535"),
]


@pytest.mark.parametrize("method, request_, field, why", [(*c[1], c[2], c[3]) for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_input_names_the_field_and_writes_nothing(server, method, request_, field, why):
    before = server.store.revision()
    code, details = error(lambda: rpc(server, method, request_))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert details.startswith(field + ":") and why in details, details
    assert server.store.revision() == before
    # The dry runs check their input exactly as the writes do.
    preview = {"PutPolicy": "PreviewPolicy", "PutLocalRedirect": "PreviewLocalRedirect"}.get(method)
    if preview:
        assert error(lambda: rpc(server, preview, request_)) == (code, details)
        assert server.store.revision() == before


def test_limits_themselves_are_accepted(server):
    """The boundaries of the limits tested above are inside them."""
    ok = [
        _w(cgroup="/".join(["d"] * limits.MAX_CGROUP_DEPTH), labels={f"k{i}": "v" for i in range(limits.MAX_LABELS)},
           addresses=_cidrs(limits.MAX_ADDRESSES_PER_WORKLOAD)),
        _p(_set_egress(_rule(to_cidrs=_cidrs(limits.MAX_CIDRS_PER_POLICY // 2)),
                       _rule(to_cidrs=_cidrs(limits.MAX_CIDRS_PER_POLICY // 2)[:-1] + ["fd00::/8"]),
                       *[_rule(to_services=["ns/db"])] * (limits.MAX_RULES_PER_POLICY - 2))),
        _p(_set_egress(_rule(to_cidrs=["10.0.0.0/8"], ports=_port_ranges(limits.MAX_PORTS_PER_RULE - 1)),
                       _rule(action=policy_pb2.ACTION_DENY, to_cidrs=["10.1.0.0/16", "11.0.0.0/8"],
                             ports=_port_ranges(1)))),
        _r(selector={"app": "dns"}, backend_port=65535),
    ]
    for method, request_ in ok:
        rev = server.store.revision()
        assert rpc(server, method, request_).resource_version > rev


def test_ports_cover_ranges_and_every_port(server):
    p = policy()
    del p.egress[0].ports[:]
    p.egress[0].ports.add(port=8000, end_port=8080, protocol=types_pb2.PROTOCOL_UDP)
    p.egress[0].ports.add(port=0)  # every port
    p.egress[0].ports.add(port=443, end_port=443)
    stored = rpc(server, "PutPolicy", api_pb2.PutPolicyRequest(policy=p))
    assert [(x.port, x.end_port) for x in stored.egress[0].ports] == [(8000, 8080), (0, 0), (443, 443)]


# --- status from the nodes' reports ------------------------------------------------------------

def store_report(store, node, *reports):
    """A node's statistics report as the registry stores it, with the node's
    record (the leader removes the reports of nodes it does not know):
    reports are (workload, cgroup_found, denied)."""
    report = sync_pb2.StatsReport(workloads=[sync_pb2.WorkloadReport(name=n, cgroup_found=f, denied=d)
                                             for n, f, d in reports])
    record = api_pb2.Node(name=node, health=api_pb2.NODE_HEALTH_READY)
    record.last_seen.GetCurrentTime()
    store.txn([], [(keys.stats(node), report.SerializeToString()), (keys.node(node), record.SerializeToString())])


def test_list_workloads_shows_what_their_nodes_reported(server):
    for name, node in (("ns/a", "node-a"), ("ns/b", "node-a"), ("ns/c", "node-b"), ("ns/d", "node-c")):
        rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload(name, node=node,
                                                                                 cgroup=f"socklb/{name[3:]}")))
    store_report(server.store, "node-a", ("ns/a", True, 7), ("ns/b", False, 0), ("ns/gone", True, 3))
    store_report(server.store, "node-b", ("ns/other", True, 1))  # node-b has not reported on ns/c yet

    listed = rpc(server, "ListWorkloads", api_pb2.ListWorkloadsRequest())
    assert [w.name for w in listed.workloads] == ["ns/a", "ns/b", "ns/c", "ns/d"]
    assert [(s.name, s.reported, s.cgroup_found, s.denied) for s in listed.status] == [
        ("ns/a", True, True, 7), ("ns/b", True, False, 0), ("ns/c", False, False, 0), ("ns/d", False, False, 0)]

    on_a = rpc(server, "ListWorkloads", api_pb2.ListWorkloadsRequest(node="node-a"))
    assert [w.name for w in on_a.workloads] == ["ns/a", "ns/b"]
    assert [(s.name, s.denied) for s in on_a.status] == [("ns/a", 7), ("ns/b", 0)]
    assert list(rpc(server, "ListWorkloads", api_pb2.ListWorkloadsRequest(node="nowhere")).workloads) == []

    stats = rpc(server, "GetStats", api_pb2.GetStatsRequest())
    assert [(s.name, s.reported, s.cgroup_found, s.denied) for s in stats.workloads] == \
        [(s.name, s.reported, s.cgroup_found, s.denied) for s in listed.status]
    stats = rpc(server, "GetStats", api_pb2.GetStatsRequest(node="node-a"))
    assert [(s.name, s.denied) for s in stats.workloads] == [("ns/a", 7), ("ns/b", 0)]


# --- Watch ---------------------------------------------------------------------------------------

def _svc(name="ns/db"):
    return json_format.ParseDict({"name": name, "frontends": [{"address": "127.96.0.10", "port": 5432}],
                                  "backends": [{"address": "10.0.0.1", "port": 5432}]}, api_pb2.Service())


def test_watch_streams_every_kind_in_revision_order(server):
    svc = rpc(server, "PutService", api_pb2.PutServiceRequest(service=_svc()))
    w = rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload()))
    # Revisions that are none of the four kinds (a node's statistics) are left out.
    store_report(server.store, "node-a", ("ns/web-1", True, 0))
    p = rpc(server, "PutPolicy", api_pb2.PutPolicyRequest(policy=policy()))

    stream = server.api.Watch(api_pb2.WatchRequest(from_revision=0))
    current = [next(stream) for _ in range(3)]
    r = rpc(server, "PutLocalRedirect", api_pb2.PutLocalRedirectRequest(local_redirect=redirect()))
    gone = rpc(server, "DeleteWorkload", api_pb2.DeleteRequest(name=w.name))
    live = [next(stream) for _ in range(2)]
    stream.cancel()

    put, delete = api_pb2.WatchEvent.TYPE_PUT, api_pb2.WatchEvent.TYPE_DELETE
    assert [(e.revision, e.type, e.kind, e.name) for e in current + live] == [
        (svc.resource_version, put, api_pb2.RESOURCE_KIND_SERVICE, "ns/db"),
        (w.resource_version, put, api_pb2.RESOURCE_KIND_WORKLOAD, w.name),
        (p.resource_version, put, api_pb2.RESOURCE_KIND_POLICY, p.name),
        (r.resource_version, put, api_pb2.RESOURCE_KIND_LOCAL_REDIRECT, r.name),
        (gone.revision, delete, api_pb2.RESOURCE_KIND_WORKLOAD, w.name)]
    assert (current[0].service, current[1].workload, current[2].policy, live[0].local_redirect) == (svc, w, p, r)
    assert not live[1].HasField("workload")

    # From a revision: the events after it, of every kind.
    stream = server.api.Watch(api_pb2.WatchRequest(from_revision=p.resource_version))
    after = [next(stream) for _ in range(2)]
    stream.cancel()
    assert [(e.kind, e.revision) for e in after] == [(api_pb2.RESOURCE_KIND_LOCAL_REDIRECT, r.resource_version),
                                                     (api_pb2.RESOURCE_KIND_WORKLOAD, gone.revision)]


def test_watch_reads_the_current_resources_in_one_range_read(server):
    """The four kinds are read by one read of the configuration range: one
    revision for all, and nothing of the nodes' records or statistics."""
    rpc(server, "PutService", api_pb2.PutServiceRequest(service=_svc()))
    rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload()))
    store_report(server.store, "node-a", ("ns/web-1", True, 1))
    store = server.store
    ranged = []

    class Recorded:
        """The store, recording what is read."""

        def range(self, prefix, end=None):
            ranged.append((prefix, end))
            return store.range(prefix, end=end)

    events, rev = watch.read_current(Recorded())
    assert ranged == [(keys.CONFIG_START, keys.CONFIG_END)]
    assert rev == store.revision()
    assert [(e.kind, e.name) for e in events] == [(api_pb2.RESOURCE_KIND_SERVICE, "ns/db"),
                                                  (api_pb2.RESOURCE_KIND_WORKLOAD, "ns/web-1")]


# --- the dry runs, and roles ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", [k for k in KINDS.values() if k.preview], ids=lambda k: k.word)
def test_dry_runs_check_then_store_only_the_request(server, kind):
    """A preview checks its input as the write does, then stores its
    termination request alone: with no node connected it asks no one."""
    before, _ = server.store.range(keys.CONFIG_START, end=keys.CONFIG_END)
    code, details = error(lambda: rpc(server, kind.preview, kind.put_request()))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == f"{kind.field}: is required"
    term = rpc(server, kind.preview, kind.request(kind.make()))
    assert term.dry_run and term.trigger == {"policy": "policy"}.get(kind.word, "local-redirect")
    assert term.id.startswith("t-") and list(term.pending_nodes) == [] and term.WhichOneof("previewed")
    after, _ = server.store.range(keys.CONFIG_START, end=keys.CONFIG_END)
    assert [(kv.key, kv.mod_revision) for kv in after] == [(kv.key, kv.mod_revision) for kv in before]
    assert list(getattr(rpc(server, kind.list, kind.list_request()), kind.list_field)) == []
    assert server.api.GetTermination(api_pb2.GetTerminationRequest(id=term.id)).id == term.id


def test_every_read_method_and_only_those_are_open_to_read_only_callers():
    methods = api_pb2.DESCRIPTOR.services_by_name["LoadBalancer"].methods_by_name
    reader, writer = auth.Identity("viewer", "read-only"), auth.Identity("ops", "read-write")
    reads = {m for m in methods if m.startswith(("Get", "List")) or m == "Watch"}
    for m in methods:
        assert auth.allowed(writer, auth.API + m), m
        assert auth.allowed(reader, auth.API + m) == (m in reads), m
    for m in ("GetWorkload", "ListWorkloads", "GetPolicy", "ListPolicies", "GetLocalRedirect", "ListLocalRedirects",
              "PutWorkload", "DeletePolicy", "PreviewPolicy", "PreviewLocalRedirect"):
        assert m in methods  # the names above are the API's
    assert auth.READ_METHODS <= set(methods)


def test_one_workload_per_cgroup_of_a_node(server):
    """A node's `workloads` map keys on the cgroup: a second workload claiming
    a node's cgroup is refused whole; moving, deleting or another node frees it."""
    a = rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload("ns/a")))
    before = server.store.revision()
    code, details = error(lambda: rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload("ns/b"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("workload.cgroup: ")
    assert "'ns/a'" in details and server.store.revision() == before  # nothing written
    # The same cgroup on another node is another cgroup.
    rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload("ns/b", node="node-b")))
    # Rewriting a itself keeps its claim; moving it frees the old cgroup.
    assert rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload("ns/a"))) == a
    rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload("ns/a", cgroup="socklb/a")))
    rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload("ns/c")))
    code, _ = error(lambda: rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(
        workload=workload("ns/d", cgroup="socklb/a"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    rpc(server, "DeleteWorkload", api_pb2.DeleteRequest(name="ns/a"))
    rpc(server, "PutWorkload", api_pb2.PutWorkloadRequest(workload=workload("ns/d", cgroup="socklb/a")))
    assert sorted(w.name for w in rpc(server, "ListWorkloads", api_pb2.ListWorkloadsRequest()).workloads) == \
        ["ns/b", "ns/c", "ns/d"]
