"""The local redirects of a node state as services-map targets, and the
sockets a new redirect takes over. Pure: no I/O.

A redirect is programmed as a second table of the services map
(bpf/socklb.h, socklb_svc_key.table): for each frontend it redirects, a
target of the redirect table at the same address, port and protocol, with
the local workloads' addresses as backends (port 0: the frontend's port) and
its own frontend id, so that the services machinery (ids, make-before-break,
backend removal terminations) plans it like any service. The service-table
master of that frontend carries SvcFlag.REDIRECTED, so only redirected
frontends pay the second lookup; a frontend that is no service VIP gets a
placeholder master (no backends, SvcFlag.NOT_SERVICE) to carry the flag.

    overlay = redirect_targets(policy.redirects, service_target)
    targets = {**services, **overlay}              # what make_plan is given

A frontend of a redirect with no local address of its family is not
redirected (a redirect to nowhere would cut it off on this node).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from socklb.lb.addresses import addr16, parse_ip
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import BackendState, BackendTarget, FrontendKey, FrontendTarget, Selection, frontend_key
from socklb.v1 import node_pb2

from .layout import SvcFlag, Table

# The `service` of a redirect-table target (and so of its flows in the
# catalog and the reports): no service name has a ':'.
REDIRECT_PREFIX = "redirect:"
TRIGGER = "local-redirect"


def redirect_service(name: str) -> str:
    return REDIRECT_PREFIX + name


def redirect_name(service: str) -> str | None:
    """The redirect a target's service names, or None for a service."""
    return service[len(REDIRECT_PREFIX):] if service.startswith(REDIRECT_PREFIX) else None


def _backends(r: node_pb2.RedirectState, key: FrontendKey, field: str) -> tuple[BackendTarget, ...]:
    out = {}
    for i, b in enumerate(r.backends):
        ip = parse_ip(b.address, f"{field}.backends[{i}].address")
        if (ip.version == 4) != key.is_v4:
            continue
        if not 0 <= b.port <= 65535:
            raise InvalidState(f"{field}.backends[{i}].port", f"{b.port} is out of range 0..65535")
        addr, port = addr16(ip), b.port or key.port
        out.setdefault((addr, port), BackendTarget(addr, port, BackendState.ACTIVE, 1))
    return tuple(out[k] for k in sorted(out))


def check_redirect_targets(r: node_pb2.RedirectState, field: str) -> list[tuple[FrontendKey, tuple]]:
    """Validate a redirect's frontends and backends: (frontend key, its
    backends of the same family) per frontend."""
    out = []
    seen: dict[FrontendKey, int] = {}
    for i, fe in enumerate(r.frontends):
        ff = f"{field}.frontends[{i}]"
        key = frontend_key(fe, ff)
        if key in seen:
            raise InvalidState(ff, f"duplicate of frontends[{seen[key]}] ({key})")
        seen[key] = i
        out.append((key, _backends(r, key, field)))
    return out


def redirect_targets(redirects: Mapping[str, node_pb2.RedirectState],
                     service_target: Callable[[FrontendKey], FrontendTarget | None],
                     fields: Mapping[str, str] | None = None) -> dict[FrontendKey, FrontendTarget]:
    """The targets the redirects add or change: per redirected frontend its
    redirect-table target, and its service-table target flagged REDIRECTED
    (the service's, from service_target, or a placeholder). InvalidState
    when two redirects claim one frontend."""
    fields = fields or {}
    out: dict[FrontendKey, FrontendTarget] = {}
    owner: dict[FrontendKey, str] = {}
    for name in sorted(redirects):
        r = redirects[name]
        field = fields.get(name, f"redirects ({name!r})")
        for key, backends in check_redirect_targets(r, field):
            if key in owner:
                raise InvalidState(f"{field}.frontends", f"frontend {key} is already redirected by {owner[key]!r}")
            owner[key] = name
            if not backends:
                continue
            local = key.in_table(Table.REDIRECT)
            out[local] = FrontendTarget(redirect_service(name), local, Selection.RANDOM, 0, backends,
                                        tuple(range(len(backends))))
            svc = service_target(key)
            if svc is None:
                out[key] = FrontendTarget(redirect_service(name), key, Selection.RANDOM, 0, (), (),
                                          int(SvcFlag.REDIRECTED | SvcFlag.NOT_SERVICE))
            else:
                out[key] = replace(svc, flags=svc.flags | SvcFlag.REDIRECTED)
    return out


def live_redirects(redirects: Mapping[str, node_pb2.RedirectState],
                   found: Callable[[str], bool]) -> dict[str, node_pb2.RedirectState]:
    """The redirects this node programs: those with a local workload whose
    cgroup is on the node (found(workload name)), as a workload whose cgroup
    is not there programs nothing; one naming no local workload (a state
    written by hand) as given. A redirect whose last local workload's cgroup
    goes leaves the maps, and its clients move back to the service."""
    return {n: r for n, r in redirects.items() if not r.exempt or any(found(w) for w in r.exempt)}


def changed_keys(old: Mapping[FrontendKey, FrontendTarget],
                 new: Mapping[FrontendKey, FrontendTarget]) -> set[FrontendKey]:
    """The keys whose overlay target differs (a delta plans those)."""
    return {k for k in set(old) | set(new) if old.get(k) != new.get(k)}


# --- terminations -----------------------------------------------------------------

def taken_over(sockets: Iterable, frontend_ids: Iterable[int], addresses: Iterable[FrontendKey],
               keep_cgroups: Iterable[int]) -> list:
    """The listed sockets (termtypes.ListedSocket) that new redirects take
    over: flows through the service-table frontend of a redirected frontend
    (frontend_ids: their ids), and sockets connected to a redirected address
    that is no VIP (addresses: the placeholders' keys) — not the flows
    already going to a redirect, and not the sockets of keep_cgroups (the
    exempt workloads', which keep reaching the service, and the bypassing
    workloads', which are never translated)."""
    ids = set(frontend_ids)
    keep = set(keep_cgroups)
    direct = {(k.addr, k.port, k.proto) for k in addresses}
    out = []
    for s in sockets:
        if s.cgroup_id in keep:
            continue
        if s.frontend_id in ids if s.frontend_id else (s.dst, s.dport, s.proto) in direct:
            out.append(s)
    return out


__all__ = ["REDIRECT_PREFIX", "TRIGGER", "changed_keys", "check_redirect_targets", "live_redirects", "redirect_name",
           "redirect_service", "redirect_targets", "taken_over"]
