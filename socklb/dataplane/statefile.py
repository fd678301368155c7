"""Desired state from a YAML or JSON file (standalone mode, `apply`)."""
from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf import json_format

from socklb.v1 import node_pb2

from .desired import InvalidState


def parse_state(text: str, source: str = "state") -> node_pb2.NodeState:
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise InvalidState(source, f"not valid YAML/JSON: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidState(source, "must be a mapping with `version` and `services`")
    try:
        return json_format.ParseDict(data, node_pb2.NodeState())
    except json_format.ParseError as e:
        raise InvalidState(source, str(e)) from None


def load_state(path: str | Path) -> node_pb2.NodeState:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise InvalidState(str(path), e.strerror or str(e)) from None
    return parse_state(text, str(path))
