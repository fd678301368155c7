"""Validation of desired states: every error names its field; valid states
expand into per-frontend targets."""
import socket

import pytest

from socklb.dataplane import layout
from socklb.dataplane.desired import Limits, frontend_targets, isolate
from socklb.dataplane.statefile import parse_state
from socklb.lb.errors import InvalidState
from socklb.lb.limits import MAX_BACKENDS
from socklb.v1 import node_pb2


def state(text: str) -> node_pb2.NodeState:
    return parse_state(text)


GOOD = """
version: 7
services:
  - name: web
    frontends:
      - {address: 127.96.0.10, port: 80, protocol: PROTOCOL_TCP}
      - {address: "fd00:96::10", port: 80}
    backends:
      - {address: 127.0.0.2, port: 8080, weight: 3}
      - {address: 127.0.0.3, weight: 1, state: BACKEND_STATE_DRAINING}
      - {address: "::1", port: 8080}
  - name: dns
    frontends: [{address: 127.96.0.53, port: 53, protocol: PROTOCOL_UDP}]
    backends: []
    selection: SELECTION_MAGLEV
    affinity_timeout_seconds: 30
"""


def test_valid_state_expands_per_frontend_and_family():
    t = frontend_targets(state(GOOD))
    by_str = {str(k): v for k, v in t.items()}
    assert set(by_str) == {"127.96.0.10:80/tcp", "[fd00:96::10]:80/tcp", "127.96.0.53:53/udp"}
    v4 = by_str["127.96.0.10:80/tcp"]
    assert [b.port for b in v4.backends] == [8080, 80]  # port 0 -> frontend port
    assert all(b.addr[:12] == b"\0" * 10 + b"\xff\xff" for b in v4.backends)
    # Only the ACTIVE backend is in the table; the DRAINING one keeps its entry.
    assert set(v4.table) == {0}
    assert v4.backends[1].state == layout.BackendState.DRAINING
    v6 = by_str["[fd00:96::10]:80/tcp"]
    assert len(v6.backends) == 1 and v6.key.proto == socket.IPPROTO_TCP
    dns = by_str["127.96.0.53:53/udp"]
    assert dns.table == () and dns.affinity_timeout == 30 and dns.selection == layout.Selection.MAGLEV


def test_weights_shape_the_table():
    t = frontend_targets(state("""
services:
  - name: a
    frontends: [{address: 127.96.0.1, port: 1}]
    backends: [{address: 127.0.0.2, port: 1, weight: 3}, {address: 127.0.0.3, port: 1, weight: 1}]
"""))
    (fe,) = t.values()
    assert sorted(fe.table) == [0, 0, 0, 1]


@pytest.mark.parametrize("text, field", [
    ("services: [{name: a, frontends: [{address: 300.1.1.1, port: 80}]}]", "services[0].frontends[0].address"),
    ("services: [{name: a, frontends: [{address: 127.0.0.1, port: 0}]}]", "services[0].frontends[0].port"),
    ("services: [{name: a, frontends: [{address: 0.0.0.0, port: 1}]}]", "services[0].frontends[0].address"),
    ("services: [{name: '', frontends: []}]", "services[0].name"),
    ("services: [{name: a}, {name: a}]", "services[1].name"),
    ("services: [{name: a, backends: [{address: x, port: 1}]}]", "services[0].backends[0].address"),
    ("services: [{name: a, backends: [{address: 127.0.0.1, port: 70000}]}]", "services[0].backends[0].port"),
    ("services: [{name: a, backends: [{address: 127.0.0.1, port: 1, weight: 70000}]}]",
     "services[0].backends[0].weight"),
    ("services: [{name: a, backends: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 1}]}]",
     "services[0].backends[1]"),
    ("services: [{name: a, affinity_timeout_seconds: 99999999}]", "services[0].affinity_timeout_seconds"),
    ("services: [{name: a, frontends: [{address: 127.0.0.1, port: 1}, {address: 127.0.0.1, port: 1}]}]",
     "services[0].frontends[1]"),
    ("services: [{name: a, frontends: [{address: 127.0.0.1, port: 1}]},"
     " {name: b, frontends: [{address: '::ffff:127.0.0.1', port: 1}]}]", "services[1].frontends[0]"),
])
def test_invalid_states_name_the_field(text, field):
    with pytest.raises(InvalidState) as e:
        frontend_targets(state(text))
    assert e.value.field == field, str(e.value)


