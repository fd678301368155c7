"""The kernel judge (Terminator.judge_cgroups, the judge programs of
bpf/sock_destroy.bpf.c deciding with bpf/policy_verdict.h, the connect
hook's own body) agrees with the reference semantics (PolicyEvaluator,
through policyjobs.judge) on many random policy sets, over real sockets of
every kind (test_kernel_policy_termination's node: TCP idle, active and in
CLOSE_WAIT, connected UDP, through VIPs and direct, in the host and two test
namespaces, IPv4, IPv6 and v4-mapped), in list mode (nothing destroyed);
then, with the kfunc, it destroys exactly what it reports.

The sets are written straight into the agent's pinned policy maps
(policy_maps.PolicyMaps) under ids the test picks: the agent applies no
policy state (it would run its own job)."""
from __future__ import annotations

import random

import pytest

from bench.policy_maps import PolicyMaps
from test_kernel_policy_termination import (DEAD_TCP, OPEN, SHUT, VIP, _frontend, node,  # noqa: F401
                                            wclients, workload_cgroups)

from socklb.dataplane import features, kernel, layout, sockdestroy as term
from socklb.dataplane.dns import Learned, LearnedSlot, learned_val
from socklb.dataplane.maps import _rules
from socklb.dataplane.policy_desired import compile_set
from socklb.dataplane.policyjobs import FqdnSource, MemoryLearned, judge, policy_job, run_policy_job
from socklb.lb.fqdn import pattern_id
from socklb.v1 import node_pb2, policy_pb2, types_pb2

pytestmark = pytest.mark.agent

ALLOW, DENY = policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY
PROTOS = (types_pb2.PROTOCOL_UNSPECIFIED, types_pb2.PROTOCOL_TCP, types_pb2.PROTOCOL_UDP)
PREFIXES = ("127.0.0.0/8", f"{OPEN}/32", f"{SHUT}/32", "127.0.0.4/31", "0.0.0.0/0", "127.96.0.0/16",
            "::1/128", "::/0", "::ffff:127.0.0.4/126", "10.0.0.0/8")
FIRST_ID = 900  # set ids of the random sets (the agent gives low ids)
FQDN_POOL = ("a.fz.test", "*.fz.test", "**.deep.test", "b.other.test")  # the random sets' patterns
GONE = "gone.test"  # a pattern no set has (learned before a change removed it)
WID = 4000  # the workload id the learned entries are written under (the agent gives low ids)


def random_set(rng: random.Random, name: str, node, ports: list[int]) -> node_pb2.PolicySetState:
    frontends = []
    for svc in ("web", "api", "dns"):
        pick = rng.choice((None, ALLOW, DENY))
        if pick is not None:
            proto = "udp" if svc == "dns" else "tcp"
            frontends.append(node_pb2.FrontendVerdict(service=svc, frontend=_frontend(VIP, node.ports[svc], proto),
                                                      action=pick))
    prefixes = []
    for p in rng.sample(PREFIXES, rng.randint(0, 5)):
        rules = []
        for _ in range(rng.randint(0, 4)):
            port = rng.choice(ports)
            lo, hi = rng.choice(((0, 65535), (port, port), (port - 1, port + 1), (port + 1, port + 9),
                                 (max(port - 9, 0), port - 1)))
            rules.append(node_pb2.PortRule(port=lo, end_port=hi, protocol=rng.choice(PROTOS),
                                           action=rng.choice((ALLOW, ALLOW, DENY))))
        prefixes.append(node_pb2.PrefixRules(prefix=p, rules=rules))
    fqdns = [node_pb2.FqdnRules(pattern=p, rules=random_rules(rng, ports))
             for p in rng.sample(FQDN_POOL, rng.randint(0, len(FQDN_POOL)))]
    return node_pb2.PolicySetState(name=name, policies=["random"], frontends=frontends, prefixes=prefixes,
                                   fqdns=fqdns)


def random_rules(rng: random.Random, ports: list[int]) -> list[node_pb2.PortRule]:
    rules = []
    for _ in range(rng.randint(0, 4)):
        port = rng.choice(ports)
        lo, hi = rng.choice(((0, 65535), (port, port), (port - 1, port + 1), (port + 1, port + 9)))
        rules.append(node_pb2.PortRule(port=lo, end_port=hi, protocol=rng.choice(PROTOS),
                                       action=rng.choice((ALLOW, ALLOW, DENY))))
    return rules


