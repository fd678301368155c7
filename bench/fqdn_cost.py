"""FQDN policy connect cost (issue 13): what the connect hook costs per call
for a workload whose destination is allowed by an address its DNS learner
learned (dns_learned holding 10k entries of it), against no workload and
against the same destination allowed by a prefix; measured as
bench/policy_cost.py measures (the connect4 program's run time per call from
kernel.bpf_stats_enabled, and ns per socket()+connect()+close() of a UDP
socket), variants interleaved over rounds, medians reported.

    python -m bench.fqdn_cost [--rounds 7 --connects 200000]

The learned entries are written into the agent's pinned dns_learned (as the
kernel would after answers), so no DNS traffic runs during the measure.
Needs root; everything it creates is removed on exit, Ctrl-C or failure.
"""
from __future__ import annotations

import ctypes as ct
import ipaddress
import os
import random
import statistics
import sys
import time
from pathlib import Path

from bench import agent, lab, policy_cost
from bench.backends import compile_c
from bench.nat import Service
from bench.policy_cost import DIRECT, DIRECT_PORT, SOURCE, VIP, VIP_PORT, Variant, measure, workload
from socklb.dataplane import dns, layout
from socklb.dataplane.kernel import BpfMap, cgroup2_mount, ensure_bpffs

PATTERN = "*.bench.test"
LEARNED = 10_000


def sets() -> list[dict]:
    allow_udp9 = {"port": DIRECT_PORT, "end_port": DIRECT_PORT, "protocol": "PROTOCOL_UDP", "action": "ACTION_ALLOW"}
    dns_rule = {"port": 53, "end_port": 53, "action": "ACTION_ALLOW"}
    return [
        {"name": "s-cidr", "prefixes": [{"prefix": f"{DIRECT}/32", "rules": [allow_udp9]}]},
        {"name": "s-fqdn", "prefixes": [{"prefix": "127.0.0.53/32", "rules": [dns_rule]}],
         "fqdns": [{"pattern": PATTERN, "rules": [allow_udp9]}],
         "dns_servers": [{"address": "127.0.0.53", "port": 53}]},
    ]


def learn(pin_dir: Path, cgroup: Path) -> None:
    """LEARNED entries for the workload of `cgroup`, DIRECT among them."""
    workloads = BpfMap.pinned(pin_dir / "workloads", ct.c_uint64, layout.Workload)
    try:
        e = workloads.lookup(ct.c_uint64(os.stat(cgroup).st_ino))
        if e is None:
            raise RuntimeError(f"{cgroup}: no workload entry")
        wid = e.id
    finally:
        workloads.close()
    learner = dns.DnsLearner.pinned(pin_dir)
    try:
        m = learner.maps["dns_learned"]
        expiry = dns.boottime_ns() + 3600 * 10**9
        pid = dns.pattern_id(PATTERN)
        rng = random.Random(1)
        addrs = {DIRECT} | {str(ipaddress.IPv4Address(0x0A000000 | rng.getrandbits(24))) for _ in range(LEARNED)}
        slots = (dns.LearnedSlot(pid, expiry, 3600),)
        for a in [*sorted(addrs)[:LEARNED], DIRECT]:
            m.update(layout.DnsLearnedKey(wid, 0, layout.pack_addr(a)), dns.learned_val(dns.Learned(wid, a, 1, slots)))
    finally:
        learner.close()


def build(args, teardown: lab.Teardown, workdir: Path) -> list[Variant]:
    ensure_bpffs()
    mount, ns = cgroup2_mount(), f"{lab.PREFIX}fqdn-{os.getpid()}"  # the cgroup and namespace share the name
    root = lab.make_cgroup(mount / ns, teardown)
    lab.add_netns(ns, teardown)
    services = {"dns": Service(VIP, VIP_PORT, "udp", [("127.0.0.2", 5353)])}  # the agents' state needs one
    cg = lab.make_cgroup(root / "policy", teardown)
    for child in ("w-cidr", "w-fqdn"):
        lab.make_cgroup(cg / child, teardown)
    pin = Path("/sys/fs/bpf") / f"{lab.PREFIX}fqdn-{os.getpid()}"
    paths = agent.AgentPaths(workdir / "fqdn.yaml", cg, pin, workdir / "fqdn.sock", workdir / "fqdn.log")
    loads = [workload("w-cidr", cg / "w-cidr", mount, "s-cidr"), workload("w-fqdn", cg / "w-fqdn", mount, "s-fqdn")]
    agent.start_agent(paths, services, teardown, args.agent_timeout, {"workloads": loads, "policy_sets": sets()})
    nopolicy = lab.make_cgroup(root / "nopolicy", teardown)
    npaths = agent.AgentPaths(workdir / "none.yaml", nopolicy, Path(f"{pin}-none"), workdir / "none.sock",
                              workdir / "none.log")
    agent.start_agent(npaths, services, teardown, args.agent_timeout)
    time.sleep(0.5)
    learn(pin, cg / "w-fqdn")
    return [Variant("no workload", nopolicy, nopolicy, DIRECT, DIRECT_PORT, ns),
            Variant("allowed by a prefix", cg / "w-cidr", cg, DIRECT, DIRECT_PORT, ns),
            Variant(f"allowed by FQDN ({LEARNED // 1000}k learned)", cg / "w-fqdn", cg, DIRECT, DIRECT_PORT, ns)]


def prepare(args, teardown: lab.Teardown) -> tuple[Path, list[Variant]]:
    """The client program, the variants, and the kernel's BPF run-time
    statistics switched on (restored by the teardown)."""
    workdir = lab.make_tempdir(teardown)
    exe, variants = compile_c(SOURCE, workdir), build(args, teardown, workdir)
    agent.enable_bpf_stats(teardown)
    return exe, variants


def main(argv=None) -> int:
    args = policy_cost.parse_args(argv)
    teardown = lab.Teardown()
    lab.install_exit_handlers(teardown)
    try:
        exe, variants = prepare(args, teardown)
        hooks: dict[str, list[float]] = {v.name: [] for v in variants}
        clients: dict[str, list[float]] = {v.name: [] for v in variants}
        for r in range(args.rounds):  # interleaved, each round starting one variant further
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                hook, client = measure(v, exe, args.connects)
                hooks[v.name].append(hook)
                clients[v.name].append(client)
            lab.log(f"round {r + 1}/{args.rounds}")
        med = {name: (statistics.median(hooks[name]), statistics.median(clients[name])) for name in hooks}
        none, prefix = med["no workload"], med["allowed by a prefix"]
        print(f"medians of {args.rounds} rounds x {args.connects} UDP connect() calls")
        for name, (hook, client) in med.items():
            print(f"  {name}: hook {hook:.1f} ns/call ({hook / none[0]:.2f}x none, {hook / prefix[0]:.2f}x prefix); "
                  f"client {client:.1f} ns/op ({client / none[1]:.3f}x none)")
    finally:
        teardown.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
