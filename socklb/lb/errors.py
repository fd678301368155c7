"""The validation error of both planes (the API answers it INVALID_ARGUMENT)."""
from __future__ import annotations


class InvalidState(ValueError):
    """The desired state is wrong; `field` is the path of the culprit."""

    def __init__(self, field: str, message: str, other: int | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.other = other  # a frontend conflict: index of the service that holds it
