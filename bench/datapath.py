"""Datapath benchmark: socklb against direct, iptables DNAT and nftables DNAT.

TCP: connect + request + response + close rate and p50/p99 latency, with
wrk (`Connection: close`) against nginx-light for throughput under load, and
one connection at a time with bench/tcp_crr.c for a latency that includes
connect(). UDP: sequential request/response over an unconnected socket
(bench/udp_rr.c). The client runs in its own network namespace, the backends
in another, joined by a veth; the variants are interleaved over several
rounds and medians are reported, with ratios against direct measured in the
same run.

    cd /work/main && .venv/bin/python -m bench.datapath [--rounds 10 --duration 2]
        [--baseline TREE]   # also the socklb variants through TREE's agent, as "-base"

With kernel.bpf_stats_enabled on for the run (unless --no-hook-stats), each
socklb variant also reports its programs' ns per call (run_time_ns /
run_cnt over each measurement), per hook.

Needs root. Everything it creates (namespaces, cgroups, pins, rules,
processes, temp files) is removed on exit, Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import shutil
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from bench import agent, backends, lab, loadgen, nat, report
from socklb.dataplane.kernel import cgroup2_mount, ensure_bpffs

VIP = "198.18.0.10"
TCP_PORT, UDP_PORT = 80, 53
NGINX_PORTS = [8080, 8081]
UDP_PORTS = [9000, 9001]

# Each TCP variant reaches the same nginx through its own backend address.
# The server keeps a TIME_WAIT socket for every connection (it closes first),
# and a SYN that meets the TIME_WAIT of an earlier connection on the same
# 4-tuple is accepted only if its TCP timestamp is newer (PAWS). Timestamp
# offsets are per (source, destination) address pair, and a DNATed client
# computes its offset from the VIP, a directly connected one (direct, socklb)
# from the backend: across variants the comparison is a coin toss, and a
# rejected SYN (TcpExtPAWSTimewait in the backend netns) costs a 1 s
# retransmit. Sharing one address, iptables fell from ~15k to ~300 req/s right
# after a direct round. Separate addresses keep the variants' TIME_WAITs
# apart; UDP has no such state and shares BACKEND_ADDR.
TCP_ADDRS = {"direct": lab.BACKEND_ADDR, "socklb": "192.0.2.3",
             "iptables": "192.0.2.4", "nftables": "192.0.2.5", "socklb-nomatch": "192.0.2.6",
             "socklb-base": "192.0.2.7"}


def tcp_service(variant: str) -> nat.Service:
    return nat.Service(VIP, TCP_PORT, "tcp", [(TCP_ADDRS[variant], p) for p in NGINX_PORTS])


UDP_SERVICE = nat.Service(VIP, UDP_PORT, "udp", [(lab.BACKEND_ADDR, p) for p in UDP_PORTS])

ALL_VARIANTS = ["direct", "socklb", "socklb-base", "iptables", "nftables", "socklb-nomatch",
                "udp-direct", "udp-socklb", "udp-socklb-base", "udp-socklb-nodns", "udp-socklb-nomatch",
                "udp-iptables"]
# Variants ending in one of these run through their own agent, in their own
# cgroup: "-base" the agent of another tree (--baseline: the same traffic
# through the old hooks and the new ones, side by side in one run); "-nodns"
# this tree's without the DNS learner (`--dns-learner disabled`: no
# cgroup_skb programs on every packet, FQDN rules allow nothing).
BASE_SUFFIX, NODNS_SUFFIX = "-base", "-nodns"
AGENT_SUFFIXES = (BASE_SUFFIX, NODNS_SUFFIX)

DEFAULT_VARIANTS = ["direct", "socklb", "iptables", "nftables", "udp-direct", "udp-socklb"]


def agent_of(variant: str) -> str:
    """The suffix of the agent serving a socklb variant ("" for the default one)."""
    return next((x for x in AGENT_SUFFIXES if variant.endswith(x)), "")


REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
UDP_SOURCE = Path(__file__).resolve().parent / "udp_rr.c"
CRR_SOURCE = Path(__file__).resolve().parent / "tcp_crr.c"


@dataclass
class Variant:
    name: str
    proto: str                 # "tcp" | "udp"
    cgroup: Path               # decides whether socklb's programs see the client
    addr: str
    port: int
    rules: nat.NatRules | None = None  # installed only while this variant is measured
    expect_backends: frozenset[int] = frozenset()

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/"

    @property
    def uses_socklb(self) -> bool:
        return "socklb" in self.name


@dataclass
class Lab:
    net: lab.Net
    workdir: Path
    plain_cgroup: Path
    agent_cgroups: dict[str, Path]     # agent suffix ("", "-base", "-nodns") -> its client cgroup
    server_cgroup: Path                # nginx and the UDP server, for CPU accounting
    crr_exe: Path | None
    udp_exe: Path | None
    pinned: set[int] | None            # CPUs of the servers and the one-at-a-time clients
    agent_paths: agent.AgentPaths | None
    hooks: dict[Path, dict[str, int]]  # agent cgroup -> hook -> program id, with --hook-stats


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.datapath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    # Many short rounds rather than a few long ones: on a shared, noisy VM the
    # variants of one round then run close together in time.
    p.add_argument("--rounds", type=int, default=10, help="rounds over all variants (default 10)")
    p.add_argument("--duration", type=int, default=2, help="seconds per TCP measurement (default 2)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1)")
    p.add_argument("--crr-connections", type=int, default=2000,
                   help="sequential TCP connect+request+response+close cycles per measurement, "
                        "after each wrk run; 0 to skip (default 2000)")
    p.add_argument("--udp-requests", type=int, default=20000,
                   help="sequential UDP round trips per measurement (default 20000)")
    p.add_argument("--pin-cpu", type=int, default=(os.cpu_count() or 1) - 1,
                   help="CPU for the servers (nginx, udp_rr) and the one-at-a-time clients "
                        "(tcp_crr, udp_rr); wrk stays free. -1: pin nothing. Default: the last "
                        "CPU. A ping-pong whose two ends sit on different vCPUs pays an "
                        "inter-processor wake-up per message, which made rates swing 3x here.")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated subset of {','.join(ALL_VARIANTS)} "
                        f"(default {','.join(DEFAULT_VARIANTS)})")
    p.add_argument("--agent-timeout", type=float, default=120.0,
                   help="seconds to wait for the socklb agent to print 'ready' (default 120)")
    p.add_argument("--baseline", type=Path,
                   help="another socklb tree (e.g. a worktree of main) whose agent serves the "
                        "-base variants, added for every socklb variant chosen")
    p.add_argument("--no-hook-stats", dest="hook_stats", action="store_false",
                   help="leave kernel.bpf_stats_enabled alone: no per-hook ns per call (the "
                        "statistics cost each program run a clock read before and after)")
    p.add_argument("--no-doc", action="store_true",
                   help=f"do not write the results to {DOC.relative_to(REPO)}")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.baseline:
        if not (args.baseline / "socklb" / "dataplane" / "cli.py").exists():
            p.error(f"--baseline {args.baseline}: no socklb tree there")
        args.variants += [v + BASE_SUFFIX for v in ("socklb", "udp-socklb")
                          if v in args.variants and v + BASE_SUFFIX not in args.variants]
    unknown = set(args.variants) - set(ALL_VARIANTS)
    if unknown or not args.variants:
        p.error(f"unknown variants {sorted(unknown)}; choose from {ALL_VARIANTS}")
    if any(v.endswith(BASE_SUFFIX) for v in args.variants) and not args.baseline:
        p.error("the -base variants need --baseline DIR")
    if args.rounds < 1 or args.duration < 1 or args.udp_requests < 1:
        p.error("--rounds, --duration and --udp-requests must be >= 1")
    if args.crr_connections < 0:
        p.error("--crr-connections must be >= 0")
    return args


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        sys.exit("bench.datapath needs root (namespaces, cgroups, BPF, netfilter)")
    missing = [t for t in ("ip", "wrk", "nginx", "gcc", "iptables", "iptables-restore", "nft", "ss")
               if shutil.which(t) is None]
    if missing:
        sys.exit(f"missing tools {missing}: apt-get install -y nginx-light wrk iptables "
                 "nftables iproute2 gcc")


# --- setting up ---------------------------------------------------------------

def build_lab(args: argparse.Namespace, teardown: lab.Teardown) -> Lab:
    cg_root, bpf_root = cgroup2_mount(), Path("/sys/fs/bpf")
    lab.remove_stale(cg_root, bpf_root, agent.detach)
    workdir = lab.make_tempdir(teardown)
    net = lab.build_net(teardown, VIP, [a for a in TCP_ADDRS.values() if a != lab.BACKEND_ADDR])
    # Two sibling client cgroups: socklb's programs are attached to one only,
    # so the other variants run with no socket LB program in their path at
    # all. The servers get a third, so that their CPU time can be counted.
    parent = lab.make_cgroup(cg_root / f"{lab.PREFIX}{os.getpid()}", teardown)
    plain = lab.make_cgroup(parent / "plain", teardown)
    server = lab.make_cgroup(parent / "server", teardown)
    cgroups = {x: lab.make_cgroup(parent / f"socklb{x}", teardown)
               for x in sorted({agent_of(v) for v in args.variants if "socklb" in v})}
    backends.start_nginx(net.backend_ns, workdir, NGINX_PORTS, args.nginx_workers, server,
                         cpu_set(args.pin_cpu), teardown)
    crr_exe = None
    if args.crr_connections > 0:
        crr_exe = backends.compile_c(CRR_SOURCE, workdir)
    udp_exe = None
    if any(v.startswith("udp-") for v in args.variants):
        udp_exe = backends.compile_c(UDP_SOURCE, workdir)
        backends.start_udp_server(net.backend_ns, udp_exe, UDP_PORTS, server,
                                  cpu_set(args.pin_cpu), teardown)
    paths = None
    if cgroups:
        # The agent pins under bpffs: mounted at its standard place if absent
        # (left mounted: it is the system's usual mount, not ours to remove).
        ensure_bpffs(bpf_root)
    for x, cg in cgroups.items():
        services = {"bench": tcp_service("socklb-base" if x == BASE_SUFFIX else "socklb"),
                    "bench-udp": UDP_SERVICE}
        this = agent_paths(workdir, cg, bpf_root, x)
        agent.start_agent(this, services, teardown, args.agent_timeout,
                          tree=args.baseline if x == BASE_SUFFIX else None,
                          args=["--dns-learner", "disabled"] if x == NODNS_SUFFIX else None)
        if x == "":
            paths = this
    hooks = {}
    if args.hook_stats and cgroups:
        agent.enable_bpf_stats(teardown)
        hooks = {cg: agent.hook_programs(cg) for cg in cgroups.values()}
    return Lab(net, workdir, plain, cgroups, server, crr_exe, udp_exe, cpu_set(args.pin_cpu),
               paths, hooks)


def cpu_set(cpu: int) -> set[int] | None:
    return {cpu} if cpu >= 0 else None


def agent_paths(workdir: Path, cgroup: Path, bpf_root: Path, suffix: str) -> agent.AgentPaths:
    return agent.AgentPaths(
        state=workdir / f"state{suffix}.yaml", cgroup=cgroup,
        pin_dir=bpf_root / f"{lab.PREFIX}{os.getpid()}{suffix}",
        admin_socket=workdir / f"agent{suffix}.sock", log=workdir / f"agent{suffix}.log")


def make_variants(names: list[str], the_lab: Lab) -> list[Variant]:
    ns, plain = the_lab.net.client_ns, the_lab.plain_cgroup
    lb, base, nodns = (the_lab.agent_cgroups.get(x) for x in ("", BASE_SUFFIX, NODNS_SUFFIX))
    both_tcp = frozenset(NGINX_PORTS)
    table = {
        "direct": lambda: Variant("direct", "tcp", plain, TCP_ADDRS["direct"], NGINX_PORTS[0],
                                  expect_backends=frozenset(NGINX_PORTS[:1])),
        "socklb": lambda: Variant("socklb", "tcp", lb, VIP, TCP_PORT, expect_backends=both_tcp),
        "socklb-base": lambda: Variant("socklb-base", "tcp", base, VIP, TCP_PORT, expect_backends=both_tcp),
        "iptables": lambda: Variant("iptables", "tcp", plain, VIP, TCP_PORT,
                                    nat.IptablesDnat(ns, tcp_service("iptables")), both_tcp),
        "nftables": lambda: Variant("nftables", "tcp", plain, VIP, TCP_PORT,
                                    nat.NftablesDnat(ns, tcp_service("nftables")), both_tcp),
        # The socklb cgroup connecting straight to a backend: the hooks run
        # and find no service, i.e. what socklb costs traffic it leaves alone.
        "socklb-nomatch": lambda: Variant("socklb-nomatch", "tcp", lb, TCP_ADDRS["socklb-nomatch"],
                                          NGINX_PORTS[0], expect_backends=frozenset(NGINX_PORTS[:1])),
        "udp-direct": lambda: Variant("udp-direct", "udp", plain, lab.BACKEND_ADDR, UDP_PORTS[0]),
        "udp-socklb": lambda: Variant("udp-socklb", "udp", lb, VIP, UDP_PORT),
        "udp-socklb-base": lambda: Variant("udp-socklb-base", "udp", base, VIP, UDP_PORT),
        "udp-socklb-nodns": lambda: Variant("udp-socklb-nodns", "udp", nodns, VIP, UDP_PORT),
        # The hooks run and find no service: their floor, what the kernel's
        # cgroup hook calls cost a socket whose datagrams socklb leaves alone.
        "udp-socklb-nomatch": lambda: Variant("udp-socklb-nomatch", "udp", lb, lab.BACKEND_ADDR,
                                              UDP_PORTS[0]),
        "udp-iptables": lambda: Variant("udp-iptables", "udp", plain, VIP, UDP_PORT,
                                        nat.IptablesDnat(ns, UDP_SERVICE)),
    }
    return [table[n]() for n in ALL_VARIANTS if n in names]


# --- measuring ----------------------------------------------------------------

@contextmanager
def active(variant: Variant, ns: str):
    """Only this variant's NAT rules exist while it runs."""
    nat.assert_no_rules(ns)
    if variant.rules is None:
        yield
        return
    variant.rules.install()
    try:
        yield
    finally:
        variant.rules.remove()


