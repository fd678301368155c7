"""When the agent attaches the DNS learner's per-packet programs
(learner_hooks.py): only while the applied policy has FQDN rules on the
node, attached before those entries are written and detached after the last
is gone; a refused attach is reported, not fatal. The learner here stands
in for dns.DnsLearner's attach/detach (the kernel side is
tests/kernel/test_kernel_fqdn.py) and records what the maps held when it
was called."""
from socklb.dataplane.agent import Agent
from socklb.dataplane.learner_hooks import LearnerHooks
from socklb.dataplane.statefile import parse_state
from socklb.dataplane.workloads import Cgroup, MemoryCgroups
from socklb.dataplane.writer import MemoryMapWriter

FQDN = """
version: {version}
services: []
policy_sets:
  - name: ps
    prefixes: [{{prefix: 10.53.0.2/32, rules: [{{port: 53, end_port: 53, action: ACTION_ALLOW}}]}}]
    {fqdns}
workloads:
  - {{name: a, cgroup: socklb/a, policy_set: ps}}
"""
RULES = ('fqdns: [{pattern: "*.example.test", rules: [{port: 443, end_port: 443, action: ACTION_ALLOW}]}]\n'
         '    dns_servers: [{address: 10.53.0.2, port: 53}]')


def state(version: int, fqdns: bool):
    return parse_state(FQDN.format(version=version, fqdns=RULES if fqdns else ""))


class Learner:
    """attach/detach as dns.DnsLearner's, recording the learner's workload
    entries the writer held at each call."""

    def __init__(self, writer: MemoryMapWriter, refuse: str = ""):
        self.writer, self.refuse = writer, refuse
        self.attached = False
        self.calls: list[tuple[str, int]] = []
        self.cgroup, self.tcp_way = "/sys/fs/cgroup/socklb", "sockmap"

    def attach(self) -> None:
        self.calls.append(("attach", len(self.writer.fqdn.workloads)))
        if self.refuse:
            raise OSError(self.refuse)
        self.attached = True

    def detach_hooks(self) -> bool:
        was, self.attached = self.attached, False
        if was:
            self.calls.append(("detach", len(self.writer.fqdn.workloads)))
        return was


def agent(cgroups=None, refuse=""):
    writer = MemoryMapWriter()
    a = Agent(writer, "n1", capabilities={"fqdn_learner": "udp+tcp"}, cgroups=MemoryCgroups(cgroups))
    learner = Learner(writer, refuse)
    a.learner_hooks = LearnerHooks(learner)
    return a, learner


def test_attached_before_the_first_fqdn_entry_and_detached_after_the_last():
    a, lr = agent()
    a.apply(state(1, fqdns=False))
    assert lr.calls == [] and a.capabilities()["fqdn_learner_hooks"] == "idle"
    a.apply(state(2, fqdns=True))
    assert lr.calls == [("attach", 0)]  # before the learner's workload entry was written
    assert a.writer.fqdn.workloads and a.capabilities() == {"fqdn_learner": "udp+tcp", "fqdn_learner_hooks": "attached"}
    a.apply(state(3, fqdns=True))
    assert lr.calls == [("attach", 0)]  # already attached: nothing more
    a.apply(state(4, fqdns=False))
    assert lr.calls == [("attach", 0), ("detach", 0)]  # after the last entry left
    assert a.capabilities()["fqdn_learner_hooks"] == "idle"


def test_a_workload_whose_cgroup_appears_attaches_them():
    cgroups = {}
    a, lr = agent(cgroups)
    a.apply(state(1, fqdns=True))
    assert lr.calls == [] and not a.writer.fqdn.workloads  # its cgroup is not on this node: nothing to learn for
    a.policy.cgroups.cgroups["socklb/a"] = Cgroup(7)
    assert a.recheck_workloads()
    assert lr.calls == [("attach", 0)] and a.writer.fqdn.workloads == {7: (a.policy.ids.workloads["a"], a.policy.ids.sets["ps"])}
    del a.policy.cgroups.cgroups["socklb/a"]
    assert a.recheck_workloads()
    assert lr.calls == [("attach", 0), ("detach", 0)]


def test_a_refused_attach_is_reported_and_the_state_applied():
    a, lr = agent(refuse="attach CGROUP_INET_EGRESS: Operation not permitted")
    a.apply(state(1, fqdns=True))
    assert a.applied_version == 1 and a.writer.fqdn.workloads  # applied: its FQDN rules allow nothing
    assert a.capabilities()["fqdn_learner_hooks"] == "failed: attach CGROUP_INET_EGRESS: Operation not permitted"
    lr.refuse = ""
    a.apply(state(2, fqdns=True))  # the next apply tries again
    assert lr.calls == [("attach", 0), ("attach", 1)] and a.capabilities()["fqdn_learner_hooks"] == "attached"


def test_sock_ops_refused_at_attach_is_reported():
    a, lr = agent()

    def udp_only():
        lr.tcp_way, lr.attached = "off: attach CGROUP_SOCK_OPS: Operation not permitted", True
    lr.attach = udp_only
    a.apply(state(1, fqdns=True))
    assert a.capabilities()["fqdn_learner_hooks"] == "attached (tcp off: attach CGROUP_SOCK_OPS: Operation not permitted)"


def test_no_learner_says_none():
    a = Agent(MemoryMapWriter(), "n1")
    assert "fqdn_learner_hooks" not in a.capabilities()
    a.learner_hooks = LearnerHooks(None)
    a.apply(state(1, fqdns=True))
    assert a.capabilities()["fqdn_learner_hooks"] == "none"
