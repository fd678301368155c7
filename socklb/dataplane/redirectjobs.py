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
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from socklb.lb.addresses import addr_text
from socklb.lb.frontends import FrontendKey

from .redirect_desired import TRIGGER, taken_over
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

    trigger: ClassVar[str] = TRIGGER

    @property
    def empty(self) -> bool:
        return not (self.frontend_ids or self.addresses)


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
    run = RedirectRun(listing, chosen, "none" if job.dry_run else terminator.method.value)
    if chosen and not job.dry_run:
        run.destroyed = terminator.destroy_cookies(chosen)
    run.duration = time.monotonic() - t0
    return run


__all__ = ["RedirectJob", "RedirectRun", "run_redirect_job"]