R = TypeVar("R", loadgen.WrkResult, loadgen.CrrResult, loadgen.UdpResult)


def cpu_metered(cgroups: list[Path], run: Callable[[], R]) -> R:
    """Run one measurement and charge it the CPU time its client and server
    cgroups used, per operation. On a shared VM the rates swing with other
    tenants' load; the CPU spent per connection hardly does. (Softirq work
    the kernel defers to ksoftirqd is not in these cgroups.)"""
    before = sum(lab.cgroup_cpu_usec(cg) for cg in cgroups)
    res = run()
    used = sum(lab.cgroup_cpu_usec(cg) for cg in cgroups) - before
    res.cpu_us = used / res.ops if res.ops else float("nan")
    return res


Hooks = dict[str, agent.HookCost]     # hook -> its cost during one measurement


def measure(variant: Variant, the_lab: Lab, args: argparse.Namespace) -> list[tuple[str, object, Hooks]]:
    """One measurement of a variant: (kind, result, hook costs) triples, kind
    being "wrk", "crr" or "udp". TCP runs wrk and then tcp_crr under the same
    rules. Hook costs: the variant's socklb programs, with --hook-stats."""
    ns, cg = the_lab.net.client_ns, variant.cgroup
    metered = [cg, the_lab.server_cgroup]
    programs = the_lab.hooks.get(cg, {})

    def one(run: Callable[[], R]) -> tuple[R, Hooks]:
        return agent.hook_costs(programs, lambda: cpu_metered(metered, run))

    out: list[tuple[str, object, Hooks]] = []
    with active(variant, ns):
        if variant.proto == "udp":
            res, hooks = one(lambda: loadgen.run_udp_client(
                ns, cg, the_lab.udp_exe, variant.addr, variant.port, args.udp_requests, the_lab.pinned))
            return [("udp", res, hooks)]
        res, hooks = one(lambda: loadgen.run_wrk(ns, cg, variant.url, args.threads, args.connections,
                                                 args.duration))
        out.append(("wrk", res, hooks))
        if the_lab.crr_exe is not None:
            res, hooks = one(lambda: loadgen.run_tcp_crr(ns, cg, the_lab.crr_exe, variant.addr, variant.port,
                                                         args.crr_connections, the_lab.pinned))
            out.append(("crr", res, hooks))
        return out