class FqdnMaps:
    """A set's FQDN rules in the pinned policy_fqdns, and learned entries in
    the pinned dns_learned, written straight (as PolicyMaps writes the rest);
    clear() deletes what was written."""

    def __init__(self, pin_dir):
        self.fqdns = kernel.BpfMap.pinned(pin_dir / "policy_fqdns", layout.PolicyFqdnKey, layout.PolicyRules)
        self.learned = kernel.BpfMap.pinned(pin_dir / "dns_learned", layout.DnsLearnedKey, layout.DnsLearnedVal)
        self.written: list[tuple[kernel.BpfMap, object]] = []

    def write(self, set_id: int, ps: node_pb2.PolicySetState, learned: dict[tuple[int, bytes], list]) -> None:
        for text, rules in compile_set(ps, "set").fqdns.items():
            key = layout.PolicyFqdnKey(set_id, pattern_id(text))
            self.fqdns.update(key, _rules(rules))
            self.written.append((self.fqdns, key))
        for (wid, addr), slots in learned.items():
            key = layout.DnsLearnedKey(wid, 0, layout.pack_addr(addr))
            self.learned.update(key, learned_val(Learned(wid, "", 1, tuple(slots))))
            self.written.append((self.learned, key))

    def clear(self) -> None:
        for m, key in self.written:
            m.delete(key)
        self.written.clear()

    def close(self) -> None:
        self.clear()
        self.fqdns.close()
        self.learned.close()


def random_learned(rng: random.Random, addrs: list[bytes]) -> dict[tuple[int, bytes], list]:
    """Some of the addresses learned through 1-4 patterns (one maybe no
    set's), expired or not (the judge does not look)."""
    out = {}
    for a in addrs:
        if rng.random() < 0.6:
            pats = rng.sample((*FQDN_POOL, GONE), rng.randint(1, layout.DNS_LEARNED_SLOTS))
            out[(WID, a)] = [LearnedSlot(pattern_id(p), rng.choice((1, 10**19)), 60) for p in pats]
    return out


@pytest.fixture
def extra_sockets(node, backends):
    """IPv6 and v4-mapped sockets besides the node's."""
    six = backends("v6", "::1", netns=node.ns1)
    six_u = backends("v6", "::1", netns=node.ns1, proto="udp")
    c6, c4 = node.clients["w1-sub-ns1"], node.clients["w1"]
    assert c6.call("tcp_open", id="v6", addr="::1", port=six.port).get("backend") == "v6"
    assert c6.call("udp_open", id="v6-udp", addr="::1", port=six_u.port).get("backend") == "v6"
    assert c4.call("tcp_open", id="mapped-open", addr="::ffff:" + OPEN,
                   port=node.direct["open-tcp"][1]).get("backend") == "open"
    assert c4.call("tcp_open", id="mapped-shut", addr="::ffff:" + SHUT,
                   port=node.direct["shut-tcp"][1]).get("backend") == "shut"
    return [six.port, six_u.port]


@pytest.fixture
def policy_maps(node):
    m = PolicyMaps(node.agent.pin_dir)
    try:
        yield m
    finally:
        m.close()


def _state(node, ps: node_pb2.PolicySetState, version: int = 3) -> node_pb2.NodeState:
    base = node.state(version, "")
    after = node_pb2.NodeState()
    after.CopyFrom(base)
    after.policy_sets.append(ps)
    after.workloads[0].policy_set = ps.name  # w1
    return after


