"""Policy connect cost against nftables: TCP connects (and the CPU each one
costs) from a restricted workload, with socklb's egress policy at 1 policy
(1 CIDR), 1 of 1000 policies (10 CIDRs each) and 10k CIDRs, next to no
policy and to the same allow list as an nftables set in the client's
network namespace, measured in the same run.

    python -m bench.policy_connect [--rounds 7 --connects 20000 --cidrs 10000 --sets 1000] [--no-doc]

The path: a client namespace and a server namespace joined by a veth
(bench.lab.build_net: 192.0.2.1 -> 192.0.2.2, no default route); a server
(bench/tcp_connect.c) accepting and closing on 192.0.2.2; the client,
bench/tcp_connect.c, does COUNT x socket + connect + close (SO_LINGER 0: a
reset, no TIME_WAIT). Every allow list holds the server's address
(192.0.2.2/32, any port) plus the rule count's other prefixes (distinct
/24..32 inside 10.0.0.0/8, which never match). Variants, interleaved over
the rounds (order rotated each round):

  no BPF                  a cgroup with no program, no nftables
  socklb, no policy       a cgroup with the socklb agent's programs, no workload
  socklb, 1 policy        a restricted workload, its set: 192.0.2.2/32
  socklb, 1 of 1000       one of 1000 restricted workloads (1000 sets of 10 CIDRs + 192.0.2.2/32)
  socklb, 10k CIDRs       a workload whose set has 10k CIDRs + 192.0.2.2/32
  nft, N CIDRs            the `socklb, no policy` cgroup (socklb balances, nftables
                          filters: what a user would add instead of socklb's policy)
                          and, in the variant's own client namespace, an
                          output chain `ip daddr @allowed accept; reject` (TCP: with a reset) with the
                          same allow list as an interval set (1, 10 = one pod's share
                          of 1000 policies, since each pod namespace has its own
                          table, and 10k)
  nft + ct, 10k CIDRs     the same with `ct state established,related accept` first
                          (the usual stateful ruleset; conntrack in the client namespace)

Phase 1, per variant and round: connects/s (the client's wall time), CPU per connect
(cgroup v2 usage of the client's and the server's cgroups over the run, the
`ip netns exec` start included, the same for every variant) and the connect4
program's own run time (kernel.bpf_stats_enabled). Before the rounds each
restricted variant is checked to refuse a destination outside its allow
list (192.0.2.3: socklb EPERM, nftables an ICMP admin-prohibited error) and
to reach the server.

Phase 2, paired (--paired-rounds, --block): one `tcp_connect cycle` process
goes through every variant in turn, --block connects each, order rotated
each round; before each block it moves itself into the variant's cgroup
and network namespace, and it times the block with its own CPU clock
(CLOCK_PROCESS_CPUTIME_ID). The variants of a round run a fraction of a
second apart, so the shared machine's swings hit them alike: the CPU
comparisons and the target verdicts use this phase's per-round ratios.
Every nftables variant has a client namespace of its own (198.18.N.1 ->
198.18.N.2 over its own veth), its table loaded once; one control row runs
socklb without policy in such a namespace with no table.

Needs root. Everything it creates (namespaces, nftables tables in them,
cgroups, pins, agents, temp files) is removed on exit, Ctrl-C or failure.
"""
from __future__ import annotations

import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import agent, lab, loadgen
from bench.backends import compile_c, stop_process
from bench.nat import Service
from bench.policy_cost import connect_prog
from bench.report import bench_parser, fmt, median, paired_ratios, publish, quartiles, target_text
from socklb.dataplane.kernel import cgroup2_mount, ensure_bpffs

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- policy_connect:begin -->", "<!-- policy_connect:end -->"
SOURCE = Path(__file__).resolve().parent / "tcp_connect.c"
SERVER, PORT = lab.BACKEND_ADDR, 8080
DENIED = "192.0.2.3"            # on the veth's /24, in no allow list
NFT_TABLE = "socklb_bench_policy"
TARGET_CPU = 1.05               # issue 12: socklb at 10k rules <= 1.05x the CPU of no policy
AHEAD = ("<", 1.0)              # issue 12: and ahead of nftables (socklb / nft CPU below 1)
ANY_PORT = [{"port": 0, "end_port": 65535, "action": "ACTION_ALLOW"}]


