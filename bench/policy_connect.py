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
                          and, in the client namespace while the variant runs, an
                          output chain `ip daddr @allowed accept; reject` (TCP: with a reset) with the
                          same allow list as an interval set (1, 10 = one pod's share
                          of 1000 policies, since each pod namespace has its own
                          table, and 10k)
  nft + ct, 10k CIDRs     the same with `ct state established,related accept` first
                          (the usual stateful ruleset; conntrack in the client namespace)

Per variant and round: connects/s (the client's wall time), CPU per connect
(cgroup v2 usage of the client's and the server's cgroups over the run, the
`ip netns exec` start included, the same for every variant) and the connect4
program's own run time (kernel.bpf_stats_enabled). Before the rounds each
restricted variant is checked to refuse a destination outside its allow
list (192.0.2.3: socklb EPERM, nftables an ICMP admin-prohibited error) and
to reach the server.

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
from bench.policy_cost import STATS, connect_prog, prog_stats
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
ANY_PORT = [{"port": 0, "end_port": 65535, "action": "ACTION_ALLOW"}]


@dataclass
class Variant:
    name: str
    cgroup: Path                  # the client's cgroup
    agent_cgroup: Path | None     # whose connect4 program runs (None: no BPF)
    nft: list[str] | None = None  # the allow list of an nftables variant
    ct: bool = False
    restricted: bool = False
    cpu: list[float] = field(default_factory=list)    # µs per connect, per round
    rate: list[float] = field(default_factory=list)   # connects/s, per round
    hook: list[float] = field(default_factory=list)   # connect4 ns per call, per round


def parse_args(argv):
    p = bench_parser("bench.policy_connect", __doc__)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--connects", type=int, default=20_000, help="TCP connects per variant and round")
    p.add_argument("--cidrs", type=int, default=10_000, help="CIDRs of the large allow list")
    p.add_argument("--sets", type=int, default=1000, help="restricted workloads (each its own set of 10 CIDRs)")
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


def allow_list(cidrs: list[str]) -> list[str]:
    return [*cidrs, f"{SERVER}/32"]


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


class Nft:
    """The nftables table of one variant, only while it runs."""

    def __init__(self, ns: str, teardown: lab.Teardown, workdir: Path):
        self.ns, self.workdir = ns, workdir
        teardown.add("nftables table", self.remove)

    def load(self, v: Variant) -> float:
        path = self.workdir / "rules.nft"
        path.write_text(nft_ruleset(v.nft, v.ct))
        t0 = time.monotonic()
        lab.run(lab.netns_exec(self.ns, ["nft", "-f", str(path)]))
        return time.monotonic() - t0

    def remove(self) -> None:
        lab.run(lab.netns_exec(self.ns, ["nft", "delete", "table", "ip", NFT_TABLE]), check=False, quiet=True)


def build(args, teardown: lab.Teardown, workdir: Path, exe: Path) -> tuple[list[Variant], lab.Net]:
    mount = cgroup2_mount()
    ensure_bpffs()
    tag = f"{lab.PREFIX}pconn-{os.getpid()}"
    root = lab.make_cgroup(mount / tag, teardown)
    net = lab.build_net(teardown, "198.18.0.10", [])
    server_cg = lab.make_cgroup(root / "server", teardown)
    proc = subprocess.Popen(lab.netns_exec(net.backend_ns, [str(exe), "server", SERVER, str(PORT)]),
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
    big = allow_list(disjoint_prefixes(rng, args.cidrs))
    many = [allow_list(disjoint_prefixes(rng, 10)) for _ in range(args.sets)]
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
    variants = [
        Variant("no BPF", plain, None),
        Variant("socklb, no policy", nopolicy, nopolicy),
        Variant("socklb, 1 policy (1 CIDR)", pol / "w-1", pol, restricted=True),
        Variant(f"socklb, 1 of {args.sets} policies (11 CIDRs each)", pol / "w-many-0", pol, restricted=True),
        Variant(f"socklb, {k} CIDRs", pol / "w-big", pol, restricted=True),
        Variant("nft, 1 CIDR", nopolicy, nopolicy, nft=one, restricted=True),
        Variant("nft, 11 CIDRs (one pod's table)", nopolicy, nopolicy, nft=many[0], restricted=True),
        Variant(f"nft, {k} CIDRs", nopolicy, nopolicy, nft=big, restricted=True),
        Variant(f"nft + ct, {k} CIDRs", nopolicy, nopolicy, nft=big, ct=True, restricted=True),
    ]
    lab.log(f"policy agent with {len(sets)} sets ({sum(len(s['prefixes']) for s in sets)} prefixes) "
            f"ready in {log_load:.1f}s")
    return variants, net


def cpus(args) -> set[int] | None:
    return None if args.cpu < 0 else {args.cpu}


def probe(net: lab.Net, v: Variant, exe: Path, addr: str) -> tuple[int, str]:
    """One connect: (exit code, what it printed: errno=N (text))."""
    res = subprocess.run(lab.netns_exec(net.client_ns, [str(exe), "probe", addr, str(PORT)]),
                         preexec_fn=lab.join_cgroup(v.cgroup), capture_output=True, text=True, timeout=30)
    return res.returncode, res.stdout.strip()


def check(net: lab.Net, variants: list[Variant], exe: Path, nft: Nft) -> dict[str, str]:
    """Each restricted variant refuses a destination outside its list and
    reaches the server; what each refusal looked like."""
    seen = {}
    for v in variants:
        if v.nft:
            nft.load(v)
        try:
            (ok, _), (denied, how) = probe(net, v, exe, SERVER), probe(net, v, exe, DENIED) if v.restricted else (0, "")
        finally:
            if v.nft:
                nft.remove()
        if ok != 0:
            raise RuntimeError(f"{v.name}: the server at {SERVER}:{PORT} is not reachable (exit {ok})")
        if v.restricted:
            if not denied:
                raise RuntimeError(f"{v.name}: {DENIED} was reachable: the policy does not apply")
            seen[v.name] = how.removeprefix("errno=")
    return seen


def measure(net: lab.Net, v: Variant, exe: Path, connects: int, server_cg: Path, nft: Nft,
            pin: set[int] | None) -> None:
    if v.nft:
        nft.load(v)
    try:
        prog = connect_prog(v.agent_cgroup) if v.agent_cgroup else None
        c0 = prog_stats(prog) if prog else (0, 0)
        cpu0 = lab.cgroup_cpu_usec(v.cgroup) + lab.cgroup_cpu_usec(server_cg)
        out = loadgen.run_in_client(net.client_ns, v.cgroup, [str(exe), "client", SERVER, str(PORT), str(connects)],
                                    timeout=600, cpus=pin)
        cpu1 = lab.cgroup_cpu_usec(v.cgroup) + lab.cgroup_cpu_usec(server_cg)
        c1 = prog_stats(prog) if prog else (0, 0)
    finally:
        if v.nft:
            nft.remove()
    kv = loadgen.parse_kv(out)
    if int(kv["errors"]):
        raise RuntimeError(f"{v.name}: {kv['errors']} connects failed ({kv['eperm']} EPERM): {out}")
    v.cpu.append((cpu1 - cpu0) / connects)
    v.rate.append(1e9 / float(kv["ns_per_op"]))
    v.hook.append((c1[1] - c0[1]) / (c1[0] - c0[0]) if prog and c1[0] > c0[0] else float("nan"))
    if prog and c1[0] - c0[0] < connects:
        raise RuntimeError(f"{v.name}: connect4 ran {c1[0] - c0[0]} times for {connects} connects")


def comparison(what: str, a: Variant, b: Variant, attr: str, target: float | None = None) -> str:
    per = paired_ratios(getattr(a, attr), getattr(b, attr))
    q1, q3 = quartiles(per)
    med = median(per)
    line = (f"- {what}: per-round median **{fmt(med, 3)}x** (quartiles {fmt(q1, 3)}–{fmt(q3, 3)}; "
            f"medians {fmt(median(getattr(a, attr)), 1)} / {fmt(median(getattr(b, attr)), 1)})")
    return line + (target_text(("<=", target), q1, med, q3) if target is not None else "")


def hook_lines(base: Variant, restricted: list[Variant]) -> list[str]:
    """What the policy adds to the connect4 program's own run time, against
    the CPU a connect costs: the precise part of the comparison (bpf_stats
    counts the program alone; the cgroup CPU figures carry the machine's
    noise)."""
    h0, cpu0 = median(base.hook), median(base.cpu) * 1000
    parts = []
    for v in restricted:
        extra = median(v.hook) - h0
        parts.append(f"{v.name.removeprefix('socklb, ')} {median(v.hook):.0f} ns (+{extra:.0f} ns = "
                     f"{extra / cpu0 * 100:.2f}% of a connect, a CPU ratio of {1 + extra / cpu0:.4f}x)")
    return [f"- Where socklb's policy time goes: the connect4 program's own run time per call (bpf_stats, "
            f"medians over rounds) is {h0:.0f} ns without policy; " + "; ".join(parts)
            + f"; one connect costs {cpu0 / 1000:.1f} µs of CPU without policy (median)."]


def table(variants: list[Variant], base: Variant) -> list[str]:
    out = ["| variant | connects/s | CPU µs/connect | CPU vs socklb, no policy | connect4 ns/call "
           "| CPU µs per round |", "|---|---:|---:|---:|---:|---|"]
    for v in variants:
        per = paired_ratios(v.cpu, base.cpu)
        out.append(f"| {v.name} | {median(v.rate):.0f} | {median(v.cpu):.2f} | {fmt(median(per), 3)} "
                   f"| {fmt(median(v.hook), 0)} | {' '.join(f'{x:.1f}' for x in v.cpu)} |")
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
        variants, net = build(args, teardown, workdir, exe)
        server_cg = variants[0].cgroup.parent / "server"
        nft = Nft(net.client_ns, teardown, workdir)
        refusals = check(net, variants, exe, nft)
        loads = {}
        for v in variants:
            if v.nft and len(v.nft) not in loads:
                loads[len(v.nft)] = nft.load(v)
                nft.remove()
        old = STATS.read_text().strip()
        teardown.add("bpf stats", lambda: STATS.write_text(old))
        STATS.write_text("1")
        for r in range(args.rounds):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                measure(net, v, exe, args.connects, server_cg, nft, cpus(args))
            lab.log(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{v.name} {v.cpu[-1]:.1f} µs" for v in variants))
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
    one, many, big = variants[2], variants[3], variants[4]
    nft1, nft_many, nftk, nftct = variants[5], variants[6], variants[7], variants[8]
    lines = [BEGIN, "## Policy: TCP connect cost against nftables", "",
             "TCP connects from a restricted workload, with socklb's egress policy and with the same allow "
             "list as an nftables set in the client's namespace (socklb still balancing, without policy), "
             "next to no policy; a client namespace and a server namespace joined by a veth; every connect "
             "is socket + connect + close with a reset (`bench/tcp_connect.c`). Variants interleaved over the "
             "rounds, order rotated each round; medians over rounds; each comparison is the median of the "
             "per-round ratios with its quartiles, which decides a target (met: both quartiles meet it; "
             "borderline: they straddle it; not met: neither does).", "",
             "```", f"python -m bench.policy_connect {args.argv}".rstrip(), "```", "",
             f"- Machine: {os.cpu_count()} CPUs, kernel {platform.release()}, Python {platform.python_version()}; "
             f"load average {load_before} before the run, {' '.join(f'{x:.2f}' for x in os.getloadavg())} after "
             "(other sessions' tests and benchmarks share the machine)",
             f"- Date: {started} UTC; run time {elapsed / 60:.1f} min",
             f"- Setup: {args.rounds} rounds × {args.connects} connects per variant; client and server "
             f"{'pinned to CPU ' + str(args.cpu) if args.cpu >= 0 else 'not pinned'}; allow lists: the server's "
             f"192.0.2.2/32 plus 0, 10 or {k} disjoint prefixes in 10.0.0.0/8 (any port); socklb: "
             f"{args.sets + 2} restricted workloads on one agent ({args.sets} of them with a set of 11 CIDRs); "
             "nftables: `ip daddr @allowed accept; reject` (TCP: with a reset) in an output chain (interval set), "
             "`nft + ct` with `ct state established,related accept` first; nftables ruleset load "
             + ", ".join(f"{n} elements {s * 1000:.0f} ms" for n, s in sorted(loads.items())),
             "- Refusals checked before the rounds (192.0.2.3): "
             + "; ".join(f"{n}: {w}" for n, w in refusals.items()), "",
             *table(variants, base), "",
             comparison(f"socklb {k} CIDRs / socklb no policy, CPU per connect", big, base, "cpu", TARGET_CPU),
             comparison("socklb 1 policy / socklb no policy, CPU per connect", one, base, "cpu", TARGET_CPU),
             comparison(f"socklb 1 of {args.sets} policies / socklb no policy, CPU per connect", many, base, "cpu",
                        TARGET_CPU),
             comparison(f"socklb {k} CIDRs / nft {k} CIDRs, CPU per connect (below 1: socklb ahead)", big, nftk,
                        "cpu"),
             comparison(f"socklb {k} CIDRs / nft + ct {k} CIDRs, CPU per connect", big, nftct, "cpu"),
             comparison("socklb 1 policy / nft 1 CIDR, CPU per connect", one, nft1, "cpu"),
             comparison(f"socklb 1 of {args.sets} / nft 11 CIDRs (one pod's table), CPU per connect", many,
                        nft_many, "cpu"),
             comparison(f"nft {k} CIDRs / socklb no policy, CPU per connect", nftk, base, "cpu"),
             comparison("socklb no policy / no BPF, CPU per connect", base, plain, "cpu"),
             comparison(f"socklb {k} CIDRs / socklb no policy, connects/s", big, base, "rate"),
             comparison(f"socklb {k} CIDRs / nft {k} CIDRs, connects/s (above 1: socklb ahead)", big, nftk, "rate"),
             *hook_lines(base, [one, many, big]),
             "",
             "How to read it:", "",
             "- CPU µs/connect: cgroup v2 `usage_usec` of the client's and the server's cgroups over the run "
             "(loopback-free veth path: the SYN, SYN-ACK and reset run mostly in the client's context), divided "
             "by the connects; it includes the client's `ip netns exec` start (the same in every variant). On a "
             "shared VM the CPU per connect is steadier than the rate.",
             "- connect4 ns/call: the program's own run time as the kernel counts it (bpf_stats); the nft "
             "rows run socklb's no-policy program, the no-BPF row none.",
             "- nftables in a pod namespace is per pod: at 1000 policies each pod's table holds its own share "
             "(the `11 CIDRs` row), so that is nft's figure for the 1000-policy case; socklb keeps the 1000 sets "
             "in one LPM trie keyed by set id.",
             END]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
