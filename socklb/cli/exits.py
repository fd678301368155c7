"""What the CLI exits with: the exit codes (docs/cli.md), bad input, and the
gRPC status code → exit code table."""
from __future__ import annotations

import grpc

EXIT_OK = 0
EXIT_ERROR = 1        # anything not listed below (INTERNAL, UNKNOWN, ...)
EXIT_INPUT = 2        # bad CLI input, INVALID_ARGUMENT, OUT_OF_RANGE
EXIT_NOT_FOUND = 3    # NOT_FOUND
EXIT_CONFLICT = 4     # ABORTED (expected version), ALREADY_EXISTS (create only), FAILED_PRECONDITION
EXIT_UNAVAILABLE = 5  # control plane unreachable, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
EXIT_DENIED = 6       # UNAUTHENTICATED, PERMISSION_DENIED
EXIT_INTERRUPTED = 130

_EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_INPUT,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.ABORTED: EXIT_CONFLICT,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_CONFLICT,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,  # the store is full: retry once space is freed
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
}


class UsageError(Exception):
    """Bad command-line input: reported as `error: ...`, exit 2, nothing sent."""


def exit_code_for(code: grpc.StatusCode) -> int:
    return _EXIT_BY_CODE.get(code, EXIT_ERROR)
