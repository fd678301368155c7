"""Flow-dump and statistics-collection benchmark: what one read of the node's
flow records and one socket-statistics collection cost at 1k, 10k and 100k
load-balanced TCP connections, for each way the node can take on this kernel,
next to `ss` listing the same connections (what an operator would run to
count connections per backend without socklb), measured in the same run.

    .venv/bin/python -m bench.flows [--sizes 1000,10000,100000] [--rounds 5] [--no-doc]

Setup (bench.termination's lab): a VIP 127.96.61.10:80 with 10 loopback
backends (accept-and-hold server processes), client processes in a cgroup of
ours where the agent's programs are attached, holding N connections to the
VIP, in the root namespace (the table also holds the N server-side peers).

Variants, interleaved (order rotated per round), each checked to return
exactly the N flows:
  map-iter          FlowReader("map-iter").read(): iter/bpf_sk_storage_map,
                    every namespace at once (where the kernel allows it)
  socket-iter       FlowReader("socket-iter").read(): iter/tcp + iter/udp in
                    every namespace of the node, found through /proc and
                    /run/netns (what the agent does)
  socket-iter-host  the same in the host namespace only (the walk floor)
  flow-counts       the agent's `flows` statistics part: the way the agent
                    took (auto), counting in the kernel (FlowReader.count),
                    + the per-service grouping it reports
  socket-stats      SocketStatsCollector.collect(): the socket-statistics part
  ss                ss -Htn state established dport = :PORT (counting lines)
Ratios: ss time / variant time (above 1: the variant is faster).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.lab import log, run_stamp
from bench.report import ratio, write_doc_section
from bench.termination import BACKENDS, CLIENT_MAX, Lab, Phase, lab_run, machine, median, split

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- flows:begin -->", "<!-- flows:end -->"
VARIANTS = ("map-iter", "socket-iter", "socket-iter-host", "flow-counts", "socket-stats", "ss")


class Readers:
    """The loaded readers (load time kept apart) and what each variant runs."""

    def __init__(self, lab: Lab):
        from socklb.dataplane.bpfobj import first_line
        from socklb.dataplane.flows import FlowReader, FlowReaderError
        from socklb.dataplane.sockstats import SocketStatsCollector

        self.lab = lab
        self.refused: dict[str, str] = {}
        self.loads: dict[str, float] = {}
        self.readers = {}
        host = [f"/proc/{os.getpid()}/ns/net"]
        for name, kw in (("map-iter", {"method": "map-iter"}), ("socket-iter", {"method": "socket-iter"}),
                         ("socket-iter-host", {"method": "socket-iter", "netns": host}),
                         ("flow-counts", {"method": "auto"})):
            t0 = time.monotonic()
            try:
                self.readers[name] = FlowReader(lab.pin_dir, **kw)
            except FlowReaderError as e:
                self.refused[name] = first_line(e)
                log(f"{name}: not measured: {self.refused[name]}")
                continue
            self.loads[name] = time.monotonic() - t0
        t0 = time.monotonic()
        self.stats = SocketStatsCollector(lab.pin_dir)
        self.loads["socket-stats"] = time.monotonic() - t0
        self.auto_method = self.readers["flow-counts"].method.value
        self.names = {}  # frontend id -> service, as the agent keeps it
        for fe in lab.agent.stub.DumpServices(lab.agent.pb.DumpRequest(), timeout=60).frontends:
            self.names[fe.id] = fe.service

    def variants(self) -> list[str]:
        return [v for v in VARIANTS if v not in self.refused]

    def run(self, variant: str, size: int) -> float:
        """Seconds of one read; checks it saw exactly `size` connections."""
        from socklb.dataplane.stats import flow_counts

        t0 = time.monotonic()
        if variant == "ss":
            r = subprocess.run(["ss", "-Htn", "state", "established", "dport", "=", f":{self.lab.port}"],
                               capture_output=True, text=True, check=True)
            seconds = time.monotonic() - t0
            got = r.stdout.count("\n")
        elif variant == "socket-stats":
            samples = self.stats.collect()
            seconds = time.monotonic() - t0
            got = len(samples)
        elif variant == "flow-counts":
            counts = flow_counts(self.readers[variant].count().counts, self.names)
            seconds = time.monotonic() - t0
            got = sum(c.active for c in counts)
        else:
            dump = self.readers[variant].read()
            seconds = time.monotonic() - t0
            got = len(dump.flows)
        if got != size:
            raise RuntimeError(f"{variant} saw {got} connections, expected {size}")
        return seconds

    def close(self) -> None:
        for r in self.readers.values():
            r.close()
        self.stats.close()


def measure(readers: Readers, size: int, rounds: int) -> dict[str, list[float]]:
    variants = readers.variants()
    out: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            out[v].append(readers.run(v, size))
    return out


def render(args, results: dict[int, dict[str, list[float]]], readers: Readers, started: str,
           load_before: str, elapsed: float) -> str:
    variants = readers.variants()
    lines = [BEGIN, "## Flow dump and statistics collection", "",
             "What one read of the node's flow records (`socklb-dataplane dump flows`, the `flows` part of "
             "every statistics report) and one socket-statistics collection cost, for each way the node "
             "can take on the kernel it runs on, next to `ss` listing the same connections. "
             "N load-balanced TCP connections held in the root namespace (plus their N server-side "
             "peers in the table); medians over rounds, variants interleaved. Ratio = ss / variant "
             "(above 1: faster than ss).", "",
             "```", "sudo .venv/bin/python -m bench.flows " + " ".join(args.argv), "```", "",
             f"- Machine: {machine()}", f"- Date: {started} UTC; load average before: {load_before}; "
             f"run took {elapsed:.0f} s", f"- Rounds: {args.rounds}",
             f"- The agent's way (auto) on this kernel: flows={readers.auto_method}", ""]
    head = "| connections | " + " | ".join(variants) + " |"
    lines += [head, "|" + "---|" * (len(variants) + 1)]
    for size, res in sorted(results.items()):
        ss = median(res["ss"])
        cells = []
        for v in variants:
            m = median(res[v])
            cells.append(f"{m * 1000:.1f} ms" + ("" if v == "ss" else f" ({ratio(ss, m):.2f}x)"))
        lines.append(f"| {size} | " + " | ".join(cells) + " |")
    lines += ["", "Per connection (median / N):", ""]
    lines += [head, "|" + "---|" * (len(variants) + 1)]
    for size, res in sorted(results.items()):
        lines.append(f"| {size} | " + " | ".join(f"{median(res[v]) / size * 1e9:.0f} ns" for v in variants) + " |")
    lines.append("")
    if readers.refused:
        for v, why in readers.refused.items():
            lines.append(f"- **{v}: not measurable on this kernel** — {why}. Where the kernel allows "
                         "map-element iterators, this column shows its cost; the agent takes it there "
                         "(it visits only the sockets that have a flow record, in one pass over every "
                         "namespace, where socket-iter walks every socket of every namespace).")
    lines += [f"- Program load (once per agent start, not in the figures): "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in readers.loads.items()) + ".",
              "- socket-iter walks the whole TCP table (client and server sockets alike) in each network "
              "namespace: its cost grows with every socket on the node, not only balanced ones; "
              "socket-iter-host is that walk in one namespace.",
              "- flow-counts is what every statistics report costs: the same walk, counting per backend "
              "in the kernel (a hash map read once) instead of a record per socket; socket-stats emits a "
              "record per balanced socket with its TCP_INFO-like fields.", END]
    return "\n".join(lines) + "\n"




def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-doc", action="store_true")
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.sizes = [int(x) for x in args.sizes.split(",") if x]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (BPF, cgroups, namespaces)", file=sys.stderr)
        return 2
    started, load_before, t_start = run_stamp()
    with lab_run() as lab:
        nclients = max(1, -(-max(args.sizes) // CLIENT_MAX))
        servers = [lab.servers([[None, a, lab.port, i]], f"server{i}") for i, a in enumerate(BACKENDS)]
        clients = lab.clients(nclients, [], "client")
        phase = Phase(lab, "flows", clients, servers, [[-1]] * nclients, {})
        for ci in range(nclients):
            phase.held[ci][-1] = [0, 0]
        readers = Readers(lab)
        lab.teardown.add("readers", readers.close)
        results = {}
        for size in sorted(args.sizes):
            phase.fill([{-1: (n, 0)} for n in split(size, nclients)])
            results[size] = measure(readers, size, args.rounds)
            log(f"{size}: " + ", ".join(f"{v} {median(t) * 1000:.1f} ms" for v, t in results[size].items()))
        section = render(args, results, readers, started, load_before, time.monotonic() - t_start)
        print("\n" + section)
        if not args.no_doc:
            write_doc_section(DOC, section)
            log(f"wrote {DOC}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
