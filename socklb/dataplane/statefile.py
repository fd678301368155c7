"""Desired state from a YAML or JSON file (standalone mode, `apply`): a
NodeState with its services and, as the control plane would send them,
workloads, policy_sets and redirects (validated by the agent as any state)."""
from __future__ import annotations

from pathlib import Path

import yaml
from google.protobuf import json_format

from socklb.lb.errors import InvalidState
from socklb.v1 import node_pb2


def parse_state(text: str, source: str = "state") -> node_pb2.NodeState:
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as e:
        raise InvalidState(source, f"not valid YAML/JSON: {e}") from None
    if data is None:
        # An editor or `> file` truncates before it writes: an empty document
        # is a file caught half-written, never "remove everything".
        raise InvalidState(source, "is empty (or only comments): nothing applied; to remove every "
                                   "service, write `services: []`")
    if not isinstance(data, dict):
        raise InvalidState(source, "must be a mapping with `version` and `services`")
    if "services" not in data:
        raise InvalidState(source, "has no `services`: nothing applied; to remove every service, "
                                   "write `services: []`")
    if not isinstance(data["services"], list):  # `services:` alone (null) would read as "no service"
        raise InvalidState(f"{source}: services", "must be a list: nothing applied; to remove every service, "
                                                  "write `services: []`")
    try:
        return json_format.ParseDict(data, node_pb2.NodeState())
    except json_format.ParseError as e:
        raise InvalidState(source, str(e)) from None


def load_state(path: str | Path) -> node_pb2.NodeState:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InvalidState(str(path), e.strerror or str(e)) from None
    except UnicodeDecodeError as e:
        raise InvalidState(str(path), f"not UTF-8 text (byte {e.start}): nothing applied") from None
    return parse_state(text, str(path))