def probe(variant: Variant, the_lab: Lab) -> None:
    """Warm up and check that the variant really works before timing it: a
    variant that silently failed to translate would otherwise show up as a
    number. Raises with an explanation."""
    ns = the_lab.net.client_ns
    with active(variant, ns):
        if variant.proto == "tcp":
            res, spread = loadgen.run_wrk_spread(ns, variant.cgroup, variant.url, the_lab.workdir)
            served = {int(p) for p in spread if p.isdigit()}
            lab.log(f"probe {variant.name}: {res.requests} requests, by backend port {spread}, "
                    f"socket errors {res.errors}")
            if res.requests == 0 or served != variant.expect_backends:
                raise RuntimeError(f"variant {variant.name} does not work: {res.requests} "
                                   f"requests, backends {sorted(served)}, expected "
                                   f"{sorted(variant.expect_backends)}, errors {res.errors}")
        else:
            res = loadgen.run_udp_client(ns, variant.cgroup, the_lab.udp_exe, variant.addr,
                                         variant.port, 1000, the_lab.pinned)
            lab.log(f"probe {variant.name}: {res.ok}/{res.sent} replies, {res.timeouts} timeouts, "
                    f"{res.wrong_source} from a wrong source")
            if res.ok == 0 or res.wrong_source:
                raise RuntimeError(f"variant {variant.name} does not work: {res}")


