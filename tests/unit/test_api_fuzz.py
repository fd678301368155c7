"""Property-based fuzzing of every write and read RPC of the API against a
real control plane (grpc.aio, embedded store): whatever the request, the
answer is never UNKNOWN or INTERNAL, every INVALID_ARGUMENT names its field
(`path: message`), and no error changes the store. Malformed request bodies
(bytes that are not the method's message) get INVALID_ARGUMENT too.

SOCKLB_FUZZ_EXAMPLES sets the cases per RPC (default 250: a few thousand in
`make test`; `make fuzz` runs many more)."""
import os
import re

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socklb.v1 import api_pb2, policy_pb2, types_pb2

from figures import record
from test_sync import Server

EXAMPLES = int(os.environ.get("SOCKLB_FUZZ_EXAMPLES", "250"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED}
FIELD = re.compile(r"^[a-z_]+(\[\d+\])?(\.[a-z_]+(\[\d+\])?)*: \S")

# Valid values most of the time, so that requests get past the first check and
# reach the deep ones (frontend ownership, selection tables, versions); varied,
# since hypothesis does not repeat an example it already tried.
good_names = st.one_of(st.sampled_from(["web", "ns/web", "other"]),
                       st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,6}[a-z0-9])?(/[a-z0-9]{1,4})?", fullmatch=True))
names = st.one_of(*[good_names] * 6, st.sampled_from(["", "a\n", "Web", "-a", "a/b/c", "x" * 254]),
                  st.text(max_size=12))
good_addresses = st.one_of(st.sampled_from(["10.0.0.1", "127.96.0.10", "fd00::1", "::1", "[::1]", "::ffff:10.0.0.1"]),
                           st.ip_addresses().map(str))
addresses = st.one_of(
    good_addresses, good_addresses, good_addresses,
    st.sampled_from(["", "300.1.1.1", "[::1", "[[::1]]", "[10.1.2.3]", "::1%25", "fe80::1%a", "0.0.0.0", "::",
                     "ff02::1", "224.0.0.1", "10.0.0.1 ", "1" * 300]),
    st.text(max_size=16))
ports = st.one_of(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from([0, 65536, 2**32 - 1]),
                  st.integers(0, 2**32 - 1))
small_enum = st.one_of(st.integers(0, 2), st.integers(0, 2), st.sampled_from([3, -1, 99, 2**31 - 1]))
counts = st.one_of(*[st.integers(1, 3)] * 6, st.just(0), st.just(70))


@st.composite
def frontends(draw):
    return types_pb2.Frontend(address=draw(addresses), port=draw(ports), protocol=draw(small_enum))


@st.composite
def backends(draw):
    return types_pb2.Backend(address=draw(addresses), port=draw(ports),
                             weight=draw(st.one_of(st.integers(0, 100), st.integers(0, 100), st.integers(0, 2**32 - 1))),
                             state=draw(small_enum), node=draw(st.text(max_size=8)), zone=draw(st.text(max_size=8)))


@st.composite
def refs(draw):
    return api_pb2.BackendRef(address=draw(addresses), port=draw(ports))


@st.composite
def services(draw):
    n_fe = draw(counts)
    return api_pb2.Service(
        name=draw(names), frontends=draw(st.lists(frontends(), min_size=n_fe, max_size=n_fe)),
        backends=draw(st.lists(backends(), max_size=5)), selection=draw(small_enum),
        affinity=api_pb2.Affinity(mode=draw(small_enum), timeout_seconds=draw(st.one_of(st.just(0), ports))),
        traffic_policy=draw(small_enum))


versions = st.one_of(st.just(0), st.integers(0, 2**64 - 1))

# The policy resources: mostly valid labels, cgroups and prefixes, with the mistakes validation must name.
labels = st.dictionaries(st.one_of(*[st.sampled_from(["app", "tier", "example.com/app"])] * 3,
                                   st.sampled_from(["", "Bad Key", "app/", "-x", "a" * 64]), st.text(max_size=10)),
                         st.one_of(*[st.sampled_from(["web", "", "db-1"])] * 3, st.text(max_size=8)), max_size=3)
cgroups = st.one_of(*[st.sampled_from(["socklb/a", "socklb/a/b"])] * 3,
                    st.sampled_from(["", "/socklb/a", "a/../b", "a//b", "a/", "/".join("d" * 17)]),
                    st.text(max_size=12))
