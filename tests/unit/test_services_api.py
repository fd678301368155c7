"""Service writes through the real API over gRPC on an embedded store:
validation names fields, optimistic concurrency, idempotence, frontend
uniqueness, and nothing written on any error."""
import grpc
import pytest
from google.protobuf import json_format

from socklb.v1 import api_pb2, types_pb2


@pytest.fixture
def api(server):
    return server.api, server


def svc(name="a", vip="127.96.0.10", port=80, backends=("10.0.0.1",), **kw):
    return json_format.ParseDict({"name": name, "frontends": [{"address": vip, "port": port}],
                                  "backends": [{"address": b, "port": 80} for b in backends], **kw},
                                 api_pb2.Service())


def error(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def test_put_get_list_delete_round_trip(api):
    api, _ = api
    put = api.PutService(api_pb2.PutServiceRequest(service=svc()))
    assert put.resource_version > 0
    got = api.GetService(api_pb2.GetServiceRequest(name="a"))
    assert got == put
    lst = api.ListServices(api_pb2.ListServicesRequest())
    assert [s.name for s in lst.services] == ["a"] and lst.revision >= put.resource_version
    d = api.DeleteService(api_pb2.DeleteServiceRequest(name="a"))
    assert d.existed
    assert error(lambda: api.GetService(api_pb2.GetServiceRequest(name="a")))[0] == grpc.StatusCode.NOT_FOUND
    assert not api.DeleteService(api_pb2.DeleteServiceRequest(name="a")).existed  # idempotent


def test_writes_are_idempotent(api):
    api, _ = api
    a = api.PutService(api_pb2.PutServiceRequest(service=svc()))
    b = api.PutService(api_pb2.PutServiceRequest(service=svc()))
    assert a.resource_version == b.resource_version
    c = api.AddBackends(api_pb2.AddBackendsRequest(service="a", backends=[types_pb2.Backend(address="10.0.0.1", port=80)]))
    assert c.resource_version == a.resource_version


@pytest.mark.parametrize("mutate, field", [
    (lambda s: setattr(s, "name", "Bad Name"), "service.name"),
    (lambda s: setattr(s.frontends[0], "address", "300.1.1.1"), "service.frontends[0].address"),
    (lambda s: setattr(s.frontends[0], "port", 0), "service.frontends[0].port"),
    (lambda s: setattr(s.backends[0], "address", "nope"), "service.backends[0].address"),
    (lambda s: setattr(s.backends[0], "weight", 1 << 20), "service.backends[0].weight"),
    (lambda s: setattr(s.backends[0], "state", 42), "service.backends[0].state"),
    (lambda s: setattr(s.affinity, "timeout_seconds", 10), "service.affinity.timeout_seconds"),
    (lambda s: setattr(s, "traffic_policy", 9), "service.traffic_policy"),
    (lambda s: s.frontends.append(s.frontends[0]), "service.frontends[1]"),
])
def test_invalid_input_names_the_field_and_writes_nothing(api, mutate, field):
    api, _ = api
    before = api.ListServices(api_pb2.ListServicesRequest()).revision
    s = svc()
    mutate(s)
    code, details = error(lambda: api.PutService(api_pb2.PutServiceRequest(service=s)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(field + ":"), details
    assert api.ListServices(api_pb2.ListServicesRequest()).revision == before


def test_expected_version_and_create_only(api):
    api, _ = api
    a = api.PutService(api_pb2.PutServiceRequest(service=svc(), create_only=True))
    code, _ = error(lambda: api.PutService(api_pb2.PutServiceRequest(service=svc(), create_only=True)))
    assert code == grpc.StatusCode.ALREADY_EXISTS
    b = api.PutService(api_pb2.PutServiceRequest(service=svc(backends=("10.0.0.2",)),
                                                 expected_version=a.resource_version))
    code, details = error(lambda: api.PutService(api_pb2.PutServiceRequest(
        service=svc(backends=("10.0.0.3",)), expected_version=a.resource_version)))
    assert code == grpc.StatusCode.ABORTED and str(b.resource_version) in details
    assert [x.address for x in api.GetService(api_pb2.GetServiceRequest(name="a")).backends] == ["10.0.0.2"]
    code, _ = error(lambda: api.DeleteService(api_pb2.DeleteServiceRequest(name="a", expected_version=1)))
    assert code == grpc.StatusCode.ABORTED


def test_a_frontend_belongs_to_one_service(api):
    api, _ = api
    api.PutService(api_pb2.PutServiceRequest(service=svc("a")))
    code, details = error(lambda: api.PutService(api_pb2.PutServiceRequest(service=svc("b"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "service.frontends[0]" in details and "'a'" in details
    # The same VIP in v4-mapped spelling is the same frontend.
    code, _ = error(lambda: api.PutService(api_pb2.PutServiceRequest(service=svc("b", vip="::ffff:127.96.0.10"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    # Moving the VIP away frees it.
    api.PutService(api_pb2.PutServiceRequest(service=svc("a", vip="127.96.0.11")))
    api.PutService(api_pb2.PutServiceRequest(service=svc("b")))
    api.DeleteService(api_pb2.DeleteServiceRequest(name="b"))
    api.PutService(api_pb2.PutServiceRequest(service=svc("c")))


def test_backend_operations(api):
    api, _ = api
    api.PutService(api_pb2.PutServiceRequest(service=svc(backends=("10.0.0.1", "10.0.0.2"))))
    r = api.AddBackends(api_pb2.AddBackendsRequest(service="a", backends=[
        types_pb2.Backend(address="10.0.0.3", port=80, weight=5)]))
    assert [(b.address, b.weight) for b in r.backends][-1] == ("10.0.0.3", 5)
    r = api.DrainBackends(api_pb2.DrainBackendsRequest(
        service="a", backends=[api_pb2.BackendRef(address="10.0.0.2", port=80)], deadline_seconds=60))
    drained = [b for b in r.backends if b.address == "10.0.0.2"][0]
    assert drained.state == types_pb2.BACKEND_STATE_DRAINING and drained.HasField("drain_deadline")
    r = api.RemoveBackends(api_pb2.RemoveBackendsRequest(
        service="a", backends=[api_pb2.BackendRef(address="10.0.0.1", port=80),
                               api_pb2.BackendRef(address="10.9.9.9", port=80)]))
    assert [b.address for b in r.backends] == ["10.0.0.2", "10.0.0.3"]
    r = api.SetBackends(api_pb2.SetBackendsRequest(service="a", backends=[types_pb2.Backend(address="10.0.0.7", port=80)]))
    assert [b.address for b in r.backends] == ["10.0.0.7"]
    code, details = error(lambda: api.DrainBackends(api_pb2.DrainBackendsRequest(
        service="a", backends=[api_pb2.BackendRef(address="10.0.0.1", port=80)])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("backends[0]")
    code, _ = error(lambda: api.AddBackends(api_pb2.AddBackendsRequest(service="zz", backends=[])))
    assert code == grpc.StatusCode.NOT_FOUND


def test_drain_deadline_removes_the_backend(api):
    api, server = api
    api.PutService(api_pb2.PutServiceRequest(service=svc(backends=("10.0.0.1", "10.0.0.2"))))
    api.DrainBackends(api_pb2.DrainBackendsRequest(
        service="a", backends=[api_pb2.BackendRef(address="10.0.0.2", port=80)], deadline_seconds=1))
    import time
    end = time.monotonic() + 15
    while time.monotonic() < end:
        if [b.address for b in api.GetService(api_pb2.GetServiceRequest(name="a")).backends] == ["10.0.0.1"]:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the leader did not remove the drained backend after its deadline")


def test_watch_from_a_revision(api):
    api, _ = api
    a = api.PutService(api_pb2.PutServiceRequest(service=svc("a")))
    api.PutService(api_pb2.PutServiceRequest(service=svc("b", vip="127.96.0.11")))
    api.DeleteService(api_pb2.DeleteServiceRequest(name="a"))
    stream = api.Watch(api_pb2.WatchRequest(from_revision=a.resource_version))
    events = [next(stream) for _ in range(2)]
    stream.cancel()
    assert [(e.type, e.name) for e in events] == [(api_pb2.WatchEvent.TYPE_PUT, "b"),
                                                  (api_pb2.WatchEvent.TYPE_DELETE, "a")]
    stream = api.Watch(api_pb2.WatchRequest(from_revision=0))
    first = next(stream)
    stream.cancel()
    assert first.name == "b" and first.service.name == "b"


@pytest.mark.parametrize("address, why", [
    ("[::1", "unbalanced brackets"),
    ("[[::1]]", "unbalanced brackets"),
    ("::1]", "unbalanced brackets"),
    ("[10.1.2.3]", "brackets are for IPv6 addresses only"),
    ("::1%25", "zone ids (%...) are not supported"),
    ("fe80::1%a", "zone ids (%...) are not supported"),
    ("fe80::1%" + "z" * 10000, "zone ids (%...) are not supported"),
])
def test_malformed_addresses_are_refused_and_not_stored(api, address, why):
    api, _ = api
    before = api.ListServices(api_pb2.ListServicesRequest()).revision
    s = svc(backends=(address,))
    code, details = error(lambda: api.PutService(api_pb2.PutServiceRequest(service=s)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("service.backends[0].address:") and why in details, details
    assert len(details) < 300, len(details)  # a 10 KB input is not echoed back
    assert api.ListServices(api_pb2.ListServicesRequest()).revision == before


def test_addresses_are_stored_in_one_canonical_form(api):
    api, _ = api
    s = svc(vip="[FD00:96:0::10]", backends=("[::1]", "0:0:0:0:0:ffff:127.0.0.2", "FD00::0:2"))
    stored = api.PutService(api_pb2.PutServiceRequest(service=s))
    assert [f.address for f in stored.frontends] == ["fd00:96::10"]
    assert [b.address for b in stored.backends] == ["::1", "127.0.0.2", "fd00::2"]
    # The same backends in other spellings are the same backends: nothing to write.
    again = svc(vip="fd00:96::10", backends=("::1", "127.0.0.2", "[fd00::2]"))
    r = api.PutService(api_pb2.PutServiceRequest(service=again))
    assert r.resource_version == stored.resource_version
    # Removed with keep_sockets under a bracketed spelling: recorded canonical, as nodes match it.
    r = api.RemoveBackends(api_pb2.RemoveBackendsRequest(
        service="a", backends=[api_pb2.BackendRef(address="[fd00::2]", port=80)], keep_sockets=True))
    assert [(x.address, x.port) for x in r.released] == [("fd00::2", 80)]


def test_a_name_with_a_trailing_newline_is_refused(api):
    api, _ = api
    code, details = error(lambda: api.PutService(api_pb2.PutServiceRequest(service=svc(name="a\n"))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("service.name:"), details


def test_termination_requests_name_the_empty_field(api):
    api, _ = api
    code, details = error(lambda: api.GetTermination(api_pb2.GetTerminationRequest(id="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("id:"), details
    code, details = error(lambda: api.TerminateFlows(api_pb2.TerminateFlowsRequest(service="")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("service:"), details
