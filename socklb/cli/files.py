"""The files a command reads (-f FILE): YAML or JSON documents, or stdin for
'-', turned into socklb.v1 messages. Only the syntax is judged here; what a
resource may contain is the server's to judge."""
from __future__ import annotations

import datetime as dt
import sys
from typing import TypeVar

import yaml
from google.protobuf import json_format
from google.protobuf.message import Message

from socklb.cli.exits import UsageError
from socklb.v1 import api_pb2, types_pb2

M = TypeVar("M", bound=Message)


def _plain(value):
    """YAML turns unquoted timestamps into datetimes; protobuf JSON wants RFC 3339 strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def load_document(path: str):
    """YAML or JSON (JSON is YAML) from a file, or stdin for '-'."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    try:
        return _plain(yaml.safe_load(text))
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML/JSON: {_yaml_problem(e)}") from e


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
    if mark is None or not problem:
        return str(e)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _parse_message(data, message, where: str):
    try:
        return json_format.ParseDict(data, message)
    except json_format.ParseError as e:
        raise UsageError(f"{where}: {e}") from e


def load_resource(path: str, message_type: type[M]) -> M:
    """One resource: a mapping of the message's fields (an empty file is refused)."""
    data = load_document(path)
    name = message_type.DESCRIPTOR.full_name
    if data is None:
        raise UsageError(f"{path}: the file is empty: expected a mapping (a {name})")
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping (a {name}), got {type(data).__name__}")
    return _parse_message(data, message_type(), path)


def load_service(path: str) -> api_pb2.Service:
    return load_resource(path, api_pb2.Service)


def load_backends(path: str) -> list[types_pb2.Backend]:
    """A list of socklb.v1.Backend, or a mapping with a `backends` list (a Service file works)."""
    data = load_document(path)
    if isinstance(data, dict) and "backends" in data:
        data = data["backends"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of backends or a mapping with 'backends', "
                         f"got {type(data).__name__}")
    return [_parse_message(item, types_pb2.Backend(), f"{path}: backends[{i}]") for i, item in enumerate(data)]