cidrs = st.one_of(*[st.sampled_from(["10.0.0.0/8", "fd00::/8", "10.1.2.3", "0.0.0.0/0", "::ffff:10.0.0.0/104"])] * 3,
                  st.builds(lambda a, n: f"{a}/{n}", good_addresses, st.integers(0, 130)),
                  st.sampled_from(["10.0.0.1/8", "x", "10.0.0.0/33", "fe80::/10%a", ""]), st.text(max_size=12))


@st.composite
def workloads(draw):
    return policy_pb2.Workload(name=draw(names), node=draw(st.one_of(st.just("node-a"), st.just("node-a"),
                                                                      st.text(max_size=8))),
                               cgroup=draw(cgroups), labels=draw(labels),
                               addresses=draw(st.lists(addresses, max_size=3)), bypass_socket_lb=draw(st.booleans()),
                               resource_version=draw(versions))


@st.composite
def port_ranges(draw):
    return policy_pb2.PortRange(port=draw(st.one_of(ports, st.just(0))), end_port=draw(st.one_of(st.just(0), ports)),
                                protocol=draw(small_enum))


@st.composite
def rules(draw):
    return policy_pb2.EgressRule(action=draw(small_enum), to_services=draw(st.lists(names, max_size=2)),
                                 to_cidrs=draw(st.lists(cidrs, max_size=3)),
                                 ports=draw(st.lists(port_ranges(), max_size=3)),
                                 to_fqdns=draw(st.one_of(st.just([]), st.just([]), st.lists(st.text(max_size=8)))))


@st.composite
def policies(draw):
    return policy_pb2.Policy(name=draw(names), selector=draw(labels), egress=draw(st.lists(rules(), max_size=3)))


@st.composite
def redirects(draw):
    r = policy_pb2.LocalRedirect(name=draw(names), service=draw(st.one_of(good_names, st.just(""))),
                                 selector=draw(labels), backend_port=draw(ports))
    if draw(st.booleans()):
        r.frontend.CopyFrom(draw(frontends()))
    return r


REQUESTS = {
    "PutService": st.builds(lambda s, v, c: api_pb2.PutServiceRequest(service=s, expected_version=v, create_only=c),
                            services(), versions, st.booleans()),
    "GetService": st.builds(lambda n: api_pb2.GetServiceRequest(name=n), names),
    "DeleteService": st.builds(lambda n, v: api_pb2.DeleteServiceRequest(name=n, expected_version=v), names, versions),
    "SetBackends": st.builds(lambda n, b, v: api_pb2.SetBackendsRequest(service=n, backends=b, expected_version=v),
                             names, st.lists(backends(), max_size=5), versions),
    "AddBackends": st.builds(lambda n, b, v: api_pb2.AddBackendsRequest(service=n, backends=b, expected_version=v),
                             names, st.lists(backends(), max_size=5), versions),
    "RemoveBackends": st.builds(lambda n, r, k: api_pb2.RemoveBackendsRequest(service=n, backends=r, keep_sockets=k),
                                names, st.lists(refs(), max_size=5), st.booleans()),
    "DrainBackends": st.builds(lambda n, r, d: api_pb2.DrainBackendsRequest(service=n, backends=r, deadline_seconds=d),
                               names, st.lists(refs(), max_size=5), ports),
    "TerminateFlows": st.builds(lambda n, r, d: api_pb2.TerminateFlowsRequest(service=n, backends=r, dry_run=d),
                                names, st.lists(refs(), max_size=5), st.booleans()),
    "GetTermination": st.builds(lambda i: api_pb2.GetTerminationRequest(id=i), st.text(max_size=20)),
    "ListTerminations": st.builds(lambda n, s, t: api_pb2.ListTerminationsRequest(service=n, page_size=s,
                                                                                  page_token=t),
                                  names, ports, st.text(max_size=20)),
    "GetStats": st.builds(lambda n, m: api_pb2.GetStatsRequest(service=n, node=m), names, st.text(max_size=8)),
    "PutWorkload": st.builds(lambda w, v, c: api_pb2.PutWorkloadRequest(workload=w, expected_version=v, create_only=c),
                             workloads(), versions, st.booleans()),
    "ListWorkloads": st.builds(lambda n: api_pb2.ListWorkloadsRequest(node=n), st.text(max_size=8)),
    "PutPolicy": st.builds(lambda p, v, c: api_pb2.PutPolicyRequest(policy=p, expected_version=v, create_only=c),
                           policies(), versions, st.booleans()),
    "PutLocalRedirect": st.builds(lambda r, v, c: api_pb2.PutLocalRedirectRequest(local_redirect=r,
                                                                                  expected_version=v, create_only=c),
                                  redirects(), versions, st.booleans()),
    **{f"Get{kind}": st.builds(lambda n: api_pb2.GetRequest(name=n), names)
       for kind in ("Workload", "Policy", "LocalRedirect")},
    **{f"Delete{kind}": st.builds(lambda n, v: api_pb2.DeleteRequest(name=n, expected_version=v), names, versions)
       for kind in ("Workload", "Policy", "LocalRedirect")},
}
WRITES = {"PutService", "DeleteService", "SetBackends", "AddBackends", "RemoveBackends", "DrainBackends",
          "TerminateFlows", "PutWorkload", "DeleteWorkload", "PutPolicy", "DeletePolicy", "PutLocalRedirect",
          "DeleteLocalRedirect"}