def probe_all(variants: list[Variant], the_lab: Lab) -> None:
    for v in variants:
        try:
            probe(v, the_lab)
        except RuntimeError as exc:
            if v.uses_socklb and the_lab.agent_paths is not None:
                raise RuntimeError(f"{exc}\nsocklb agent log (tail):\n"
                                   f"{agent.agent_log_tail(the_lab.agent_paths)}") from exc
            raise


def describe(kind: str, res) -> str:
    if kind == "wrk":
        return (f"wrk {res.rps:7.0f} req/s  p50 {report.fmt(res.p50_ms)} ms  "
                f"p99 {report.fmt(res.p99_ms)} ms  cpu {res.cpu_us:.1f} us/op  "
                f"errors {sum(res.errors.values()) + res.non_2xx}")
    if kind == "crr":
        return (f"crr {res.rate:7.0f} conn/s p50 {res.p50_us:.0f} us  p99 {res.p99_us:.0f} us  "
                f"cpu {res.cpu_us:.1f} us/op  "
                f"errors {res.connect_errors + res.io_errors + res.bad_replies}")
    return (f"udp {res.rate:7.0f} rt/s   p50 {res.p50_us:.1f} us  p99 {res.p99_us:.1f} us  "
            f"cpu {res.cpu_us:.1f} us/op  timeouts {res.timeouts}  wrong source {res.wrong_source}")


