"""Run the C load generators inside the client namespace and cgroup, and
parse what they print. Nothing here judges the numbers."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.lab import join_cgroup, netns_exec

NAN = float("nan")

# wrk prints durations with these units (src/units.c: time_units_us).
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


@dataclass
class WrkResult:
    """One wrk run."""
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: dict[str, int] = field(default_factory=dict)   # connect/read/write/timeout
    non_2xx: int = 0
    cpu_us: float = NAN    # CPU time of client + servers per request, filled in by the caller

    @property
    def ops(self) -> int:
        return self.requests


@dataclass
class CrrResult:
    """One tcp_crr run: sequential connect + request + response + close."""
    sent: int
    ok: int
    rate: float
    p50_us: float
    p99_us: float
    connect_errors: int
    io_errors: int
    bad_replies: int
    cpu_us: float = NAN

    @property
    def ops(self) -> int:
        return self.ok


@dataclass
class UdpResult:
    """One udp_rr client run."""
    sent: int
    ok: int
    rate: float
    p50_us: float
    p99_us: float
    timeouts: int
    wrong_source: int
    first_wrong_source: str
    stale: int
    send_errors: int
    cpu_us: float = NAN

    @property
    def ops(self) -> int:
        return self.ok


def run_in_client(ns: str, cgroup: Path, cmd: list[str], timeout: float,
                  cpus: set[int] | None = None) -> str:
    """Start cmd in the client cgroup (joined before exec) and netns; return
    its stdout. The cgroup decides which BPF programs see its sockets."""
    res = subprocess.run(netns_exec(ns, cmd), preexec_fn=join_cgroup(cgroup, cpus),
                         capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}): {res.stderr.strip()}\n{res.stdout}")
    return res.stdout


# --- wrk ---------------------------------------------------------------------

def wrk_command(url: str, threads: int, connections: int, duration_s: float,
                script: Path | None = None) -> list[str]:
    # Connection: close makes every request a new TCP connection: connect(),
    # request, response, close. That is where socket LB does its work.
    cmd = ["wrk", "--latency", "-t", str(threads), "-c", str(connections),
           "-d", f"{max(1, round(duration_s))}s", "-H", "Connection: close"]
    if script is not None:
        cmd += ["-s", str(script)]
    return cmd + [url]


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(out: str) -> WrkResult:
    def need(pattern: str) -> re.Match:
        m = re.search(pattern, out, re.M)
        if m is None:
            raise ValueError(f"unexpected wrk output (no /{pattern}/):\n{out}")
        return m

    requests = int(need(r"^\s*(\d+) requests in ").group(1))
    rps = float(need(r"^Requests/sec:\s*([\d.]+)").group(1))
    if requests == 0:
        p50 = p99 = float("nan")
    else:
        p50 = _ms(*need(r"^\s*50%\s+([\d.]+)(us|ms|s|m|h)\s*$").groups())
        p99 = _ms(*need(r"^\s*99%\s+([\d.]+)(us|ms|s|m|h)\s*$").groups())
    errors = {}
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(requests, rps, p50, p99, errors, int(m.group(1)) if m else 0)


def run_wrk(ns: str, cgroup: Path, url: str, threads: int, connections: int,
            duration_s: float) -> WrkResult:
    cmd = wrk_command(url, threads, connections, duration_s)
    return parse_wrk(run_in_client(ns, cgroup, cmd, timeout=duration_s + 30))


# A probe, not a measurement: count which backend answered each response
# (nginx returns its $server_port), to show that a VIP really spreads over
# every backend. Per-thread tables are collected in done().
SPREAD_LUA = """\
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) hits = {} end
function response(status, headers, body)
  hits[body] = (hits[body] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for body, n in pairs(t:get("hits")) do
      io.write(string.format("spread %s %d\\n", body:gsub("%s+$", ""), n))
    end
  end
end
"""


def run_wrk_spread(ns: str, cgroup: Path, url: str, workdir: Path,
                   duration_s: float = 1.0) -> tuple[WrkResult, dict[str, int]]:
    script = workdir / "spread.lua"
    if not script.exists():
        script.write_text(SPREAD_LUA)
    out = run_in_client(ns, cgroup, wrk_command(url, 1, 4, duration_s, script),
                        timeout=duration_s + 30)
    spread: dict[str, int] = {}
    for m in re.finditer(r"^spread (\S+) (\d+)$", out, re.M):
        spread[m.group(1)] = spread.get(m.group(1), 0) + int(m.group(2))
    return parse_wrk(out), spread


# --- tcp_crr and udp_rr: one line of key=value pairs ------------------------------

def parse_kv(out: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in out.split() if "=" in item)


def parse_crr(out: str) -> CrrResult:
    kv = parse_kv(out)
    return CrrResult(
        sent=int(kv["sent"]), ok=int(kv["ok"]), rate=float(kv["rate"]),
        p50_us=float(kv["p50_us"]), p99_us=float(kv["p99_us"]),
        connect_errors=int(kv["connect_errors"]), io_errors=int(kv["io_errors"]),
        bad_replies=int(kv["bad_replies"]))


def run_tcp_crr(ns: str, cgroup: Path, exe: Path, addr: str, port: int, count: int,
                cpus: set[int] | None = None) -> CrrResult:
    cmd = [str(exe), addr, str(port), str(count)]
    return parse_crr(run_in_client(ns, cgroup, cmd, timeout=60 + count * 0.01, cpus=cpus))


def parse_udp(out: str) -> UdpResult:
    kv = parse_kv(out)
    return UdpResult(
        sent=int(kv["sent"]), ok=int(kv["ok"]), rate=float(kv["rate"]),
        p50_us=float(kv["p50_us"]), p99_us=float(kv["p99_us"]),
        timeouts=int(kv["timeouts"]), wrong_source=int(kv["wrong_source"]),
        first_wrong_source=kv["first_wrong_source"], stale=int(kv["stale"]),
        send_errors=int(kv["send_errors"]))


def run_udp_client(ns: str, cgroup: Path, exe: Path, addr: str, port: int,
                   count: int, cpus: set[int] | None, timeout_ms: int = 200) -> UdpResult:
    cmd = [str(exe), "client", addr, str(port), str(count), str(timeout_ms)]
    budget = 30 + count * timeout_ms / 1000.0
    return parse_udp(run_in_client(ns, cgroup, cmd, timeout=budget, cpus=cpus))
