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
