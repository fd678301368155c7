"""Validation of public API input. Pure; errors name the field.

Frontends and backends are checked by the model the dataplane uses too
(socklb.lb: socklb.lb.frontends.service_targets on the cluster-wide node entry
of the service), so the control plane never accepts what a node would refuse.
"""
from __future__ import annotations

from socklb.lb.addresses import check_port, parse_ip
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import service_targets
from socklb.lb.limits import MAX_AFFINITY_SECONDS, MAX_BACKENDS, MAX_FRONTENDS, MAX_WEIGHT
from socklb.lb.names import MAX_NAME, validate_name
from socklb.v1 import api_pb2, types_pb2

from . import compute

__all__ = ["validate_service", "validate_backends", "validate_backend_refs", "check_members"]


def _enum(value: int, enum_type, field: str) -> None:
    if value not in enum_type.values():
        raise InvalidState(field, f"unknown value {value}")


def validate_service(svc: api_pb2.Service, field: str = "service") -> None:
    validate_name(svc.name, f"{field}.name")
    if len(svc.frontends) > MAX_FRONTENDS:
        raise InvalidState(f"{field}.frontends", f"{len(svc.frontends)} frontends: more than {MAX_FRONTENDS}")
    if len(svc.backends) > MAX_BACKENDS:
        raise InvalidState(f"{field}.backends", f"{len(svc.backends)} backends: more than {MAX_BACKENDS}")
    _enum(svc.selection, types_pb2.Selection, f"{field}.selection")
    _enum(svc.traffic_policy, api_pb2.TrafficPolicy, f"{field}.traffic_policy")
    _enum(svc.affinity.mode, api_pb2.AffinityMode, f"{field}.affinity.mode")
    if svc.affinity.timeout_seconds > MAX_AFFINITY_SECONDS:
        raise InvalidState(f"{field}.affinity.timeout_seconds",
                           f"{svc.affinity.timeout_seconds} exceeds {MAX_AFFINITY_SECONDS}")
    if svc.affinity.timeout_seconds and svc.affinity.mode != api_pb2.AFFINITY_MODE_CLIENT:
        raise InvalidState(f"{field}.affinity.timeout_seconds", "only meaningful with AFFINITY_MODE_CLIENT")
    validate_backends(svc.backends, f"{field}.backends")
    service_targets(compute.node_service(svc, None), field)


def validate_backends(backends, field: str) -> None:
    """Each backend on its own, and no two with the same address and port."""
    seen: dict[tuple, int] = {}
    for i, b in enumerate(backends):
        f = f"{field}[{i}]"
        ip = parse_ip(b.address, f"{f}.address")
        check_port(b.port, f"{f}.port", allow_zero=True)
        if b.weight > MAX_WEIGHT:
            raise InvalidState(f"{f}.weight", f"{b.weight} exceeds {MAX_WEIGHT}")
        _enum(b.state, types_pb2.BackendState, f"{f}.state")
        if len(b.node) > MAX_NAME or len(b.zone) > MAX_NAME:
            raise InvalidState(f, f"node and zone are at most {MAX_NAME} characters")
        if b.HasField("drain_deadline") and b.state != types_pb2.BACKEND_STATE_DRAINING:
            raise InvalidState(f"{f}.drain_deadline", "only DRAINING backends have a deadline")
        if (ip, b.port) in seen:
            raise InvalidState(f, f"duplicate of {field}[{seen[(ip, b.port)]}] ({b.address} port {b.port})")
        seen[(ip, b.port)] = i


def validate_backend_refs(refs, field: str) -> None:
    for i, r in enumerate(refs):
        parse_ip(r.address, f"{field}[{i}].address")
        check_port(r.port, f"{field}[{i}].port", allow_zero=True)


def check_members(refs, svc: api_pb2.Service, field: str = "backends") -> None:
    """Each ref names a backend of the service, or one removed from it with
    keep_sockets, once: what a termination may target (so a request is
    bounded by the service's size)."""
    known = {(str(parse_ip(b.address, "address")), b.port) for b in (*svc.backends, *svc.released)}
    seen: dict[tuple[str, int], int] = {}
    for i, r in enumerate(refs):
        ident = (str(parse_ip(r.address, f"{field}[{i}].address")), r.port)
        if ident in seen:
            raise InvalidState(f"{field}[{i}]", f"duplicate of {field}[{seen[ident]}]")
        seen[ident] = i
        if ident not in known:
            raise InvalidState(f"{field}[{i}]", f"{r.address} port {r.port} is not a backend of service "
                                                f"{svc.name!r} (nor one removed from it with keep_sockets)")
