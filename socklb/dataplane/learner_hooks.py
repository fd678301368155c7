"""When the DNS learner's per-packet programs run: only while the applied
policy has FQDN rules on this node. Its cgroup_skb (every packet of every
socket in the agent's cgroup) and sock_ops (every TCP socket event)
programs cost every connection something (docs/benchmarks.md), FQDN or not,
so a node without FQDN policy keeps them detached; the maps stay loaded and
pinned (the connect hook reads dns_learned; what was learned stays).

    hooks = LearnerHooks(learner)          # dns.DnsLearner, loaded (None: no learner)
    hooks.before(step.plan.result.fqdn)    # attach, if the entries about to be written have FQDN rules
    <write the policy step>
    hooks.after(policy.programmed.fqdn)    # detach, if what the maps now hold has none
    hooks.status()                         # "attached" | "idle" | "failed: <why>" | "none"
                                           # ("attached (tcp off: <why>)": sock_ops refused)

Make-before-break: the programs are attached before any FQDN entry they
serve is written, and detached only once none is left. An attach the kernel
refuses does not fail the apply: FQDN rules then allow nothing (as with a
refused learner), the agent logs it and status() says why; the next apply
tries again.
"""
from __future__ import annotations

import logging

from .policy_plan import FqdnEntries

log = logging.getLogger(__name__)


def wanted(entries: FqdnEntries) -> bool:
    """Whether these entries need the learner's programs: some workload
    has a set with FQDN rules."""
    return bool(entries.workloads or entries.rules)


class LearnerHooks:
    def __init__(self, learner) -> None:
        self.learner = learner
        self.failed = ""  # why the last attach failed ("" none did)
        # The TCP way the load took (capability fqdn_learner): sock_ops is
        # attached with the others, and a refusal then moves it to "off: <why>".
        self.tcp_way = learner.tcp_way if learner is not None else ""

    def before(self, entries: FqdnEntries) -> None:
        """Attach when `entries` (about to be written) want the programs."""
        if self.learner is None or not wanted(entries) or self.learner.attached:
            return
        try:
            self.learner.attach()
        except Exception as e:  # noqa: BLE001 - a refused attach costs FQDN rules, not the apply
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            if why != self.failed:
                log.error("DNS learner: attaching its programs failed (%s): FQDN rules allow nothing", why)
            self.failed = why
            return
        self.failed = ""
        log.info("DNS learner attached to %s (FQDN rules applied; tcp: %s)", self.learner.cgroup,
                 self.learner.tcp_way)

    def after(self, entries: FqdnEntries) -> None:
        """Detach when `entries` (what the maps now hold) do not want them."""
        if self.learner is None or wanted(entries):
            return
        self.failed = ""
        if self.learner.detach_hooks():
            log.info("DNS learner detached from %s (no FQDN rules applied)", self.learner.cgroup)

    def status(self) -> str:
        if self.learner is None:
            return "none"
        if self.learner.attached:
            tcp = self.learner.tcp_way
            return "attached" if tcp == self.tcp_way else f"attached (tcp {tcp})"
        return f"failed: {self.failed}" if self.failed else "idle"


__all__ = ["LearnerHooks", "wanted"]