Results = dict[str, dict[str, list]]   # kind -> variant -> one result per round


def run_rounds(variants: list[Variant], the_lab: Lab, args: argparse.Namespace) -> tuple[Results, Results]:
    """Interleave the variants, rotating their order each round so that no
    variant always runs first (after an idle pause) or last. Returns the
    results and the hook costs (kind -> variant -> Hooks per round)."""
    results: Results = {"wrk": {}, "crr": {}, "udp": {}}
    hook_results: Results = {"wrk": {}, "crr": {}, "udp": {}}
    for r in range(args.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            for kind, res, hooks in measure(v, the_lab, args):
                results[kind].setdefault(v.name, []).append(res)
                if hooks:
                    hook_results[kind].setdefault(v.name, []).append(hooks)
                lab.log(f"round {r + 1}/{args.rounds} {v.name:14s} {describe(kind, res)}"
                        + "".join(f"  {h} {c.ns_per_call:.0f} ns" for h, c in sorted(hooks.items())))
    return results, hook_results


# --- reporting ----------------------------------------------------------------

def machine() -> str:
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model or 'unknown CPU'}), kernel {platform.release()}"


def setup_text(args: argparse.Namespace) -> str:
    return (f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s "
            f"`Connection: close`; nginx-light with {args.nginx_workers} worker(s), 2 backends "
            f"(ports {NGINX_PORTS[0]}, {NGINX_PORTS[1]}) behind VIP {VIP}:{TCP_PORT}, direct "
            f"to port {NGINX_PORTS[0]}; UDP: 2 backends behind {VIP}:{UDP_PORT}; "
            + (f"servers and one-at-a-time clients on CPU {args.pin_cpu}, wrk not pinned; "
               if args.pin_cpu >= 0 else "nothing pinned; ")
            + f"{args.rounds} rounds")


