"""Helpers every test area shares (tests/unit, tests/integration,
tests/kernel, tests/e2e; tests/conftest.py puts tests/ on sys.path), and the
benchmarks too (`from tests.support import ...`). Standard library only.

What the product already does has its one copy in socklb and is imported
from there, not here: address and port parsing (socklb.lb.addresses),
entering network namespaces (socklb.dataplane.netns), mounting bpffs and
finding cgroup2 (socklb.dataplane.kernel), TCP state and protocol names
(socklb.lb.protocols).
"""
from __future__ import annotations

import os
import socket


def in_ci() -> bool:
    """CI=true (or 1, yes): a test whose prerequisite is missing fails
    instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def free_port(addr: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port on which nothing (not even a wildcard listener) is bound for addr."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(fam, kind) as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


def free_ports(n: int, addr: str = "127.0.0.1") -> list[int]:
    """n different free TCP ports of addr (all held open while choosing)."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(fam, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((addr, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
