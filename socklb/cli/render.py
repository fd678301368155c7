"""The output formats: text (socklb.cli.text), json and yaml (the proto field
names, every field printed), one response at a time or one watch event per
line or document."""
from __future__ import annotations

import sys

import yaml
from google.protobuf import json_format

from socklb.cli.text import TEXT, text_event


def to_dict(msg) -> dict:
    return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


def to_json(msg, indent: int | None = 2) -> str:
    return json_format.MessageToJson(msg, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True, indent=indent)


def to_yaml(msg, explicit_start: bool = False) -> str:
    return yaml.safe_dump(to_dict(msg), sort_keys=False, explicit_start=explicit_start)


def render_text(msg) -> str:
    render = TEXT.get(type(msg))
    return render(msg) if render else to_json(msg)


def emit(msg, output: str, out=None) -> None:
    out = out or sys.stdout
    if output == "json":
        print(to_json(msg), file=out)
    elif output == "yaml":
        out.write(to_yaml(msg))
    else:
        print(render_text(msg), file=out)
    out.flush()


def emit_event(ev, output: str) -> None:
    """One event per line (json: JSON Lines; yaml: one document each) so a pipe sees it at once."""
    if output == "json":
        print(to_json(ev, indent=None))
    elif output == "yaml":
        sys.stdout.write(to_yaml(ev, explicit_start=True))
    else:
        print(text_event(ev))
    sys.stdout.flush()
