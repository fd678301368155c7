"""Desired state from a YAML or JSON file (standalone mode, `apply`): a
NodeState with its services and, as the control plane would send them,
workloads, policy_sets and redirects (validated by the agent as any state).

A document that starts with `{` is read as JSON (json, ~100x faster than a
YAML loader on a 10k-service state); JSON that json refuses, and any other
document, as YAML with libyaml's loader (yaml.CSafeLoader) where PyYAML was
built with it, else the pure-Python one (YAML_LOADER says which). The data
becomes a NodeState through the message's constructor where that reads it
exactly as protobuf's JSON mapping does, else through json_format.ParseDict.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import yaml
from google.protobuf import json_format

from socklb.lb.errors import InvalidState
from socklb.v1 import node_pb2


log = logging.getLogger(__name__)

_LOADER = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader
YAML_LOADER = "libyaml (CSafeLoader)" if _LOADER is not yaml.SafeLoader else "pure Python (SafeLoader)"


def _well_known_fields(desc, seen: set) -> set[str]:
    """The names (proto and JSON) of the fields below `desc` that hold a
    well-known type (google.protobuf.Timestamp, ...): the constructor would
    take {"seconds": ...} there, where the JSON mapping wants a string."""
    out: set[str] = set()
    seen.add(desc.full_name)
    for f in desc.fields:
        m = f.message_type
        if m is None:
            continue
        if m.full_name.startswith("google.protobuf."):
            out |= {f.name, f.json_name}
        elif m.full_name not in seen:
            out |= _well_known_fields(m, seen)
    return out


# A document naming none of these is read by NodeState's constructor, which
# takes exactly what ParseDict takes for every other field (proto field
# names, enum names or numbers, integers as integers); any other document,
# or one the constructor refuses, by ParseDict.
_WELL_KNOWN_FIELDS = sorted(_well_known_fields(node_pb2.NodeState.DESCRIPTOR, set()))


def parse_document(text: str):
    """The document as data: JSON when it parses as JSON, else YAML (JSON
    with what only YAML allows, such as comments, still reads as YAML)."""
    if text.lstrip()[:1] == "{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    if _LOADER is yaml.SafeLoader and len(text) > 1 << 20:
        log.warning("parsing %d bytes of YAML with the pure-Python loader (PyYAML has no libyaml here): "
                    "expect minutes at 10k services; a JSON state file parses in well under a second",
                    len(text))
    return yaml.load(text, Loader=_LOADER)


def parse_state(text: str, source: str = "state") -> node_pb2.NodeState:
    try:
        data = parse_document(text)
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
    if not any(name in text for name in _WELL_KNOWN_FIELDS):
        try:  # the message's constructor (C), 20x faster than ParseDict at 10k services
            return node_pb2.NodeState(**data)
        except Exception:  # noqa: BLE001 -- ParseDict reads it (JSON names, numbers as strings) or says why not
            pass
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