NOTES = [
    "Notes:",
    "",
    "- Each TCP variant reaches the same nginx listeners through its own backend address "
    "(192.0.2.2–.6), so one variant's server-side TIME_WAIT sockets never meet another's "
    "SYNs: DNATed and direct clients draw TCP timestamps from different per-address-pair "
    "offsets, and a SYN meeting a TIME_WAIT with an older-looking timestamp is rejected by "
    "PAWS (TcpExtPAWSTimewait) and retransmitted 1 s later (sharing one address, iptables "
    "fell from ~15k to ~300 req/s right after a direct round).",
    "- direct = the client connects to one backend address; socklb = the VIP with the "
    "socklb agent's programs attached to the client's cgroup; iptables / nftables = the VIP "
    "with kube-proxy-style DNAT rules in the client namespace (iptables: `statistic "
    "--mode random` endpoint chains; nftables: a `daddr . l4proto . dport` verdict map and "
    "`numgen random mod 2`). Each variant's rules exist only while it is measured.",
    "- wrk's latency starts when the request is written, after the TCP handshake, so its "
    "p50/p99 cover request and response under load only; the connect() translation and the "
    "NAT of the SYN show up in its req/s, and in the one-at-a-time table, timed from socket() "
    "to close().",
    "- CPU µs/op: CPU time used by the client's cgroup and the servers' cgroup (cgroup v2 "
    "`cpu.stat` usage_usec) during the measurement, divided by the operations completed. On a "
    "shared VM it is much steadier than the rates (other tenants' load moves the rates, hardly "
    "the CPU spent per connection); it misses softirq work the kernel defers to ksoftirqd.",
    "- The machine is noisy: compare ratios within one run, not absolute numbers across runs; "
    "the per-round quartiles show the spread.",
    "- Optional variants, each through its own agent and cgroup: `-base` = the same traffic "
    "through the agent of the `--baseline` tree (old hooks and new side by side); "
    "`udp-socklb-nodns` = this tree's agent with `--dns-learner disabled` (no cgroup_skb "
    "programs on every packet); `udp-socklb-nomatch` = the socklb cgroup sending straight to a "
    "backend address (the hooks run and find no service: their floor).",
    "- Hook cost: with kernel.bpf_stats_enabled (on for the run unless `--no-hook-stats`; "
    "the kernel then reads the clock before and after every program run, which every variant "
    "with programs pays), each program's run_time_ns / run_cnt over each measurement. "
    "\"hooks ns per op\" sums calls × ns over the hooks: the programs' share of the CPU per "
    "operation next to it; the kernel's work to call them (e.g. the socket lock the UDP "
    "sendmsg/recvmsg hooks take) is not in it.",
]