# Their filters take any text: nothing matches, nothing to refuse.
NEVER_REFUSED = {"GetStats", "ListWorkloads"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(f"embedded://{tmp_path_factory.mktemp('fuzz')}/store")
    yield s
    s.close()


def reseed(api) -> None:
    """A known service, so that writes naming it reach the deep checks."""
    api.PutService(api_pb2.PutServiceRequest(service=api_pb2.Service(
        name="web", frontends=[types_pb2.Frontend(address="127.96.0.10", port=80)],
        backends=[types_pb2.Backend(address="10.0.0.1", port=80), types_pb2.Backend(address="fd00::1", port=80)])))


def snapshot(server) -> tuple[int, int]:
    """The store's revision and its number of keys: an error must change neither."""
    kvs, rev = server.store.range("")
    return rev, len(kvs)


@pytest.mark.parametrize("method", sorted(REQUESTS))
def test_every_answer_is_a_named_refusal_or_a_success(server, method):
    api = server.api
    reseed(api)
    call = getattr(api, method)
    outcomes: dict[str, int] = {}

    @FUZZ
    @given(REQUESTS[method])
    def one(request):
        before = snapshot(server)
        try:
            answer = call(request, timeout=30)
            if method in ("Watch",):
                list(answer)
            outcomes["OK"] = outcomes.get("OK", 0) + 1
            return
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        outcomes[code.name] = outcomes.get(code.name, 0) + 1
        assert code not in NEVER, (method, code, details, request)
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            assert FIELD.match(details), (method, details, request)
        assert snapshot(server) == before, (method, code, details)  # nothing written on any error
        if method in WRITES and code == grpc.StatusCode.NOT_FOUND:
            reseed(api)  # deleted by an earlier case: put it back for the next ones

    one()
    record(f"API fuzz: {method} against a real control plane", sum(outcomes.values()),
           "no UNKNOWN/INTERNAL; every INVALID_ARGUMENT names its field; the store unchanged after every error",
           **{k.lower(): v for k, v in sorted(outcomes.items())})
    # The generator reaches both sides: requests that are refused with a field, and ones that pass.
    if method not in NEVER_REFUSED:
        assert outcomes.get("INVALID_ARGUMENT", 0) > 0, outcomes
    assert sum(outcomes.values()) >= min(EXAMPLES, 10), outcomes


def test_malformed_bodies_are_invalid_argument(server):
    codes: dict[str, int] = {}

    @FUZZ
    @given(st.sampled_from(sorted(REQUESTS)), st.binary(max_size=64))
    def one(method, body):
        codes_of(server, method, body, codes)

    one()
    record("API fuzz: malformed request bodies (random bytes) on every unary RPC", sum(codes.values()),
           "no UNKNOWN/INTERNAL; refusals name the request; the store unchanged",
           **{k.lower(): v for k, v in sorted(codes.items())})
    assert codes.get("INVALID_ARGUMENT", 0) > 0, codes


def codes_of(server, method, body, codes):
    before = snapshot(server)
    raw = server.channel.unary_unary(f"/socklb.v1.LoadBalancer/{method}",
                                     request_serializer=None, response_deserializer=None)
    try:
        raw(body, timeout=30)
        codes["OK"] = codes.get("OK", 0) + 1
        return  # the bytes happened to be a valid message
    except grpc.RpcError as e:
        codes[e.code().name] = codes.get(e.code().name, 0) + 1
        assert e.code() not in NEVER, (method, body, e.code(), e.details())
        if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
            assert FIELD.match(e.details()), e.details()
        assert snapshot(server) == before
