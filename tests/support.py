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


def loopback_block(n: int, port: int, net: int = 53) -> list[str]:
    """n consecutive addresses of 127.<net>.0.0/16 on which `port` is free
    for both TCP and UDP (a server that must listen on a fixed port, such as
    DNS on 53), starting from a place the process id picks, so that test
    runs side by side on one machine take different ones."""
    start = os.getpid() * n % (1 << 16)
    for step in range(0, 1 << 16, n):
        base = (start + step) % ((1 << 16) - n)
        addrs = [f"127.{net}.{(base + i) >> 8}.{(base + i) & 0xFF}" for i in range(n)]
        if all(_port_free(a, port, kind) for a in addrs for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)):
            return addrs
    raise RuntimeError(f"no {n} loopback addresses in 127.{net}.0.0/16 with port {port} free")


def _port_free(addr: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError:
            return False
    return True