def test_unknown_fields_and_bad_yaml_are_rejected():
    with pytest.raises(InvalidState, match="nosuchfield"):
        parse_state("services: [{name: a, nosuchfield: 1}]")
    with pytest.raises(InvalidState, match="not valid YAML"):
        parse_state("services: [")
    with pytest.raises(InvalidState, match="mapping"):
        parse_state("- 1")


def test_capacity_is_checked_before_anything_is_written():
    text = "services: [{name: a, frontends: [{address: 127.0.0.1, port: 1}], backends: [" + ", ".join(
        f"{{address: 127.0.1.{i}, port: 1}}" for i in range(1, 6)) + "]}]"
    frontend_targets(state(text), Limits(backends=5))
    with pytest.raises(InvalidState, match="backends map holds 4") as e:
        frontend_targets(state(text), Limits(backends=4))
    assert e.value.field == "services"
    with pytest.raises(InvalidState, match="services map holds 5"):
        frontend_targets(state(text), Limits(services=5))


@pytest.mark.parametrize("text", ["", "\n\n", "# being edited\n", "---\n", "version: 9\n", "{}", "services:\n",
                                  "services: ~\n", '{"services": null}', "services: web\n"])
def test_an_empty_or_half_written_file_is_not_remove_everything(text):
    with pytest.raises(InvalidState, match="nothing applied; to remove every service, write `services: \\[\\]`"):
        parse_state(text, "state.yaml")


def test_removing_every_service_is_explicit():
    st = parse_state("version: 9\nservices: []\n")
    assert st.version == 9 and list(st.services) == []


def test_a_file_that_is_not_utf8_is_refused(tmp_path):
    from socklb.dataplane.statefile import load_state

    p = tmp_path / "state.yaml"
    p.write_bytes(b"version: 1\nservices: []\n# \xff\xfe\n")
    with pytest.raises(InvalidState, match="not UTF-8 text"):
        load_state(p)


def _svc(name, vip, backends):
    return node_pb2.ServiceState(name=name, frontends=[{"address": vip, "port": 80}],
                                 backends=[{"address": b, "port": 80} for b in backends])


def test_isolate_keeps_the_previous_version_of_a_service_it_cannot_take():
    good_a, good_b = _svc("a", "127.96.0.1", ["10.0.0.1"]), _svc("b", "127.96.0.2", ["10.0.0.2"])
    bad_b = _svc("b", "127.96.0.2", [f"10.1.{i >> 8}.{i & 255}" for i in range(MAX_BACKENDS + 1)])
    new_a = _svc("a", "127.96.0.1", ["10.0.0.1", "10.0.0.3"])
    bad_c = _svc("c", "not-an-address", ["10.0.0.4"])
    state = node_pb2.NodeState(version=5, services=[new_a, bad_b, bad_c])
    with pytest.raises(InvalidState):
        frontend_targets(state)
    out, rejected = isolate(state, {"a": good_a, "b": good_b})
    assert list(out.services) == [new_a, good_b]  # a's change taken, b held at its previous version, c left out
    assert set(rejected) == {"b", "c"}
    assert rejected["b"].startswith("services[1].backends:") and rejected["c"].startswith("services[2].frontends[0]")
    assert out.version == 5 and len(frontend_targets(out)) == 2


def test_isolate_refuses_the_newcomer_on_a_held_frontend_and_raises_on_capacity():
    holder = _svc("z-holder", "127.96.0.1", ["10.0.0.1"])
    thief = _svc("a-thief", "127.96.0.1", ["10.0.0.9"])  # sorts first, claims z-holder's frontend
    out, rejected = isolate(node_pb2.NodeState(version=2, services=[thief, holder]), {"z-holder": holder})
    assert list(out.services) == [holder] and list(rejected) == ["a-thief"]
    other = _svc("other", "127.96.0.2", ["10.0.0.2"])
    with pytest.raises(InvalidState, match="backends map holds 1"):
        isolate(node_pb2.NodeState(version=2, services=[holder, other]), {}, Limits(backends=1))
