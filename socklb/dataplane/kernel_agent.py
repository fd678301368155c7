"""The agent of a real node: the datapath loaded, the kernel features probed
once, and the Agent given the parts that work on them.

    agent = load_agent(Datapath(pin_dir, cgroup, capacity), node)

Parts: maps.BpfMapWriter (the pinned maps), termjobs.TerminationService
(with the Terminator the kernel allows, see features.py),
stats.KernelStatistics (the counters map, the flow reader, the socket
statistics collector, the workloads' denials) and workloads.KernelCgroups
(exact or ancestor matching, as loader.workload_way chose) and
learner_hooks.LearnerHooks (the DNS learner's programs attached while FQDN
rules are applied). One refused
feature leaves the other duties running.
"""
from __future__ import annotations

import logging

from . import features
from .agent import Agent
from .features import answer
from .fqdn_prune import LearnedPruner
from .kernel import cgroup2_mount
from .learner_hooks import LearnerHooks
from .loader import Datapath
from .maps import BpfMapWriter
from .stats import KernelStatistics
from .termjobs import TerminationService
from .workloads import KernelCgroups

log = logging.getLogger(__name__)


def load_agent(datapath: Datapath, node: str, terminate_method: str = "auto", flow_method: str = "auto",
               policy_judge: str | None = None, map_writes: str | None = None) -> Agent:
    """Load (or adopt) the datapath and build its agent; raises
    loader.LoadError or OSError when the datapath cannot be loaded."""
    datapath.load()
    writer = BpfMapWriter(datapath, map_writes)
    # Each optional kernel feature is probed once, here: the duties (flows,
    # termination, socket statistics) take their way from the answers.
    parts = features.load(datapath.pin_dir, flow_method, terminate_method, policy_judge=policy_judge)
    log.info("kernel features: %s; workload matching: %s", parts.features.summary(), datapath.workload_way)
    terminations = TerminationService(node, parts.terminator,
                                      parts.errors.get("sock_destroy", "").removeprefix("none: "))
    learner = datapath.learner
    terminations.learned_reader = learner  # policy jobs judge FQDN destinations by what it learned
    statistics = KernelStatistics(writer.counter_values, parts, writer.workload_denied,
                                  learner.counters if learner is not None else dict)
    # The hooks see the processes of the balanced cgroup only: workloads are
    # resolved below it, with the cgroups below each when matching is exact.
    cgroups = KernelCgroups(cgroup2_mount(), datapath.cgroup, exact=datapath.exact_workloads)
    capabilities = {**parts.features.capabilities(),
                    "ancestor_cgroup_id": answer(datapath.ancestor_refused),
                    "workload_match": datapath.workload_way,
                    "fqdn_learner": datapath.dns_way,
                    "map_batch": answer(writer.batch_refused),
                    "map_writes": writer.write_way}
    agent = Agent(writer, node, terminations, statistics, capabilities, cgroups)
    if learner is not None:
        agent.pruner = LearnedPruner(learner, parts.terminator, agent.workload_cgroups_by_id)
    # The learner's per-packet programs run while FQDN rules are applied. Until
    # the first state: as the previous agent left them (adopted), attached if
    # the maps it left hold FQDN rules.
    agent.learner_hooks = LearnerHooks(learner)
    agent.learner_hooks.before(agent.policy.programmed.fqdn)
    programmed = agent.catalog.current().programmed
    log.info("programmed state read back: %d frontends, %d backends, version %d",
             len(programmed.frontends), len(programmed.backends), agent.applied_version)
    return agent


__all__ = ["load_agent"]
