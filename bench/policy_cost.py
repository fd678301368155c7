"""Policy connect cost: what socklb's connect hook costs per call without any
workload, with workloads but none for the caller, and for a restricted
workload whose set decides a VIP, one CIDR, 10k CIDRs, or is one of 1000
sets; with --baseline DIR also the hook of another socklb tree (e.g. the one
before policy existed: `git archive REV | tar -x -C DIR`).

Two measures per call, variants interleaved over rounds, medians reported:
- hook: the connect4 program's own run time, as the kernel counts it
  (kernel.bpf_stats_enabled, switched on for the run and restored after:
  run_time_ns / run_cnt of the program);
- client: ns per socket() + connect() + close() of a UDP socket
  (bench/connect_loop.c): a UDP connect() runs the hook and a route lookup
  and sends nothing, so no server or handshake blurs the difference.

    python -m bench.policy_cost [--rounds 7 --connects 200000 --baseline DIR]

Needs root. Everything it creates (namespace, cgroups, pins, agents, temp
files) is removed on exit, Ctrl-C or failure.
"""
from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import agent, lab, loadgen
# Re-exported: bench/fqdn_cost.py and fqdn_dns.py (another owner's) take them from here.
from bench.agent import BPF_STATS as STATS, prog_stats  # noqa: F401
from bench.backends import compile_c
from bench.nat import Service
from socklb.dataplane.kernel import cgroup2_mount, ensure_bpffs

VIP, VIP_PORT = "127.96.1.1", 53        # a UDP frontend
DIRECT, DIRECT_PORT = "127.0.0.2", 9    # not a frontend: decided by prefixes
SOURCE = Path(__file__).resolve().parent / "connect_loop.c"


@dataclass(frozen=True)
class Variant:
    name: str
    client_cgroup: Path
    agent_cgroup: Path  # whose connect4 program the client's calls run
    addr: str
    port: int
    ns: str


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.policy_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--connects", type=int, default=200_000, help="connect() calls per variant and round")
    p.add_argument("--baseline", type=Path, help="another socklb tree whose agent is measured as `before`")
    p.add_argument("--agent-timeout", type=float, default=120.0)
    return p.parse_args(argv)


def prefixes(rng: random.Random, n: int) -> list[str]:
    """n distinct prefixes in 10.0.0.0/8 (lengths 16..32), none holding DIRECT."""
    out: set[str] = set()
    while len(out) < n:
        length = rng.randint(16, 32)
        addr = (10 << 24 | rng.getrandbits(24)) & ~((1 << (32 - length)) - 1)
        out.add(f"{addr >> 24}.{addr >> 16 & 255}.{addr >> 8 & 255}.{addr & 255}/{length}")
    return sorted(out)


def policy_set(name: str, cidrs: list[str], vip: bool = False) -> dict:
    allow = {"port": 0, "end_port": 65535, "action": "ACTION_ALLOW"}
    s = {"name": name, "prefixes": [{"prefix": c, "rules": [{"port": 443, "end_port": 443, "protocol": "PROTOCOL_TCP",
                                                              "action": "ACTION_ALLOW"}]} for c in cidrs]
         + [{"prefix": "127.0.0.0/8", "rules": [allow]}]}
    if vip:
        s["frontends"] = [{"service": "dns", "frontend": {"address": VIP, "port": VIP_PORT,
                                                         "protocol": "PROTOCOL_UDP"}, "action": "ACTION_ALLOW"}]
    return s


def workload(name: str, cg: Path, mount: Path, ps: str = "") -> dict:
    return {"name": name, "cgroup": str(cg.relative_to(mount)), "policy_set": ps}


def connect_prog(cgroup: Path) -> int:
    prog = agent.hook_programs(cgroup).get("connect4")
    if prog is None:
        raise RuntimeError(f"no connect4 program on {cgroup}")
    return prog


