"""The local redirects a node serves. Pure.

A local redirect sends a frontend's traffic to workloads on the client's own
node (a node-local DNS cache): a node serves it only when at least one of its
workloads matches the redirect's selector, and those workloads themselves are
exempt, so that they still reach the original service (no loop). Nodes
without a local match keep the service as it is.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from socklb.v1 import api_pb2, node_pb2, policy_pb2, types_pb2


def services_named(r: policy_pb2.LocalRedirect) -> set[str]:
    """The service a redirect names (existing or not), if it names one."""
    return {r.service} if r.service else set()


def redirect_frontends(r: policy_pb2.LocalRedirect,
                       services: Mapping[str, api_pb2.Service]) -> list[types_pb2.Frontend] | None:
    """What `r` redirects: its service's frontends, or its one frontend;
    None when its service does not exist (or it names neither)."""
    if r.service:
        svc = services.get(r.service)
        return list(svc.frontends) if svc is not None else None
    return [r.frontend] if r.HasField("frontend") else None


def redirect_state(r: policy_pb2.LocalRedirect, local: Iterable[policy_pb2.Workload],
                   services: Mapping[str, api_pb2.Service]) -> node_pb2.RedirectState | None:
    """`r` on a node whose workloads matching its selector are `local`; None
    when the node does not serve it: no local workload, no address to send
    to (a redirect to nowhere would cut the frontend off on this node), or
    no frontend (its service does not exist)."""
    local = sorted(local, key=lambda w: w.name)
    addresses = sorted({a for w in local for a in w.addresses})
    frontends = redirect_frontends(r, services)
    if not addresses or frontends is None:
        return None
    # Port 0 means "the frontend's port", as Backend documents.
    return node_pb2.RedirectState(
        name=r.name, frontends=frontends,
        backends=[types_pb2.Backend(address=a, port=r.backend_port) for a in addresses],
        exempt=[w.name for w in local])