@dataclass
class Variant:
    name: str
    cgroup: Path                  # the client's cgroup
    agent_cgroup: Path | None     # whose connect4 program runs (None: no BPF)
    ns: str = ""                  # the client's network namespace
    server: str = SERVER          # the server's address seen from there
    nft: list[str] | None = None  # the allow list of an nftables variant (its namespace's table)
    ct: bool = False
    restricted: bool = False
    cpu: list[float] = field(default_factory=list)    # µs per connect, per round (cgroups' CPU)
    rate: list[float] = field(default_factory=list)   # connects/s, per round
    hook: list[float] = field(default_factory=list)   # connect4 ns per call, per round
    pcpu: list[float] = field(default_factory=list)   # paired phase: client µs per connect, per round
    prate: list[float] = field(default_factory=list)  # paired phase: connects/s, per round

    @property
    def denied(self) -> str:
        """An address next to the server's, in no allow list."""
        return self.server.rsplit(".", 1)[0] + ".3"


def parse_args(argv):
    p = bench_parser("bench.policy_connect", __doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--connects", type=int, default=20_000, help="TCP connects per variant and round")
    p.add_argument("--cidrs", type=int, default=10_000, help="CIDRs of the large allow list")
    p.add_argument("--sets", type=int, default=1000, help="restricted workloads (each its own set of 10 CIDRs)")
    p.add_argument("--paired-rounds", type=int, default=40, help="rounds of the paired phase (0: none)")
    p.add_argument("--block", type=int, default=2000, help="connects per variant and round in the paired phase")
    p.add_argument("--cpu", type=int, default=1, help="CPU the client and the server are pinned to (-1: none)")
    p.add_argument("--agent-timeout", type=float, default=180.0)
    a = p.parse_args(argv)
    a.argv = " ".join(argv if argv is not None else sys.argv[1:])
    return a


def disjoint_prefixes(rng: random.Random, n: int) -> list[str]:
    """n prefixes inside 10.0.0.0/8, each in its own /24 (length 24..32), so
    no two overlap (an nftables interval set refuses overlaps) and none
    holds the server."""
    if n > 65536:
        raise ValueError("at most 65536 disjoint /24s in 10.0.0.0/8")
    out = []
    for block in rng.sample(range(65536), n):
        length = rng.randint(24, 32)
        host = rng.getrandbits(8) & ~((1 << (32 - length)) - 1) & 255
        out.append(f"10.{block >> 8}.{block & 255}.{host}/{length}")
    return out


def allow_list(cidrs: list[str], server: str = SERVER) -> list[str]:
    return [*cidrs, f"{server}/32"]


def policy_set(name: str, allowed: list[str]) -> dict:
    return {"name": name, "prefixes": [{"prefix": c, "rules": ANY_PORT} for c in allowed]}


def nft_ruleset(allowed: list[str], ct: bool) -> str:
    elements = ",\n".join(allowed)
    first = "ct state established,related accept\n    " if ct else ""
    return (f"table ip {NFT_TABLE} {{\n  set allowed {{\n    type ipv4_addr\n    flags interval\n"
            f"    elements = {{ {elements} }}\n  }}\n"
            f"  chain out {{\n    type filter hook output priority 0; policy accept;\n"
            f"    {first}ip daddr @allowed accept\n    meta l4proto tcp reject with tcp reset\n"
            f"    reject with icmp type admin-prohibited\n  }}\n}}\n")


def load_nft(ns: str, allowed: list[str], ct: bool, workdir: Path) -> float:
    """The variant's table, in its own namespace for the whole run (it goes
    with the namespace); seconds `nft -f` took."""
    path = workdir / f"{ns}.nft"
    path.write_text(nft_ruleset(allowed, ct))
    t0 = time.monotonic()
    lab.run(lab.netns_exec(ns, ["nft", "-f", str(path)]))
    return time.monotonic() - t0


def add_client_ns(net: lab.Net, idx: int, teardown: lab.Teardown) -> tuple[str, str]:
    """Another client namespace with its own veth to the server namespace:
    198.18.idx.1 -> 198.18.idx.2 (idx >= 1; no default route); (name, server address)."""
    ns = f"{net.client_ns}{idx}"
    lab.add_netns(ns, teardown)
    here, there = f"pc{idx}", f"ps{idx}"
    lab.run(["ip", "link", "add", "name", here, "netns", ns, "type", "veth", "peer", "name", there,
             "netns", net.backend_ns])
    for where, ifname, host in ((ns, here, 1), (net.backend_ns, there, 2)):
        lab.run(lab.netns_exec(where, ["ip", "addr", "add", f"198.18.{idx}.{host}/24", "dev", ifname]))
        lab.run(lab.netns_exec(where, ["ip", "link", "set", ifname, "up"]))
    return ns, f"198.18.{idx}.2"


def build(args, teardown: lab.Teardown, workdir: Path, exe: Path) -> tuple[list[Variant], dict[int, float]]:
    mount = cgroup2_mount()
    ensure_bpffs()
    tag = f"{lab.PREFIX}pconn-{os.getpid()}"
    root = lab.make_cgroup(mount / tag, teardown)
    net = lab.build_net(teardown, "198.18.0.10", [])
    server_cg = lab.make_cgroup(root / "server", teardown)
    proc = subprocess.Popen(lab.netns_exec(net.backend_ns, [str(exe), "server", "0.0.0.0", str(PORT)]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lab.join_cgroup(server_cg, cpus(args)))
    teardown.add("tcp server", lambda: stop_process(proc))
    lab.wait_until_listening(net.backend_ns, "tcp", [PORT])
    services = {"dns": Service("127.96.1.1", 53, "udp", [("127.0.0.2", 5353)])}
    bpf = Path("/sys/fs/bpf")

    def start(name: str, extra: dict | None = None, children=()) -> Path:
        cg = lab.make_cgroup(root / name, teardown)
        for child in children:  # registered after the parent: removed before it
            lab.make_cgroup(cg / child, teardown)
        paths = agent.AgentPaths(workdir / f"{name}.yaml", cg, bpf / f"{tag}-{name}",
                                 workdir / f"{name}.sock", workdir / f"{name}.log")
        agent.start_agent(paths, services, teardown, args.agent_timeout, extra)
        return cg

    rng = random.Random(12)
    big_cidrs = disjoint_prefixes(rng, args.cidrs)
    many_cidrs = [disjoint_prefixes(rng, 10) for _ in range(args.sets)]
    big, many = allow_list(big_cidrs), [allow_list(c) for c in many_cidrs]
    one = allow_list([])
    sets = [policy_set("s-1", one), policy_set("s-big", big)]
    sets += [policy_set(f"s-many-{i}", m) for i, m in enumerate(many)]
    pol = root / "policy"
    names = ["w-1", "w-big", *(f"w-many-{i}" for i in range(args.sets))]
    loads = [{"name": n, "cgroup": str((pol / n).relative_to(mount)), "policy_set": s["name"]}
             for n, s in zip(names, sets)]
    t0 = time.monotonic()
    start("policy", {"workloads": loads, "policy_sets": sets}, children=names)
    log_load = time.monotonic() - t0
    nopolicy = start("nopolicy")
    plain = lab.make_cgroup(root / "plain", teardown)
    k = len(big) - 1
    main = dict(ns=net.client_ns)
    variants = [
        Variant("no BPF", plain, None, **main),
        Variant("socklb, no policy", nopolicy, nopolicy, **main),
        Variant("socklb, 1 policy (1 CIDR)", pol / "w-1", pol, restricted=True, **main),
        Variant(f"socklb, 1 of {args.sets} policies (11 CIDRs each)", pol / "w-many-0", pol, restricted=True, **main),
        Variant(f"socklb, {k} CIDRs", pol / "w-big", pol, restricted=True, **main),
    ]
    # nftables: each variant a namespace of its own (with its veth to the server), its table loaded once;
    # the control row: socklb's no-policy cgroup in such a namespace without a table.
    nft_loads: dict[int, float] = {}
    for idx, (name, cidrs, ct) in enumerate([("socklb, no policy, 2nd namespace (no table)", None, False),
                                             ("nft, 1 CIDR", [], False),
                                             ("nft, 11 CIDRs (one pod's table)", many_cidrs[0], False),
                                             (f"nft, {k} CIDRs", big_cidrs, False),
                                             (f"nft + ct, {k} CIDRs", big_cidrs, True)], start=1):
        ns, server = add_client_ns(net, idx, teardown)
        lab.tune_client_ns(ns)
        v = Variant(name, nopolicy, nopolicy, ns=ns, server=server, restricted=cidrs is not None,
                    nft=None if cidrs is None else allow_list(cidrs, server), ct=ct)
        if v.nft is not None:
            nft_loads[len(v.nft)] = load_nft(ns, v.nft, ct, workdir)
        variants.append(v)
    lab.log(f"policy agent with {len(sets)} sets ({sum(len(s['prefixes']) for s in sets)} prefixes) "
            f"ready in {log_load:.1f}s")
    return variants, nft_loads


def cpus(args) -> set[int] | None:
    return None if args.cpu < 0 else {args.cpu}


def probe(v: Variant, exe: Path, addr: str) -> tuple[int, str]:
    """One connect: (exit code, what it printed: errno=N (text))."""
    res = subprocess.run(lab.netns_exec(v.ns, [str(exe), "probe", addr, str(PORT)]),
                         preexec_fn=lab.join_cgroup(v.cgroup), capture_output=True, text=True, timeout=30)
    return res.returncode, res.stdout.strip()


def check(variants: list[Variant], exe: Path) -> dict[str, str]:
    """Each variant reaches the server; each restricted one refuses an
    address outside its list: what each refusal looked like."""
    seen = {}
    for v in variants:
        ok, how = probe(v, exe, v.server)
        if ok != 0:
            raise RuntimeError(f"{v.name}: the server at {v.server}:{PORT} is not reachable ({how})")
        if v.restricted:
            denied, how = probe(v, exe, v.denied)
            if not denied:
                raise RuntimeError(f"{v.name}: {v.denied} was reachable: the policy does not apply")
            seen[v.name] = how.split(" ", 1)[-1].strip("()")
    return seen


def measure(v: Variant, exe: Path, connects: int, server_cg: Path, pin: set[int] | None) -> None:
    prog = connect_prog(v.agent_cgroup) if v.agent_cgroup else None
    c0 = agent.prog_stats(prog) if prog else (0, 0)
    cpu0 = lab.cgroup_cpu_usec(v.cgroup) + lab.cgroup_cpu_usec(server_cg)
    out = loadgen.run_in_client(v.ns, v.cgroup, [str(exe), "client", v.server, str(PORT), str(connects)],
                                timeout=600, cpus=pin)
    cpu1 = lab.cgroup_cpu_usec(v.cgroup) + lab.cgroup_cpu_usec(server_cg)
    c1 = agent.prog_stats(prog) if prog else (0, 0)
    kv = loadgen.parse_kv(out)
    if int(kv["errors"]):
        raise RuntimeError(f"{v.name}: {kv['errors']} connects failed ({kv['eperm']} EPERM): {out}")
    v.cpu.append((cpu1 - cpu0) / connects)
    v.rate.append(1e9 / float(kv["ns_per_op"]))
    v.hook.append((c1[1] - c0[1]) / (c1[0] - c0[0]) if prog and c1[0] > c0[0] else float("nan"))
    if prog and c1[0] - c0[0] < connects:
        raise RuntimeError(f"{v.name}: connect4 ran {c1[0] - c0[0]} times for {connects} connects")


def paired(variants: list[Variant], exe: Path, block: int, rounds: int, pin: set[int] | None) -> None:
    """One client process going through every variant in turn, `block`
    connects each (order rotated each round): it moves itself into the
    variant's cgroup and namespace, then times the block with its own CPU
    clock. Variants a fraction of a second apart: what the shared machine
    does to one round hits all of them alike."""
    specs = [f"/run/netns/{v.ns},{v.cgroup},{v.server},{PORT}" for v in variants]
    res = subprocess.run([str(exe), "cycle", str(block), str(rounds), *specs], capture_output=True, text=True,
                         timeout=60 + rounds * len(variants) * block * 1e-3,
                         preexec_fn=(lambda: os.sched_setaffinity(0, pin)) if pin else None)
    if res.returncode != 0:
        raise RuntimeError(f"tcp_connect cycle failed ({res.returncode}): {res.stderr.strip()}")
    for line in res.stdout.splitlines():
        kv = loadgen.parse_kv(line)
        v = variants[int(kv["variant"])]
        if int(kv["errors"]):
            raise RuntimeError(f"{v.name}: {kv['errors']} connects failed in the paired phase")
        v.pcpu.append(float(kv["cpu_ns"]) / block / 1000)
        v.prate.append(block / float(kv["wall_ns"]) * 1e9)
    # The lines come in round order, each variant once a round: per-round lists line up.
    if any(len(v.pcpu) != rounds for v in variants):
        raise RuntimeError(f"paired phase: expected {rounds} blocks of each variant:\n{res.stdout[-2000:]}")


def comparison(what: str, a: Variant, b: Variant, attr: str, target: float | tuple[str, float] | None = None) -> str:
    """One ratio a / b of the per-round values of attr; target: a bound the
    ratio must be at most (a number), or (op, bound)."""
    per = paired_ratios(getattr(a, attr), getattr(b, attr))
    q1, q3 = quartiles(per)
    med = median(per)
    line = (f"- {what}: per-round median **{fmt(med, 3)}x** (quartiles {fmt(q1, 3)}–{fmt(q3, 3)}; "
            f"medians {fmt(median(getattr(a, attr)), 1)} / {fmt(median(getattr(b, attr)), 1)})")
    if isinstance(target, (int, float)):
        target = ("<=", target)
    return line + (target_text(target, q1, med, q3) if target is not None else "")


def hook_lines(base: Variant, restricted: list[Variant]) -> list[str]:
    """What the policy adds to the connect4 program's own run time, against
    the CPU a connect costs: the precise part of the comparison (bpf_stats
    counts the program alone; the cgroup CPU figures carry the machine's
    noise)."""
    h0, cpu0 = median(base.hook), median(base.pcpu or base.cpu) * 1000
    parts = []
    for v in restricted:
        extra = median(v.hook) - h0
        parts.append(f"{v.name.removeprefix('socklb, ')} {median(v.hook):.0f} ns (+{extra:.0f} ns = "
                     f"{extra / cpu0 * 100:.2f}% of a connect, a CPU ratio of {1 + extra / cpu0:.4f}x)")
    return [f"- Where socklb's policy time goes: the connect4 program's own run time per call (bpf_stats, "
            f"medians over rounds) is {h0:.0f} ns without policy; " + "; ".join(parts)
            + f"; one connect costs {cpu0 / 1000:.1f} µs of CPU without policy (median)."]


def table(variants: list[Variant], base: Variant) -> list[str]:
    out = ["| variant | paired CPU µs/connect | paired vs socklb, no policy | phase-1 CPU µs/connect "
           "| phase-1 vs socklb, no policy | connects/s | connect4 ns/call |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for v in variants:
        out.append(f"| {v.name} | {fmt(median(v.pcpu), 2)} | {fmt(median(paired_ratios(v.pcpu, base.pcpu)), 3)} "
                   f"| {median(v.cpu):.2f} | {fmt(median(paired_ratios(v.cpu, base.cpu)), 3)} "
                   f"| {median(v.rate):.0f} | {fmt(median(v.hook), 0)} |")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (BPF, cgroups, namespaces, nftables)", file=sys.stderr)
        return 2
    started, load_before, t_start = lab.run_stamp()
    teardown = lab.Teardown()
    lab.install_exit_handlers(teardown)
    try:
        workdir = lab.make_tempdir(teardown)
        exe = compile_c(SOURCE, workdir)
        variants, loads = build(args, teardown, workdir, exe)
        server_cg = variants[0].cgroup.parent / "server"
        refusals = check(variants, exe)
        agent.enable_bpf_stats(teardown)
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                measure(v, exe, args.connects, server_cg, cpus(args))
            lab.log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v.name} {v.cpu[-1]:.1f} µs" for v in variants))
        if args.paired_rounds:
            paired(variants, exe, args.block, args.paired_rounds, cpus(args))
            lab.log("paired: " + ", ".join(f"{v.name} {median(v.pcpu):.2f} µs" for v in variants))
        elapsed = time.monotonic() - t_start
        section = render(args, variants, refusals, loads, started, load_before, elapsed)
        publish(DOC, section, not args.no_doc)
    finally:
        teardown.close()
    return 0


def render(args, variants, refusals, loads, started, load_before, elapsed) -> str:
    by = {v.name: v for v in variants}
    base, plain = by["socklb, no policy"], by["no BPF"]
    k = args.cidrs
    one, many, big, base2 = variants[2], variants[3], variants[4], variants[5]
    nft1, nft_many, nftk, nftct = variants[6], variants[7], variants[8], variants[9]
    cpu = "pcpu" if args.paired_rounds else "cpu"
    lines = [BEGIN, "## Policy: TCP connect cost against nftables", "",
             "TCP connects from a restricted workload, with socklb's egress policy and with the same allow "
             "list as an nftables set in the client's namespace (socklb still balancing, without policy), "
             "next to no policy; client namespaces joined to a server namespace by veths; every connect "
             "is socket + connect + close with a reset (`bench/tcp_connect.c`). Two phases: (1) each variant a "
             "client process of its own (connects/s, the cgroups' CPU, the connect4 program's run time), "
             "variants interleaved, order rotated each round; (2) paired: one client process going through "
             "every variant in turn, a block of connects each, moving itself into the variant's cgroup and "
             "namespace and timing the block with its own CPU clock, so the variants of a round run a fraction "
             "of a second apart. The CPU comparisons below are the paired phase's: the median of the per-round "
             "ratios with its quartiles, which decides a target (met: both quartiles meet it; borderline: they "
             "straddle it; not met: neither does).", "",
             "```", f"python -m bench.policy_connect {args.argv}".rstrip(), "```", "",
             f"- Machine: {os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}; "
             f"load average {load_before} before the run, {' '.join(f'{x:.2f}' for x in os.getloadavg())} after "
             "(other sessions' tests and benchmarks share the machine)",
             f"- Date: {started} UTC; run time {elapsed / 60:.1f} min",
             f"- Setup: phase 1 {args.rounds} rounds × {args.connects} connects per variant; paired phase "
             f"{args.paired_rounds} rounds × {args.block} connects per variant; client and server "
             f"{'pinned to CPU ' + str(args.cpu) if args.cpu >= 0 else 'not pinned'}; allow lists: the server's "
             f"address /32 plus 0, 10 or {k} disjoint prefixes in 10.0.0.0/8 (any port); socklb: "
             f"{args.sets + 2} restricted workloads on one agent ({args.sets} of them with a set of 11 CIDRs), "
             "client namespace 192.0.2.1 → server 192.0.2.2; nftables: each variant in a client namespace of its "
             "own (198.18.N.1 → 198.18.N.2) with `ip daddr @allowed accept; reject` (TCP: with a reset) in an "
             "output chain (interval set), `nft + ct` with `ct state established,related accept` first, the "
             "client in socklb's no-policy cgroup; the control row runs that cgroup in such a namespace "
             "without a table; nftables ruleset load "
             + ", ".join(f"{n} elements {s * 1000:.0f} ms" for n, s in sorted(loads.items())),
             "- Refusals checked before the rounds (the server's /24, .3): "
             + "; ".join(f"{n}: {w}" for n, w in refusals.items()), "",
             *table(variants, base), "",
             comparison(f"socklb {k} CIDRs / socklb no policy, CPU per connect", big, base, cpu, TARGET_CPU),
             comparison("socklb 1 policy / socklb no policy, CPU per connect", one, base, cpu, TARGET_CPU),
             comparison(f"socklb 1 of {args.sets} policies / socklb no policy, CPU per connect", many, base, cpu,
                        TARGET_CPU),
             comparison(f"socklb {k} CIDRs / nft {k} CIDRs, CPU per connect (below 1: socklb ahead)", big, nftk,
                        cpu, AHEAD),
             comparison(f"socklb {k} CIDRs / nft + ct {k} CIDRs, CPU per connect", big, nftct, cpu),
             comparison("socklb 1 policy / nft 1 CIDR, CPU per connect", one, nft1, cpu),
             comparison(f"socklb 1 of {args.sets} / nft 11 CIDRs (one pod's table), CPU per connect", many,
                        nft_many, cpu),
             comparison(f"nft {k} CIDRs / socklb no policy (2nd namespace), CPU per connect", nftk, base2, cpu),
             comparison("socklb no policy, 2nd namespace / socklb no policy (the namespaces' difference)", base2,
                        base, cpu),
             comparison("socklb no policy / no BPF, CPU per connect", base, plain, cpu),
             comparison(f"phase 1 (cgroups' CPU, a process per variant): socklb {k} CIDRs / socklb no policy",
                        big, base, "cpu"),
             comparison(f"phase 1: socklb {k} CIDRs / nft {k} CIDRs", big, nftk, "cpu"),
             *hook_lines(base, [one, many, big]),
             "",
             "How to read it:", "",
             "- paired CPU µs/connect: the client process's own CPU clock (CLOCK_PROCESS_CPUTIME_ID) over its "
             "block: the syscalls, the cgroup hooks, the nftables output chain and, on this path, the softirq "
             "work of its own packets (the veth delivers on the same CPU); the server's accept is outside it (the "
             "same work in every variant, so ratios against it are conservative: a larger denominator would make "
             "them smaller).",
             "- phase-1 CPU µs/connect: cgroup v2 `usage_usec` of the client's and the server's cgroups over the "
             "run, divided by the connects, the client's `ip netns exec` start included; each variant a second or "
             "two apart, so other tenants' load moves it more.",
             "- Refusals: socklb fails a denied connect() at once with EPERM; the stateless nftables chain refuses it too, but the connect() only gives up at the probe's 2 s send timeout (EINPROGRESS: the reset that `reject with tcp reset` sends did not end it here), while the stateful ruleset's reset ends it at once (ECONNREFUSED). The allowed connects cost the same either way: their packets never reach the reject.",
             "- connect4 ns/call: the program's own run time as the kernel counts it (bpf_stats); the nft "
             "rows run socklb's no-policy program, the no-BPF row none.",
             "- nftables in a pod namespace is per pod: at 1000 policies each pod's table holds its own share "
             "(the `11 CIDRs` row), so that is nft's figure for the 1000-policy case; socklb keeps the 1000 sets "
             "in one LPM trie keyed by set id.",
             END]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
