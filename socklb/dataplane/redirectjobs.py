"""Local-redirect terminations on creation: when a redirect starts on this
node, the open sockets of its frontends that do not go to the local
workloads are destroyed (trigger "local-redirect"), so that a client holding
one (a resolver's connected UDP socket) reconnects and lands on the local
workload. Which sockets: redirect_desired.taken_over, over the sockets of
every cgroup, in every network namespace.

    job = RedirectJob(id, "node-local-dns", frontend_ids, addresses, keep_cgroups)
    run = run_redirect_job(terminator, job)

Deleting a redirect (or its last local workload going) removes its
redirect-table frontend: the flows through it die like those of a removed
service frontend (termjobs.removed_targets, with this trigger).

A preview of a change (preview_job: a dry run against a state not applied)
lists both: what the redirects starting would take over, and the flows of
those ending.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from socklb.lb.addresses import addr_text
from socklb.lb.frontends import FrontendKey
from socklb.v1 import node_pb2

from .layout import Table
from .plan import Programmed
from .policyjobs import state_frontends
from .redirect_desired import TRIGGER, check_redirect_targets, taken_over
from .termtypes import CookieReport, ListedSocket, SocketListing


@dataclass(frozen=True)
class RedirectJob:
    """The sockets new redirects take over on this node."""

    id: str
    service: str                          # the redirects' names, for the report
    frontend_ids: tuple[int, ...]         # service-table frontends now redirected
    addresses: tuple[FrontendKey, ...]    # redirected addresses that are no VIP
    keep_cgroups: frozenset[int]          # exempt and bypassing workloads' cgroups
    dry_run: bool = False
    trace_context: dict | None = None
    # Redirect-table frontends that go (a preview of a deletion): all their
    # flows. An applied deletion terminates them as a removed frontend.
    local_ids: tuple[int, ...] = ()

    trigger: ClassVar[str] = TRIGGER

    @property
    def empty(self) -> bool:
        return not (self.frontend_ids or self.addresses or self.local_ids)


@dataclass
class RedirectRun:
    listing: SocketListing
    chosen: list[ListedSocket]
    method: str
    destroyed: CookieReport | None = None
    duration: float = 0.0

    @staticmethod
    def destination(s: ListedSocket) -> tuple[str, int]:
        """Where a socket taken over went, as the application addressed it."""
        return (addr_text(s.vip), s.vip_port) if s.frontend_id else (addr_text(s.dst), s.dport)

    def summary(self) -> str:
        d = self.destroyed
        what = f"destroyed {d.destroyed}/{d.found}" if d is not None else f"found {len(self.chosen)}"
        return (f"{what} taken over of {len(self.listing.sockets)} sockets listed in "
                f"{self.listing.netns_scanned} netns, {self.duration * 1000:.1f} ms, method={self.method}")


def run_redirect_job(terminator, job: RedirectJob) -> RedirectRun:
    """List the sockets of every cgroup (sockdestroy.Terminator), pick those
    the redirects take over, destroy them (not in a dry run)."""
    t0 = time.monotonic()
    listing = terminator.list_cgroups(None)
    chosen = taken_over(listing.sockets, job.frontend_ids, job.addresses, job.keep_cgroups)
    if job.local_ids:
        local = set(job.local_ids)
        chosen += [s for s in listing.sockets if s.frontend_id in local]
    run = RedirectRun(listing, chosen, "none" if job.dry_run else terminator.method.value)
    if chosen and not job.dry_run:
        run.destroyed = terminator.destroy_cookies(chosen)
    run.duration = time.monotonic() - t0
    return run


# --- a preview (dry run) of a redirect change ------------------------------------------------

def redirected_keys(state: node_pb2.NodeState) -> dict[FrontendKey, str]:
    """The frontends a state's redirects send somewhere (a local address of
    their family exists), with the redirect's name."""
    return {key: r.name for i, r in enumerate(state.redirects)
            for key, backends in check_redirect_targets(r, f"redirects[{i}]") if backends}


def preview_keep(before: node_pb2.NodeState, after: node_pb2.NodeState) -> set[str]:
    """The workloads whose cgroups a preview leaves alone: the exempt ones
    of the redirects that start, and the bypassing ones."""
    starting = set(redirected_keys(after).items()) - set(redirected_keys(before).items())
    names = {name for _, name in starting}
    keep = {w for r in after.redirects if r.name in names for w in r.exempt}
    return keep | {w.name for w in after.workloads if w.bypass_socket_lb}


def preview_job(job_id: str, before: node_pb2.NodeState, after: node_pb2.NodeState, programmed: Programmed,
                keep_cgroups: Iterable[int]) -> RedirectJob | None:
    """What going from `before` (applied; `programmed` holds it) to `after`
    would terminate for its redirects, as a dry run: the sockets that the
    redirects starting would take over, and every flow of those ending.
    keep_cgroups: the cgroup ids (and those below) of preview_keep's
    workloads. None when no redirect starts or ends on this node."""
    old, new = redirected_keys(before), redirected_keys(after)
    services = state_frontends(after)
    frontend_ids, addresses, local_ids, names = [], [], [], set()
    for key, name in sorted(new.items()):
        if old.get(key) == name:
            continue
        names.add(name)
        if key not in services:
            addresses.append(key)
            continue
        fe = programmed.frontends.get(key)
        if fe is not None and not fe.placeholder:
            frontend_ids.append(fe.id)
    for key, name in sorted(old.items()):
        if new.get(key) == name:
            continue
        names.add(name)
        fe = programmed.frontends.get(key.in_table(Table.REDIRECT))
        if fe is not None:
            local_ids.append(fe.id)
    if not names:
        return None
    return RedirectJob(job_id, ", ".join(sorted(names)), tuple(frontend_ids), tuple(addresses),
                       frozenset(keep_cgroups), dry_run=True, local_ids=tuple(local_ids))


__all__ = ["RedirectJob", "RedirectRun", "preview_job", "preview_keep", "redirected_keys", "run_redirect_job"]
