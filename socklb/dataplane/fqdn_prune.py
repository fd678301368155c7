"""Pruning what the DNS learner learned (docs/fqdn.md, "Pruning"): the
agent deletes, every `--dns-prune-interval` seconds, the `dns_learned`
entries all of whose slots expired, except those a workload still has an
open socket to (a policy change keeps such a socket by its learned entry,
expired or not: deleting the entry would have the next change end it).

    pruner = LearnedPruner(learner, terminator, workload_cgroups)
    pruner.run()     # how many entries were deleted (also counted `pruned`)

The sockets are listed only when there are candidates, and only in the
cgroups of the candidates' workloads. Without a way to list sockets (no
terminator) or when the listing fails, the candidates of workloads with
cgroups on this node are kept: an entry outliving its use costs a map slot
(the LRU reclaims it when full), one deleted too early ends a connection.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from socklb.lb.addresses import addr16

from .dns import Learned, boottime_ns

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 30.0  # seconds; env SOCKLB_DNS_PRUNE_INTERVAL, --dns-prune-interval


def held_open(candidates: Iterable[Learned], workload_cgroups: Mapping[int, Iterable[int]],
              list_cgroups: Callable[[set[int]], Iterable] | None) -> set[tuple[int, bytes]]:
    """(workload id, address) of the candidates a workload still has an open
    socket to; every candidate of a workload with cgroups when the sockets
    cannot be listed. Pure but for list_cgroups (the terminator's)."""
    cands = list(candidates)
    owner = {cg: wid for wid in {x.workload for x in cands} for cg in workload_cgroups.get(wid, ())}
    if not owner:
        return set()
    if list_cgroups is not None:
        wanted = {(x.workload, addr16(x.addr)) for x in cands}
        try:
            return {(owner[s.cgroup_id], s.dst) for s in list_cgroups(set(owner))
                    if s.cgroup_id in owner and (owner[s.cgroup_id], s.dst) in wanted}
        except (OSError, ValueError) as e:
            log.warning("DNS prune: cannot list the workloads' sockets (%s): expired entries kept", e)
    owned = set(owner.values())
    return {(x.workload, addr16(x.addr)) for x in cands if x.workload in owned}


class LearnedPruner:
    """learner: dns.DnsLearner; terminator: sockdestroy.Terminator or None;
    workload_cgroups(): workload id (as `dns_learned` keys it) -> the ids of
    its cgroup and of those below it."""

    def __init__(self, learner, terminator, workload_cgroups: Callable[[], Mapping[int, Iterable[int]]]):
        self.learner = learner
        self.terminator = terminator
        self.workload_cgroups = workload_cgroups
        self._kept: set[tuple[int, bytes]] = set()  # logged when it changes, not every round

    def run(self, now_ns: int | None = None) -> int:
        now = boottime_ns() if now_ns is None else now_ns
        expired = [x for x in self.learner.learned() if x.expiry_ns <= now]
        if not expired:
            return 0
        lister = None
        if self.terminator is not None:
            lister = lambda ids: self.terminator.list_cgroups(ids).sockets  # noqa: E731
        keep = held_open(expired, self.workload_cgroups(), lister)
        n = self.learner.prune(now, lambda x: (x.workload, addr16(x.addr)) in keep)
        if n or keep != self._kept:
            log.info("DNS prune: %d expired learned entries deleted, %d kept for open sockets", n, len(keep))
        self._kept = keep
        return n


__all__ = ["DEFAULT_INTERVAL", "LearnedPruner", "held_open"]
