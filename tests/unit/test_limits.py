"""Per-service limits hold the same on both planes (the control plane
validates with the dataplane's model): each limit is accepted at the limit
and refused one past it, with the field named, before anything is written;
a RANDOM service may use every one of its 4096 backends."""
import pytest

from socklb.controlplane.validate import validate_service
from socklb.dataplane.desired import (MAGLEV_TABLE_SIZE, MAX_BACKENDS, MAX_FRONTENDS, InvalidState,
                                      frontend_targets)
from socklb.v1 import api_pb2, node_pb2, types_pb2


def backends(n):
    return [types_pb2.Backend(address=f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", port=80) for i in range(n)]


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
