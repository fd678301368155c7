"""Drive the socklb dataplane agent through its CLI, as an operator would.

Contract used (socklb.dataplane.cli):
  run --state FILE --cgroup CG --pin-dir DIR --admin-socket SOCK
      foreground; attaches to CG, applies FILE, prints a line containing
      "ready" on stderr once serving; SIGTERM stops it but, by design, leaves
      the programs pinned and attached.
  detach --pin-dir DIR --cgroup CG
      removes the programs and the pins.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import yaml

from bench.backends import stop_process
from bench.lab import Teardown, log, run
from bench.nat import Service
from socklb.lb import protocols
from socklb.v1 import types_pb2

CLI_MODULE = "socklb.dataplane.cli"
# The word, not a substring: "already attached" must not count as ready.
READY = re.compile(r"\bready\b")
T = TypeVar("T")


@dataclass(frozen=True)
class AgentPaths:
    state: Path
    cgroup: Path
    pin_dir: Path
    admin_socket: Path
    log: Path


def state_document(services: dict[str, Service]) -> dict:
    return {
        "version": 1,
        "services": [
            {
                "name": name,
                "frontends": [{"address": s.vip, "port": s.port, "protocol": types_pb2.Protocol.Name(protocols.pb_of_name(s.proto))}],
                "backends": [{"address": a, "port": p, "weight": 1} for a, p in s.backends],
            }
            for name, s in services.items()
        ],
    }


def require_cli() -> None:
    if importlib.util.find_spec(CLI_MODULE) is None:
        raise RuntimeError(
            f"the socklb variants need the dataplane agent ({CLI_MODULE}), which is not "
            "there yet; leave them out with e.g. --variants direct,iptables,nftables,udp-direct")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", CLI_MODULE, *args]


def detach(pin_dir: Path, cgroup: Path) -> None:
    """Remove the programs from the cgroup and the pins from bpffs."""
    if not pin_dir.exists():
        return  # the agent never got as far as pinning
    run(cli("detach", "--pin-dir", str(pin_dir), "--cgroup", str(cgroup)), check=False)
    if pin_dir.exists():
        # Whatever the agent left behind is ours (the dir name has our pid).
        shutil.rmtree(pin_dir, ignore_errors=True)


def wait_ready(proc: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        text = log_path.read_text(errors="replace")
        if READY.search(text):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"socklb agent exited with {proc.returncode} before ready:\n"
                               f"{tail(text)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"socklb agent not ready after {timeout:.0f}s:\n{tail(text)}")
        time.sleep(0.1)


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def start_agent(paths: AgentPaths, services: dict[str, Service], teardown: Teardown,
                ready_timeout: float, extra: dict | None = None, tree: Path | None = None,
                args: list[str] | None = None) -> subprocess.Popen:
    """extra: more of the NodeState (workloads, policy_sets); tree: another
    socklb tree whose agent (and BPF programs) to run, e.g. a baseline as
    "before"; args: more agent arguments."""
    require_cli()
    env = cwd = None
    if tree is not None:
        # Run from the tree, too: `python -m` puts the working directory
        # first on sys.path, ahead of PYTHONPATH.
        cwd = tree.resolve()
        env = dict(os.environ, PYTHONPATH=str(cwd))
    paths.state.write_text(yaml.safe_dump({**state_document(services), **(extra or {})}, sort_keys=False))
    # Registered before the start: a crash half-way through attaching must
    # still be undone. Runs after the agent is stopped (LIFO).
    teardown.add("socklb programs", lambda: detach(paths.pin_dir, paths.cgroup))
    # The agent's output goes to a file, not a pipe, so it can never block
    # on a full pipe while we are busy measuring.
    with open(paths.log, "wb") as out:
        proc = subprocess.Popen(
            cli("run", "--state", str(paths.state), "--cgroup", str(paths.cgroup),
                "--pin-dir", str(paths.pin_dir), "--admin-socket", str(paths.admin_socket), *(args or [])),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    teardown.add("socklb agent", lambda: stop_process(proc, signal.SIGTERM, timeout=20))
    t0 = time.monotonic()
    wait_ready(proc, paths.log, ready_timeout)
    log(f"socklb agent (pid {proc.pid}) ready after {time.monotonic() - t0:.1f}s, "
        f"attached to {paths.cgroup}")
    return proc


def agent_log_tail(paths: AgentPaths) -> str:
    try:
        return tail(paths.log.read_text(errors="replace"))
    except FileNotFoundError:
        return ""


def counters(paths: AgentPaths) -> dict[str, int]:
    """The agent's datapath counters, through its admin API: evidence that
    the socklb rounds really went through socklb's translation."""
    res = run(cli("dump", "counters", "-o", "json", "--admin-socket", str(paths.admin_socket)),
              check=False)
    if res.returncode != 0:
        return {}
    return {k: int(v) for k, v in json.loads(res.stdout).items() if str(v).isdigit()}


# --- the hooks' own cost, as the kernel counts it ------------------------------

BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
# bpftool names attach types either way, depending on its version.
HOOK_NAMES = {"cgroup_inet4_connect": "connect4", "cgroup_inet6_connect": "connect6",
              "cgroup_udp4_sendmsg": "sendmsg4", "cgroup_udp6_sendmsg": "sendmsg6",
              "cgroup_udp4_recvmsg": "recvmsg4", "cgroup_udp6_recvmsg": "recvmsg6",
              "cgroup_inet4_getpeername": "getpeername4", "cgroup_inet6_getpeername": "getpeername6",
              "cgroup_inet_sock_release": "sock_release"}


def enable_bpf_stats(teardown: Teardown) -> None:
    """kernel.bpf_stats_enabled for the run (restored after): the kernel then
    counts each program's runs and run time (a clock read before and after
    every run, some tens of ns, paid by every variant with programs)."""
    old = BPF_STATS.read_text().strip()
    teardown.add("bpf stats", lambda: BPF_STATS.write_text(old))
    BPF_STATS.write_text("1")


def hook_programs(cgroup: Path) -> dict[str, int]:
    """hook name (connect4, sendmsg4, ...) -> id of the program attached to cgroup."""
    progs = json.loads(run(["bpftool", "-j", "cgroup", "show", str(cgroup)], quiet=True).stdout or "[]")
    return {HOOK_NAMES.get(p["attach_type"], p["attach_type"]): p["id"] for p in progs}


def prog_stats(prog_id: int) -> tuple[int, int]:
    """(run_cnt, run_time_ns) of a program, 0s while bpf stats are off."""
    info = json.loads(run(["bpftool", "-j", "prog", "show", "id", str(prog_id)], quiet=True).stdout)
    return info.get("run_cnt", 0), info.get("run_time_ns", 0)


@dataclass(frozen=True)
class HookCost:
    calls: int
    ns_per_call: float


def hook_costs(programs: dict[str, int], measure: Callable[[], T]) -> tuple[T, dict[str, HookCost]]:
    """Run measure() and return its result with what each hook that ran
    meanwhile cost per call."""
    before = {h: prog_stats(i) for h, i in programs.items()}
    res = measure()
    costs = {}
    for h, i in programs.items():
        cnt, ns = prog_stats(i)
        calls = cnt - before[h][0]
        if calls > 0:
            costs[h] = HookCost(calls, (ns - before[h][1]) / calls)
    return res, costs
