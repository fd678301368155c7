"""Names of services (and of nodes and zones): their length, and the form the
API accepts."""
from __future__ import annotations

import re

from .errors import InvalidState

MAX_NAME = 253
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[a-z0-9]([-a-z0-9.]*[a-z0-9])?)?$")


def check_name(name: str, field: str) -> None:
    """Any name a node takes: not empty, at most MAX_NAME characters."""
    if not name:
        raise InvalidState(field, "must not be empty")
    if len(name) > MAX_NAME:
        raise InvalidState(field, f"longer than {MAX_NAME} characters")


def validate_name(name: str, field: str) -> None:
    """A service name the API accepts: check_name, and 'name' or
    'namespace/name' of lowercase letters, digits, '-' and '.'."""
    check_name(name, field)
    if not NAME_RE.fullmatch(name):  # not match(): `$` also matches before a final newline
        raise InvalidState(field, f"{name!r} must be 'name' or 'namespace/name' of lowercase letters, "
                                  "digits, '-' and '.'")