def build(args, teardown: lab.Teardown, workdir: Path) -> list[Variant]:
    mount = cgroup2_mount()
    ensure_bpffs()
    root = lab.make_cgroup(mount / f"{lab.PREFIX}pol-{os.getpid()}", teardown)
    ns = f"{lab.PREFIX}pol-{os.getpid()}"
    lab.add_netns(ns, teardown)
    services = {"dns": Service(VIP, VIP_PORT, "udp", [("127.0.0.2", 5353)])}
    bpf = Path("/sys/fs/bpf")

    def start(name: str, extra: dict | None = None, tree: Path | None = None, children=()) -> Path:
        cg = lab.make_cgroup(root / name, teardown)
        for child in children:  # registered after the parent: removed before it
            lab.make_cgroup(cg / child, teardown)
        paths = agent.AgentPaths(workdir / f"{name}.yaml", cg, bpf / f"{lab.PREFIX}pol-{os.getpid()}-{name}",
                                 workdir / f"{name}.sock", workdir / f"{name}.log")
        agent.start_agent(paths, services, teardown, args.agent_timeout, extra, tree)
        return cg

    rng = random.Random(1)
    many = [f"w-many-{i}" for i in range(1000)]
    cg_new = root / "policy"
    sets = [policy_set("s-vip", [], vip=True), policy_set("s-1", []), policy_set("s-10k", prefixes(rng, 10_000))]
    sets += [policy_set(f"s-many-{i}", prefixes(rng, 10)) for i in range(len(many))]
    loads = [workload("w-vip", cg_new / "w-vip", mount, "s-vip"), workload("w-cidr1", cg_new / "w-cidr1", mount, "s-1"),
             workload("w-cidr10k", cg_new / "w-cidr10k", mount, "s-10k"),
             workload("w-free", cg_new / "w-free", mount)]
    loads += [workload(m, cg_new / m, mount, f"s-many-{i}") for i, m in enumerate(many)]
    start("policy", {"workloads": loads, "policy_sets": sets},
          children=["plain", "w-vip", "w-cidr1", "w-cidr10k", "w-free", *many])
    nopolicy = start("nopolicy")
    variants = [Variant("no workload", nopolicy, nopolicy, DIRECT, DIRECT_PORT, ns),
                Variant("no workload, VIP", nopolicy, nopolicy, VIP, VIP_PORT, ns),
                Variant("caller in no workload", cg_new / "plain", cg_new, DIRECT, DIRECT_PORT, ns),
                Variant("unrestricted workload", cg_new / "w-free", cg_new, DIRECT, DIRECT_PORT, ns),
                Variant("VIP verdict", cg_new / "w-vip", cg_new, VIP, VIP_PORT, ns),
                Variant("1 CIDR", cg_new / "w-cidr1", cg_new, DIRECT, DIRECT_PORT, ns),
                Variant("10k CIDRs", cg_new / "w-cidr10k", cg_new, DIRECT, DIRECT_PORT, ns),
                Variant("1 of 1000 sets (10k CIDRs)", cg_new / "w-many-0", cg_new, DIRECT, DIRECT_PORT, ns)]
    if args.baseline:
        before = start("before", tree=args.baseline)
        variants[:0] = [Variant("before (baseline)", before, before, DIRECT, DIRECT_PORT, ns),
                        Variant("before, VIP", before, before, VIP, VIP_PORT, ns)]
    return variants


def measure(v: Variant, exe: Path, connects: int) -> tuple[float, float]:
    programs = {"connect4": connect_prog(v.agent_cgroup)}
    out, costs = agent.hook_costs(programs, lambda: loadgen.run_in_client(
        v.ns, v.client_cgroup, [str(exe), v.addr, str(v.port), str(connects)], timeout=600))
    kv = loadgen.parse_kv(out)
    if int(kv["errors"]):
        raise RuntimeError(f"{v.name}: {kv['errors']} connect() calls failed: {out}")
    hook = costs.get("connect4", agent.HookCost(0, 0.0))
    if hook.calls < connects:
        raise RuntimeError(f"{v.name}: the hook ran {hook.calls} times for {connects} calls")
    return hook.ns_per_call, float(kv["ns_per_op"])


def main(argv=None) -> int:
    args = parse_args(argv)
    teardown = lab.Teardown()
    lab.install_exit_handlers(teardown)
    try:
        workdir = lab.make_tempdir(teardown)
        exe = compile_c(SOURCE, workdir)
        variants = build(args, teardown, workdir)
        agent.enable_bpf_stats(teardown)
        results: dict[str, list[tuple[float, float]]] = {v.name: [] for v in variants}
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                results[v.name].append(measure(v, exe, args.connects))
            lab.log(f"round {r + 1}/{args.rounds} done")
        base = statistics.median(h for h, _ in results["no workload"])
        base_client = statistics.median(c for _, c in results["no workload"])
        print(f"\n{'variant':32} {'hook ns/call':>12} {'vs none':>8} {'client ns/op':>13} {'vs none':>8}"
              f"   (medians of {args.rounds} rounds x {args.connects} calls)")
        for v in variants:
            hook = statistics.median(h for h, _ in results[v.name])
            client = statistics.median(c for _, c in results[v.name])
            print(f"{v.name:32} {hook:12.1f} {hook / base:8.2f} {client:13.1f} {client / base_client:8.3f}")
    finally:
        teardown.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