def test_kernel_judge_agrees_with_the_evaluator(node, extra_sockets, policy_maps):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    ports = [*node.ports.values(), *(p for _, p in node.direct.values()), node.closer.port, *extra_sockets]
    before = node.state(2, "")
    w1_cgroups = None
    checked = denied = 0
    fq = FqdnMaps(node.agent.pin_dir)
    with term.Terminator(node.agent.pin_dir, method="kfunc") as t:
        assert t.kernel_judge, t.judge_unavailable
        listing = None
        kept_by_fqdn = 0
        for i in range(60):
            ps = random_set(rng, f"ps-r{i}", node, ports)
            policy_maps.write(FIRST_ID + i, ps)
            after = _state(node, ps)
            if w1_cgroups is None:
                job = policy_job(f"r{i}", before, after, node.cgroup_ids(after), dry_run=True)
                assert job is not None and [w.name for w in job.workloads] == ["w1"]
                w1_cgroups = set(job.cgroups)
                listing = t.list_cgroups(w1_cgroups)
                assert len(listing.sockets) >= 30, len(listing.sockets)
                addrs = sorted({s.dst for s in listing.sockets})
            learned = random_learned(rng, addrs)
            fq.clear()
            fq.write(FIRST_ID + i, ps, learned)
            table = {k: frozenset(x.pattern for x in v) for k, v in learned.items()}
            job = policy_job(f"r{i}", before, after, node.cgroup_ids(after),
                             fqdn=FqdnSource({"w1": WID}, MemoryLearned(table)))
            want = {c.socket.cookie for c in judge(job, listing.sockets, learned=table)}
            kept_by_fqdn += len({c.socket.cookie for c in judge(job, listing.sockets, learned={})} - want)
            got, rep = t.judge_cgroups({cg: FIRST_ID + i for cg in w1_cgroups}, destroy=False,
                                       cgroup_workloads={cg: WID for cg in w1_cgroups})
            assert rep is None and got.errors == []
            assert got.judged == len(listing.sockets), (got.judged, len(listing.sockets))
            kernel = {s.cookie for s in got.sockets}
            assert kernel == want, (seed, i, ps, sorted(kernel ^ want))
            checked += got.judged
            denied += len(kernel)
        print(f"seed {seed}: {checked} socket verdicts agree ({denied} denied, {kept_by_fqdn} kept by what was "
              f"learned) over 60 random sets")
    fq.close()
    assert 0 < denied < checked and kept_by_fqdn > 0
    node.check()  # list mode destroyed nothing


@pytest.mark.parametrize("method", ["kfunc", "netlink"])
def test_kernel_judge_destroys_what_it_reports(node, extra_sockets, policy_maps, method):
    """run_policy_job with the kernel judge: the denied sockets of the
    node's scenario die (with either method), the report names them with
    their reasons, nothing else is touched."""
    before, after = node.state(2, ""), node.state(3, "ps-new")
    ps_new = next(s for s in after.policy_sets if s.name == "ps-new")
    policy_maps.write(FIRST_ID, ps_new)
    mine = node.cookies(lambda client, sid: (client, sid) in {("w1-sub-ns1", "v6"), ("w1-sub-ns1", "v6-udp"),
                                                             ("w1", "mapped-shut")})
    want = set(node.cookies(node.denied)) | set(mine)
    with term.Terminator(node.agent.pin_dir, method=method) as t:
        job = policy_job("real", before, after, node.cgroup_ids(after), set_ids={"ps-new": FIRST_ID, "ps-closed": 1})
        run = run_policy_job(t, job)
    assert run.judge == "kernel" and run.method == method
    assert {c.socket.cookie for c in run.condemned} == want
    assert run.destroyed.destroyed == len(want) and run.destroyed.failed == 0
    assert run.listing.judged > len(want)
    assert all(c.reason.startswith("policy set ps-new: ") for c in run.condemned)
    assert node.clients["w1"].call("tcp_ping", id="mapped-open").get("backend") == "open"
    assert node.clients["w1-sub-ns1"].call("tcp_ping", id="v6").get("error") == DEAD_TCP
    node.check(node.denied)


def test_judge_programs_refused_fall_back_to_user_space(node, policy_maps, monkeypatch):
    """Judge programs that do not load (here: the pinned services map is not
    the one this build expects) leave the termination object without them:
    the node says so in its capabilities, and policy jobs are judged in user
    space, with the same result."""
    monkeypatch.setattr(term, "JUDGE_REUSE", {**term.JUDGE_REUSE, "services": (1, 1)})
    parts = features.load(node.agent.pin_dir, terminate_method="kfunc")
    try:
        caps = parts.features.capabilities()
        assert caps["sock_destroy"] == "kfunc", caps
        assert caps["policy_kernel_judge"].startswith("no: the judge programs do not load"), caps
        assert caps["policy_judge"].startswith("user: the judge programs do not load"), caps
        t = parts.terminator
        assert not t.kernel_judge
        with pytest.raises(term.TerminationError, match="unavailable"):
            t.judge_cgroups({1: 1})
        before, after = node.state(2, ""), node.state(3, "ps-new")
        policy_maps.write(FIRST_ID, next(s for s in after.policy_sets if s.name == "ps-new"))
        want = set(node.cookies(node.denied))
        run = run_policy_job(t, policy_job("fallback", before, after, node.cgroup_ids(after),
                                           set_ids={"ps-new": FIRST_ID, "ps-closed": 1}))
    finally:
        parts.close()
    assert run.judge == "user" and {c.socket.cookie for c in run.condemned} == want
    assert run.destroyed.destroyed == len(want)
    node.check(node.denied)
