"""statefile: a JSON state file is read with json, anything else (and JSON
json refuses, e.g. with comments) with the YAML loader; both read the same
document as the same NodeState, and a broken one is refused the same way."""
from __future__ import annotations

import json

import pytest
import yaml

from socklb.dataplane import statefile
from socklb.dataplane.statefile import parse_document, parse_state
from socklb.lb.errors import InvalidState

DOC = {"version": 3, "services": [
    {"name": "web", "selection": "SELECTION_MAGLEV",
     "frontends": [{"address": "10.96.0.1", "port": 80, "protocol": "PROTOCOL_TCP"}],
     "backends": [{"address": "10.0.0.1", "port": 8080, "weight": 2}, {"address": "fd00::1", "port": 8080}]}]}


def test_json_and_yaml_read_as_the_same_state():
    as_json = parse_state(json.dumps(DOC, indent=1))
    as_yaml = parse_state(yaml.safe_dump(DOC))
    assert as_json == as_yaml
    assert as_json.services[0].backends[0].weight == 2


def test_json_goes_to_json_and_yaml_to_the_yaml_loader(monkeypatch):
    calls = []
    real = yaml.load
    monkeypatch.setattr(statefile.yaml, "load", lambda text, Loader: calls.append(Loader) or real(text, Loader))
    parse_document(json.dumps(DOC))
    assert calls == []
    parse_document("  " + json.dumps(DOC)[:-1] + ", # a comment: YAML, not JSON\n}")
    parse_document(yaml.safe_dump(DOC))
    assert calls == [statefile._LOADER] * 2


def test_the_c_loader_where_pyyaml_has_it():
    if hasattr(yaml, "CSafeLoader"):
        assert statefile._LOADER is yaml.CSafeLoader and statefile.YAML_LOADER.startswith("libyaml")
    else:
        assert statefile._LOADER is yaml.SafeLoader and statefile.YAML_LOADER.startswith("pure")


@pytest.mark.parametrize("text", ['{"version": 1, "services": [', "{version: 1, services: [}", ""])
def test_broken_documents_are_refused(text):
    with pytest.raises(InvalidState):
        parse_state(text)


def test_constructor_and_parsedict_read_alike():
    """The fast path (NodeState's constructor) gives what ParseDict gives;
    what only the JSON mapping reads goes to ParseDict."""
    from google.protobuf import json_format

    from socklb.v1 import node_pb2

    assert parse_state(json.dumps(DOC)) == json_format.ParseDict(DOC, node_pb2.NodeState())
    camel = {"version": "4", "services": [{**DOC["services"][0], "affinityTimeoutSeconds": 9}]}
    st = parse_state(json.dumps(camel))
    assert (st.version, st.services[0].affinity_timeout_seconds) == (4, 9)
    deadline = {"version": 1, "services": [{**DOC["services"][0], "backends": [
        {"address": "10.0.0.1", "port": 1, "state": "BACKEND_STATE_DRAINING", "drain_deadline": "2026-01-01T00:00:00Z"}]}]}
    assert parse_state(json.dumps(deadline)).services[0].backends[0].drain_deadline.seconds == 1767225600
    # The constructor would take a Timestamp as a mapping; the JSON mapping does not.
    deadline["services"][0]["backends"][0]["drain_deadline"] = {"seconds": 5}
    with pytest.raises(InvalidState):
        parse_state(json.dumps(deadline))
    for bad in ({"version": 1, "services": [{"name": "x", "frontends": [{"port": True}]}]},
                {"version": 1.5, "services": []}, {"version": 1, "services": [{"name": 7}]}):
        with pytest.raises(InvalidState):
            parse_state(json.dumps(bad))
