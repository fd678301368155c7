"""Medians, ratios and the docs/benchmarks.md section. Numbers are reported,
not asserted: a benchmark prints ratios and, where a comparison has a target,
a verdict on this run (met / borderline / not met), never a test failure.

The statistic that decides a target is the median of the per-round ratios
(the variants of a round ran back to back, so a slow drift of the shared
machine cancels out) with its quartiles: met when both quartiles meet the
target, not met when neither does, borderline when they straddle it. The
ratio of the per-variant medians (the tables' "vs" columns) is printed next
to it for reference; it does not decide."""

from __future__ import annotations

import argparse
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import CrrResult, WrkResult, UdpResult

BEGIN, END = "<!-- datapath:begin -->", "<!-- datapath:end -->"

DOC_HEADER = """\
# Benchmarks

Each benchmark under `bench/` prints its results with ratios against peers
measured in the same run, and records its latest run in its own section
below (between its `<!-- name:begin -->`/`<!-- name:end -->` markers, so
re-running one benchmark replaces only its own section).
"""


def median(values: list[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def fmt(x: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{digits}f}"


@dataclass
class Summary:
    """One variant of one kind of measurement, over all rounds."""
    name: str
    rate: float                 # median over rounds
    p50: float                  # median over rounds of each round's p50
    p99: float
    rounds_rate: list[float]
    rounds_p50: list[float]
    rounds_cpu: list[float]     # CPU µs per operation, client + server cgroups
    errors: int
    extra: str = ""             # a kind-specific column (UDP: replies from a wrong source)


    @property
    def cpu(self) -> float:
        return median(self.rounds_cpu)


@dataclass
class Table:
    title: str
    rate_label: str             # "req/s"
    unit: str                   # latency unit: "ms" | "µs"
    base: str                   # the variant the others are divided by
    rows: list[Summary]
    extra_label: str = ""

    def row(self, name: str) -> Summary | None:
        return next((r for r in self.rows if r.name == name), None)


def summarize_wrk(name: str, results: list[WrkResult]) -> Summary:
    return Summary(name, median([r.rps for r in results]),
                   median([r.p50_ms for r in results]), median([r.p99_ms for r in results]),
                   [r.rps for r in results], [r.p50_ms for r in results],
                   [r.cpu_us for r in results],
                   sum(sum(r.errors.values()) + r.non_2xx for r in results))


def summarize_crr(name: str, results: list[CrrResult]) -> Summary:
    return Summary(name, median([r.rate for r in results]),
                   median([r.p50_us for r in results]), median([r.p99_us for r in results]),
                   [r.rate for r in results], [r.p50_us for r in results],
                   [r.cpu_us for r in results],
                   sum(r.connect_errors + r.io_errors + r.bad_replies for r in results))


def summarize_udp(name: str, results: list[UdpResult]) -> Summary:
    return Summary(name, median([r.rate for r in results]),
                   median([r.p50_us for r in results]), median([r.p99_us for r in results]),
                   [r.rate for r in results], [r.p50_us for r in results],
                   [r.cpu_us for r in results],
                   sum(r.timeouts + r.send_errors for r in results),
                   extra=str(sum(r.wrong_source for r in results)))


def render_table(t: Table) -> list[str]:
    base = t.row(t.base)
    digits = 2 if t.unit == "ms" else 1

    def vs(value: float, attr: str) -> str:
        return fmt(ratio(value, getattr(base, attr)), 3) if base else "n/a"

    extra_h, extra_a = (f" {t.extra_label} |", "---:|") if t.extra_label else ("", "")
    out = [f"{t.title}", "",
           f"| variant | {t.rate_label} | p50 {t.unit} | p99 {t.unit} | CPU µs/op "
           f"| {t.rate_label} vs {t.base} | p50 vs {t.base} | p99 vs {t.base} "
           f"| CPU vs {t.base} | {t.rate_label} per round | errors |{extra_h}",
           f"|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|{extra_a}"]
    for r in t.rows:
        extra = f" {r.extra} |" if t.extra_label else ""
        out.append(f"| {r.name} | {r.rate:.0f} | {fmt(r.p50, digits)} | {fmt(r.p99, digits)} "
                   f"| {fmt(r.cpu, 1)} | {vs(r.rate, 'rate')} | {vs(r.p50, 'p50')} "
                   f"| {vs(r.p99, 'p99')} | {vs(r.cpu, 'cpu')} "
                   f"| {' '.join(f'{v:.0f}' for v in r.rounds_rate)} | {r.errors} |{extra}")
    return out


def paired_ratios(a: list[float], b: list[float]) -> list[float]:
    """Per-round ratios: the variants of one round ran back to back, so these
    cancel slow drifts of the (noisy, shared) machine."""
    return [r for r in (ratio(x, y) for x, y in zip(a, b)) if not math.isnan(r)]


def quartiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


@dataclass(frozen=True)
class Comparison:
    """A headline ratio table[a] / table[b] of the rates ("rate"), the median
    latencies ("p50") or the CPU time per operation ("cpu")."""
    table: str
    a: str
    b: str
    what: str
    target: tuple[str, float] | None = None   # (">=" | ">" | "<=" | "<", bound) on the per-round ratios
    attr: str = "rate"


def verdict(target: tuple[str, float], q1: float, med: float, q3: float) -> str:
    """met / borderline / not met, from the per-round ratios: both quartiles
    meet the target, they straddle it, or neither does. With fewer than two
    rounds (no quartiles) the median alone decides; without it, "" (none)."""
    op, bound = target

    def meets(x: float) -> bool:
        return {">=": x >= bound, ">": x > bound, "<=": x <= bound, "<": x < bound}[op]

    if math.isnan(q1) or math.isnan(q3):
        if math.isnan(med):
            return ""
        return "met" if meets(med) else "not met"
    if meets(q1) and meets(q3):
        return "met"
    if not meets(q1) and not meets(q3):
        return "not met"
    return "borderline"


_WHY = {"met": "both quartiles meet it", "not met": "neither quartile meets it",
        "borderline": "the quartiles straddle it"}


def target_text(target: tuple[str, float] | None, q1: float, med: float, q3: float) -> str:
    """The target and this run's verdict on it; a statement, not an assertion
    (one noisy run proves little)."""
    if target is None:
        return ""
    op, bound = target
    sign = {">=": "≥", ">": ">", "<=": "≤", "<": "<"}[op]
    v = verdict(target, q1, med, q3)
    if not v:
        return f" — target {sign} {bound:g}x"
    why = _WHY[v] if not (math.isnan(q1) or math.isnan(q3)) else "one round: the median alone"
    return f" — target {sign} {bound:g}x: {v} in this run ({why})"


def headline_line(what: str, med: float, q1: float, q3: float, overall: float,
                  target: tuple[str, float] | None = None) -> str:
    """One comparison: the deciding statistic first (median of the per-round
    ratios, with quartiles), the ratio of the medians for reference, then the
    target's verdict."""
    return (f"- {what}: per-round median **{fmt(med, 3)}x** (quartiles {fmt(q1, 3)}–{fmt(q3, 3)}; "
            f"ratio of the medians {fmt(overall, 3)}x){target_text(target, q1, med, q3)}")


def headline(tables: dict[str, Table], comparisons: list[Comparison]) -> list[str]:
    lines = []
    for c in comparisons:
        t = tables.get(c.table)
        x, y = (t.row(c.a), t.row(c.b)) if t else (None, None)
        if x is None or y is None:
            continue
        per_round = paired_ratios(getattr(x, f"rounds_{c.attr}"), getattr(y, f"rounds_{c.attr}"))
        q1, q3 = quartiles(per_round)
        overall = ratio(getattr(x, c.attr), getattr(y, c.attr))
        lines.append(headline_line(c.what, median(per_round), q1, q3, overall, c.target))
    return lines


def render(tables: dict[str, Table], comparisons: list[Comparison]) -> list[str]:
    out: list[str] = []
    for t in tables.values():
        if t.rows:
            out += render_table(t) + [""]
    return out + headline(tables, comparisons)


def doc_section(command: str, machine: str, date: str, setup: str, body: list[str],
                notes: list[str]) -> str:
    lines = [BEGIN, "## Datapath", "",
             "TCP connect + request + response + close (wrk with `Connection: close` "
             "against nginx-light, and one connection at a time with `bench/tcp_crr.c`), "
             "and sequential UDP request/response (`bench/udp_rr.c`), from a client "
             "network namespace to backends in another one over a veth. Variants are "
             "interleaved over the rounds; tables show medians over rounds. Each comparison "
             "below the tables gives the median of the per-round ratios with its quartiles, "
             "which decides a target (met: both quartiles meet it; borderline: they straddle "
             "it; not met: neither does), and the ratio of the medians (the tables' \"vs\" "
             "columns) for reference.", "",
             "```", command, "```", "",
             f"- Machine: {machine}", f"- Date: {date}", f"- Setup: {setup}", "",
             *body, "", *notes, END]
    return "\n".join(lines) + "\n"


def write_doc_section(path: Path, section: str) -> None:
    """Replace the section between its markers (its first line,
    `<!-- NAME:begin -->`, and `<!-- NAME:end -->`), or append it; leave the
    rest of the file (other benchmarks' sections) exactly as it was."""
    begin = section.splitlines()[0]
    if not re.fullmatch(r"<!-- [\w-]+:begin -->", begin):
        raise ValueError(f"a doc section starts with its begin marker, not {begin!r}")
    end = begin.replace(":begin", ":end")
    text = path.read_text() if path.exists() else DOC_HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(path: Path, section: str, write: bool = True) -> None:
    """Print a benchmark's doc section and (write) put it in its place in
    the doc."""
    print("\n" + section)
    if write:
        write_doc_section(path, section)
        print(f"[bench] wrote {path}", file=sys.stderr, flush=True)


def bench_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser: its module doc as the help, and
    --no-doc (print the section, leave docs/benchmarks.md alone)."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    return p
