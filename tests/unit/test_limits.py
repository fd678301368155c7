"""Per-service limits hold the same on both planes (both validate with the
model, socklb.lb): each limit is accepted at the limit and refused one past
it, with the field named, before anything is written; a RANDOM service may
use every one of its 4096 backends. Checked on the validation functions of
both planes, through the real API (PutService, and AddBackends growing a
service past a limit), and on a node's deltas."""
import grpc
import pytest

from socklb.controlplane.validate import validate_service
from socklb.dataplane.agent import Agent
from socklb.dataplane.writer import MemoryMapWriter
from socklb.dataplane.desired import frontend_targets
from socklb.lb.errors import InvalidState
from socklb.lb.limits import MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_FRONTENDS
from socklb.v1 import api_pb2, node_pb2, types_pb2

MAGLEV = types_pb2.SELECTION_MAGLEV


def backends(n, state=types_pb2.BACKEND_STATE_UNSPECIFIED, first=0):
    return [types_pb2.Backend(address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", port=80, state=state)
            for i in range(first, first + n)]


def frontends(n):
    return [types_pb2.Frontend(address="127.96.0.10", port=1000 + i) for i in range(n)]


def api_service(nb=1, nf=1, selection=types_pb2.SELECTION_RANDOM):
    return api_pb2.Service(name="big", frontends=frontends(nf), backends=backends(nb), selection=selection)


def node_state(nb=1, nf=1, selection=types_pb2.SELECTION_RANDOM):
    return node_pb2.NodeState(version=1, services=[node_pb2.ServiceState(
        name="big", frontends=frontends(nf), backends=backends(nb), selection=selection)])


def both(nb=1, nf=1, selection=types_pb2.SELECTION_RANDOM):
    """Run both planes' validation; the node's targets (or the two errors)."""
    errors = []
    try:
        validate_service(api_service(nb, nf, selection))
    except InvalidState as e:
        errors.append(e)
    try:
        targets = frontend_targets(node_state(nb, nf, selection))
    except InvalidState as e:
        errors.append(e)
        targets = None
    return targets, errors


def test_random_service_uses_every_one_of_its_backends():
    targets, errors = both(MAX_BACKENDS)
    assert errors == []
    (t,) = targets.values()
    assert len(t.backends) == MAX_BACKENDS
    assert set(t.table) == set(range(MAX_BACKENDS))  # each backend holds a slot
    # Beyond 1024 active backends the table grows to hold one slot each.
    targets, _ = both(1500)
    assert len(next(iter(targets.values())).table) == 1500


def test_one_backend_past_the_limit_is_refused_on_both_planes():
    targets, errors = both(MAX_BACKENDS + 1)
    assert targets is None and len(errors) == 2
    cp, node = errors
    assert cp.field == "service.backends" and f"{MAX_BACKENDS + 1} backends: more than {MAX_BACKENDS}" in str(cp)
    assert node.field == "services[0].backends" and f"more than {MAX_BACKENDS}" in str(node)


def test_frontends_at_and_past_the_limit():
    targets, errors = both(nf=MAX_FRONTENDS)
    assert errors == [] and len(targets) == MAX_FRONTENDS
    targets, errors = both(nf=MAX_FRONTENDS + 1)
    assert targets is None
    assert [e.field for e in errors] == ["service.frontends", "services[0].frontends"]


def test_maglev_table_size_at_and_past_the_limit():
    targets, errors = both(MAGLEV_TABLE_SIZE, selection=types_pb2.SELECTION_MAGLEV)
    assert errors == []
    assert len(next(iter(targets.values())).table) == MAGLEV_TABLE_SIZE
    targets, errors = both(MAGLEV_TABLE_SIZE + 1, selection=types_pb2.SELECTION_MAGLEV)
    assert targets is None
    assert [e.field for e in errors] == ["service.backends", "services[0].backends"]
    assert all(f"exceed the Maglev table size {MAGLEV_TABLE_SIZE}" in str(e) for e in errors)



def test_the_maglev_limit_counts_active_backends_only():
    # Draining backends own no Maglev entry: a table full of active ones still takes them, on both planes.
    svc = api_service(MAGLEV_TABLE_SIZE, selection=MAGLEV)
    state = node_state(MAGLEV_TABLE_SIZE, selection=MAGLEV)
    for service in (svc, state.services[0]):
        service.backends.extend(backends(5, types_pb2.BACKEND_STATE_DRAINING, first=MAGLEV_TABLE_SIZE))
    validate_service(svc)
    (t,) = frontend_targets(state).values()
    assert len(t.backends) == MAGLEV_TABLE_SIZE + 5 and len(t.table) == MAGLEV_TABLE_SIZE
    assert set(t.table) == set(range(MAGLEV_TABLE_SIZE))


@pytest.fixture
def api(server):
    return server.api


def refused(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


@pytest.mark.parametrize(("at", "past", "field", "why"), [
    (api_service(MAX_BACKENDS), api_service(MAX_BACKENDS + 1), "service.backends", f"more than {MAX_BACKENDS}"),
    (api_service(nf=MAX_FRONTENDS), api_service(nf=MAX_FRONTENDS + 1), "service.frontends",
     f"more than {MAX_FRONTENDS}"),
    (api_service(MAGLEV_TABLE_SIZE, selection=MAGLEV), api_service(MAGLEV_TABLE_SIZE + 1, selection=MAGLEV),
     "service.backends", f"exceed the Maglev table size {MAGLEV_TABLE_SIZE}"),
], ids=["backends", "frontends", "maglev"])
def test_the_api_takes_each_limit_and_refuses_one_past_it_writing_nothing(api, at, past, field, why):
    before = api.ListServices(api_pb2.ListServicesRequest()).revision
    code, details = refused(lambda: api.PutService(api_pb2.PutServiceRequest(service=past)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:") and why in details, details
    assert api.ListServices(api_pb2.ListServicesRequest()).revision == before
    api.PutService(api_pb2.PutServiceRequest(service=at))
    stored = api.GetService(api_pb2.GetServiceRequest(name="big"))
    assert (len(stored.frontends), len(stored.backends)) == (len(at.frontends), len(at.backends))
    if field != "service.backends":
        return
    # AddBackends growing the stored service one past the limit is refused the same way: the limit
    # holds for the service a change makes, not only for what a request carries.
    written = api.ListServices(api_pb2.ListServicesRequest()).revision
    one_more = backends(1, first=len(at.backends))
    code, details = refused(lambda: api.AddBackends(api_pb2.AddBackendsRequest(service="big", backends=one_more)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(f"{field}:") and why in details, details
    assert api.ListServices(api_pb2.ListServicesRequest()).revision == written


def test_a_node_takes_a_delta_at_each_limit_and_refuses_one_past_it():
    agent = Agent(MemoryMapWriter(), "n1")
    agent.apply(node_pb2.NodeState(version=1))
    cases = [(node_state(MAX_BACKENDS), node_state(MAX_BACKENDS + 1), "upserts[0].backends"),
             (node_state(nf=MAX_FRONTENDS), node_state(nf=MAX_FRONTENDS + 1), "upserts[0].frontends"),
             (node_state(MAGLEV_TABLE_SIZE, selection=MAGLEV), node_state(MAGLEV_TABLE_SIZE + 1, selection=MAGLEV),
              "upserts[0].backends")]
    for at, past, field in cases:
        version = agent.applied_version
        with pytest.raises(InvalidState) as e:
            agent.apply_delta(node_pb2.NodeStateDelta(from_version=version, version=version + 1,
                                                      upserts=past.services))
        assert e.value.field == field
        assert agent.applied_version == version
        agent.apply_delta(node_pb2.NodeStateDelta(from_version=version, version=version + 1, upserts=at.services))
        (svc,) = agent.state().services
        assert (len(svc.frontends), len(svc.backends)) == (len(at.services[0].frontends),
                                                          len(at.services[0].backends))