def tables(args: argparse.Namespace, results: Results) -> dict[str, report.Table]:
    def rows(kind: str, summarize) -> list[report.Summary]:
        return [summarize(name, rs) for name, rs in results[kind].items()]

    return {
        "wrk": report.Table(
            f"TCP under load: wrk -t{args.threads} -c{args.connections} -d{args.duration}s, "
            "`Connection: close` (every request a new connection)",
            "req/s", "ms", "direct", rows("wrk", report.summarize_wrk)),
        "crr": report.Table(
            f"TCP one connection at a time: {args.crr_connections} × (socket, connect, "
            "request, response, close), timed from socket() to close()",
            "conn/s", "µs", "direct", rows("crr", report.summarize_crr)),
        "udp": report.Table(
            f"UDP request/response: {args.udp_requests} sequential round trips, unconnected "
            "socket (sendto the VIP, recvfrom)",
            "rt/s", "µs", "udp-direct", rows("udp", report.summarize_udp),
            extra_label="replies from a wrong source"),
    }


COMPARISONS = [
    report.Comparison("wrk", "socklb", "direct", "TCP socklb / direct, req/s", (">=", 0.97)),
    report.Comparison("wrk", "socklb", "iptables", "TCP socklb / iptables DNAT, req/s", (">", 1.0)),
    report.Comparison("wrk", "socklb", "nftables", "TCP socklb / nftables DNAT, req/s"),
    report.Comparison("wrk", "iptables", "direct", "TCP iptables DNAT / direct, req/s"),
    report.Comparison("wrk", "nftables", "direct", "TCP nftables DNAT / direct, req/s"),
    report.Comparison("wrk", "socklb-nomatch", "direct",
                      "TCP socklb cgroup to a non-VIP address / direct, req/s"),
    # CPU per connection: the steadiest figure on a shared machine (lower is better).
    report.Comparison("wrk", "socklb", "direct", "TCP socklb / direct, CPU per connection",
                      attr="cpu"),
    report.Comparison("wrk", "iptables", "direct", "TCP iptables DNAT / direct, CPU per connection",
                      attr="cpu"),
    report.Comparison("wrk", "nftables", "direct", "TCP nftables DNAT / direct, CPU per connection",
                      attr="cpu"),
    # One at a time, the rate is at the mercy of rare stalls on a shared VM;
    # the median cycle time is the steadier figure (lower is better).
    report.Comparison("crr", "socklb", "direct", "TCP one-at-a-time socklb / direct, p50 cycle time",
                      attr="p50"),
    report.Comparison("crr", "iptables", "direct",
                      "TCP one-at-a-time iptables DNAT / direct, p50 cycle time", attr="p50"),
    report.Comparison("crr", "nftables", "direct",
                      "TCP one-at-a-time nftables DNAT / direct, p50 cycle time", attr="p50"),
    report.Comparison("crr", "socklb", "direct",
                      "TCP one-at-a-time socklb / direct, CPU per connection", attr="cpu"),
    report.Comparison("udp", "udp-socklb", "udp-direct", "UDP socklb / direct, round trips/s"),
    report.Comparison("udp", "udp-socklb", "udp-direct", "UDP socklb / direct, CPU per round trip",
                      attr="cpu"),
    report.Comparison("udp", "udp-iptables", "udp-direct", "UDP iptables DNAT / direct, round trips/s"),
    report.Comparison("udp", "udp-socklb-nomatch", "udp-direct",
                      "UDP socklb cgroup to a non-VIP address / direct, round trips/s"),
    report.Comparison("udp", "udp-socklb-nomatch", "udp-direct",
                      "UDP socklb cgroup to a non-VIP address / direct, CPU per round trip", attr="cpu"),
    # --baseline: the same traffic through the other tree's hooks.
    report.Comparison("udp", "udp-socklb-base", "udp-direct", "UDP socklb (baseline) / direct, round trips/s"),
    report.Comparison("udp", "udp-socklb-base", "udp-direct",
                      "UDP socklb (baseline) / direct, CPU per round trip", attr="cpu"),
    report.Comparison("udp", "udp-socklb", "udp-socklb-base", "UDP socklb / baseline, CPU per round trip",
                      attr="cpu"),
    report.Comparison("udp", "udp-socklb-nodns", "udp-direct",
                      "UDP socklb without the DNS learner / direct, round trips/s"),
    report.Comparison("udp", "udp-socklb-nodns", "udp-direct",
                      "UDP socklb without the DNS learner / direct, CPU per round trip", attr="cpu"),
    report.Comparison("wrk", "socklb-base", "direct", "TCP socklb (baseline) / direct, req/s"),
    report.Comparison("wrk", "socklb", "socklb-base", "TCP socklb / baseline, CPU per connection", attr="cpu"),
]


