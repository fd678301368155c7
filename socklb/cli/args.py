"""The CLI's own syntax for what a user types: ADDR:PORT[@WEIGHT] endpoints,
bounded integers, and the backends and backend references they make.

The CLI parses only this syntax and refuses a weight of 0 (the API would read
it as 1); every rule about what a service may contain is the server's, which
answers INVALID_ARGUMENT naming the field."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from socklb.cli.exits import UsageError
from socklb.cli.files import load_backends
from socklb.lb.addresses import split_host_port
from socklb.v1 import api_pb2, types_pb2

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

BACKEND_STATES = {
    "active": types_pb2.BACKEND_STATE_ACTIVE,
    "draining": types_pb2.BACKEND_STATE_DRAINING,
    "quarantined": types_pb2.BACKEND_STATE_QUARANTINED,
}


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    weight: int | None = None


def _parse_uint(text: str, what: str, spec: str, maximum: int) -> int:
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{spec!r}: {what} {text!r} is not a non-negative integer")
    value = int(text)
    if value > maximum:
        raise UsageError(f"{spec!r}: {what} {value} is out of range 0..{maximum}")
    return value


def _split_host_port(spec: str, text: str) -> tuple[str, str]:
    try:
        addr, port = split_host_port(spec)
    except ValueError as e:
        raise UsageError(f"{text!r}: {e}") from None
    if port is None:
        raise UsageError(f"{text!r}: expected [ADDR]:PORT" if spec.startswith("[")
                         else f"{text!r}: expected ADDR:PORT (IPv6 as [ADDR]:PORT)")
    return addr, port


def parse_endpoint(text: str, allow_weight: bool = True) -> Endpoint:
    """ADDR:PORT[@WEIGHT], IPv6 as [ADDR]:PORT. The address itself is the server's to judge."""
    spec, weight = text, None
    if "@" in text:
        if not allow_weight:
            raise UsageError(f"{text!r}: a weight (@N) is not accepted here, give ADDR:PORT")
        spec, _, w = text.rpartition("@")
        weight = _parse_uint(w, "weight", text, UINT32_MAX)
        if weight == 0:
            # Backend.weight 0 is "unset" on the wire: the server would store weight 1.
            raise UsageError(f"{text!r}: weight 0 is refused: the API reads 0 as 1 "
                             "(to send a backend no new flows, drain it)")
    addr, port = _split_host_port(spec, text)
    if not addr:
        raise UsageError(f"{text!r}: missing address")
    return Endpoint(addr, _parse_uint(port, "port", text, 65535), weight)


def uint_arg(maximum: int):
    """An argparse type: a decimal integer in 0..maximum."""
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is out of range 0..{maximum}")
        return value
    parse.__name__ = "integer"
    return parse


def backends_from_args(args) -> list[types_pb2.Backend]:
    """-f FILE backends as written, then the listed ones with --node/--zone/--state applied."""
    backends = load_backends(args.file) if args.file else []
    for spec in args.backends:
        ep = parse_endpoint(spec)
        b = types_pb2.Backend(address=ep.address, port=ep.port, weight=ep.weight or 0,
                              node=args.node or "", zone=args.zone or "")
        if args.state:
            b.state = BACKEND_STATES[args.state]
        backends.append(b)
    return backends


def backend_refs(specs: list[str]) -> list[api_pb2.BackendRef]:
    eps = [parse_endpoint(s, allow_weight=False) for s in specs]
    return [api_pb2.BackendRef(address=e.address, port=e.port) for e in eps]