def hook_lines(results: Results, hook_results: Results) -> list[str]:
    """Per hook: ns per call (medians over rounds of run_time_ns / run_cnt),
    calls per operation, and their product summed over the hooks: the
    programs' share of an operation, next to the CPU per operation."""
    out: list[str] = []
    for kind, per_variant in hook_results.items():
        if not per_variant:
            continue
        out += [f"Hook cost per call ({kind}): kernel.bpf_stats_enabled, the programs' run_time_ns / "
                "run_cnt over each measurement, medians over rounds", "",
                "| variant | hook | calls per op | ns per call | vs base | hooks ns per op | CPU ns per op |",
                "|---|---|---:|---:|---:|---:|---:|"]
        for name, rounds in per_variant.items():
            base = per_variant.get(name + BASE_SUFFIX)
            ops = [r.ops for r in results[kind][name]]
            cpu = report.median([r.cpu_us * 1000 for r in results[kind][name]])
            total = report.median([sum(c.calls * c.ns_per_call for c in hooks.values()) / n
                                   for hooks, n in zip(rounds, ops) if n])
            for i, hook in enumerate(sorted({h for hooks in rounds for h in hooks})):
                ns = report.median([hooks[hook].ns_per_call for hooks in rounds if hook in hooks])
                calls = report.median([hooks[hook].calls / n for hooks, n in zip(rounds, ops)
                                       if hook in hooks and n])
                vs = report.fmt(report.ratio(ns, report.median(
                    [h[hook].ns_per_call for h in base if hook in h])), 3) if base else ""
                tail = f"{total:.0f} | {cpu:.0f}" if i == 0 else " | "
                out.append(f"| {name} | {hook} | {calls:.2f} | {ns:.1f} | {vs} | {tail} |")
        out.append("")
    return out


def loadavg() -> str:
    """Other work on the machine skews everything; record how busy it was."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def publish(args: argparse.Namespace, argv: list[str], results: Results, hook_results: Results,
            load_before: str, socklb_counters: dict[str, int]) -> None:
    body = report.render(tables(args, results), COMPARISONS)
    if any(hook_results.values()):
        body += [""] + hook_lines(results, hook_results)
    if socklb_counters:
        body += ["", "socklb agent counters at the end of the run (`dump counters`): "
                 + ", ".join(f"{k} {v}" for k, v in socklb_counters.items())]
    command = "cd /work/main && .venv/bin/python -m bench.datapath" + (
        " " + shlex.join(argv) if argv else "")
    print()
    print(f"$ {command}")
    load = f"load average {load_before} before the run, {loadavg()} after"
    print(f"{machine()}; {load}\n{setup_text(args)}\n")
    print("\n".join(body))
    if args.no_doc:
        return
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = report.doc_section(command, f"{machine()}; {load}", date, setup_text(args),
                                 body, NOTES)
    report.write_doc_section(DOC, section)
    lab.log(f"wrote the Datapath section of {DOC}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    check_prerequisites()
    load_before = loadavg()
    if float(load_before.split()[0]) > 0.5:
        lab.log(f"warning: the machine is busy (load average {load_before}); "
                "expect noisy numbers, compare within this run only")
    teardown = lab.Teardown()
    lab.install_exit_handlers(teardown)
    try:
        the_lab = build_lab(args, teardown)
        variants = make_variants(args.variants, the_lab)
        probe_all(variants, the_lab)
        results, hook_results = run_rounds(variants, the_lab, args)
        socklb_counters = agent.counters(the_lab.agent_paths) if the_lab.agent_paths else {}
    except KeyboardInterrupt:
        lab.log("interrupted; cleaning up")
        return 130
    except RuntimeError as exc:
        lab.log(f"failed: {exc}")
        return 1
    finally:
        teardown.close()
    publish(args, argv, results, hook_results, load_before, socklb_counters)
    return 0


if __name__ == "__main__":
    sys.exit(main())
