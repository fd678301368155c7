"""One tree's snapshot applies, for bench/snapshot_apply.py: run as a script
with PYTHONPATH set to the tree whose code is measured (this one, or the
--baseline one), so that both trees go through the same phases on the same
state files, one after the other, each in a process of its own.

    PYTHONPATH=TREE python bench/snapshot_worker.py SPEC.json

SPEC names the state files, the pin directory, the cgroup, the map-writes
way and the connect loop; the worker loads the tree's datapath there,
applies (see PHASES) and prints one JSON line: per phase, the map entries
written or deleted and the seconds (wall and this thread's CPU) of the
parse, the apply and the map writer's share, the probe's connects, and a
digest of the services and backends maps after the full apply.

Only the agent's public surface is used (Agent, BpfMapWriter,
statefile.load_state, loader.Datapath), which both trees have.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from socklb.dataplane.agent import Agent
from socklb.dataplane.layout import Meta
from socklb.dataplane.loader import Capacity, Datapath, detach
from socklb.dataplane.maps import BpfMapWriter
from socklb.dataplane.statefile import load_state
from socklb.v1 import node_pb2

# (phase, state file key or "delta", whether the connect probe runs)
PHASES = (
    ("full", "full", True),        # one-service state -> the full state: every entry written
    ("one changed", "changed", False),  # the full state again, one service's backends changed
    ("delta", "delta", False),     # apply_delta: that service back (one upsert)
    ("same", "full", False),       # the same full state again (nothing to write)
    ("remove", "small", True),     # back to the one-service state: every entry deleted
)


class TimedWriter(BpfMapWriter):
    """The map writer, timing its share of an apply (the plan's ops)."""

    def __init__(self, datapath, way):
        super().__init__(datapath, way)
        self.seconds = self.cpu = 0.0
        self.entries = 0

    def _execute_ops(self, ops) -> None:
        ops = list(ops)
        t, c = time.perf_counter(), time.thread_time()
        super()._execute_ops(ops)
        self.seconds += time.perf_counter() - t
        self.cpu += time.thread_time() - c
        self.entries += len(ops)


def digest(writer: BpfMapWriter) -> tuple[str, dict]:
    """A digest of the services and backends maps' entries (sorted key and
    value bytes), and their sizes."""
    h, sizes = hashlib.sha256(), {}
    for name in ("services", "backends"):
        m = writer._batch_maps[name]
        entries = sorted((bytes(k), bytes(v)) for k, v in m.items())
        sizes[name] = len(entries)
        for k, v in entries:
            h.update(k + v)
    return h.hexdigest()[:16], sizes


def kernel_call(writer: BpfMapWriter) -> dict:
    """The kernel's share alone: every entry of the services and backends
    maps written again (the same bytes: nothing changes), packed beforehand,
    in batches of the writer's size; seconds (wall, CPU) and entries."""
    parts = []
    for name in ("services", "backends"):
        m = writer._batch_maps[name]
        entries = [(bytes(k), bytes(v)) for k, v in m.items()]
        for i in range(0, len(entries), 1 << 16):
            chunk = entries[i:i + (1 << 16)]
            parts.append((m, b"".join(k for k, _ in chunk), b"".join(v for _, v in chunk), len(chunk)))
    t, c = time.perf_counter(), time.thread_time()
    for m, keys, values, n in parts:
        m.update_batch(keys, values, n)
    return {"s": time.perf_counter() - t, "cpu": time.thread_time() - c, "entries": sum(p[3] for p in parts)}


def probe_client(spec: dict) -> subprocess.Popen:
    cg = spec["cgroup"]

    def join() -> None:
        Path(cg, "cgroup.procs").write_text(str(os.getpid()))
    p = subprocess.Popen([sys.executable, spec["loop"], "connect", spec["vip"], str(spec["port"]),
                          str(spec["interval"])], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         preexec_fn=join)
    p.stdout.readline()  # "started"
    time.sleep(0.2)  # the loop is running before the apply begins
    return p


def phase(agent: Agent, writer: TimedWriter, spec: dict, source: str, probe: bool) -> dict:
    client = probe_client(spec) if probe else None
    try:
        writer.seconds, writer.cpu, writer.entries = 0.0, 0.0, 0
        t0, c0 = time.perf_counter(), time.thread_time()
        if source == "delta":
            svc = node_pb2.ServiceState(**json.loads(Path(spec["delta"]).read_text()))
            msg = node_pb2.NodeStateDelta(from_version=agent.applied_version, version=agent.applied_version + 1,
                                          upserts=[svc])
        else:
            msg = load_state(spec[source])
        t1, c1 = time.perf_counter(), time.thread_time()
        if source == "delta":
            agent.apply_delta(msg)
        else:
            agent.apply(msg)
        t2, c2 = time.perf_counter(), time.thread_time()
        if client is not None:
            time.sleep(0.3)
    finally:
        out = client.communicate("", timeout=30)[0] if client is not None else ""
    c = json.loads(out.splitlines()[-1]) if out else {"ok": 0, "failed": 0, "errors": {}}
    return {"entries": writer.entries, "parse_s": t1 - t0, "parse_cpu": c1 - c0, "apply_s": t2 - t1,
            "apply_cpu": c2 - c1, "write_s": writer.seconds, "write_cpu": writer.cpu,
            "ok": c["ok"], "failed": c["failed"], "errors": c["errors"]}


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    pins = Path(spec["pins"])
    dp = Datapath(pin_dir=pins, cgroup=Path(spec["cgroup"]), capacity=Capacity(services=1 << 20, backends=1 << 20))
    try:
        dp.load()
        writer = TimedWriter(dp, spec["way"])
        writer.set_meta(Meta.NEXT_FRONTEND_ID, 1)
        writer.set_meta(Meta.NEXT_BACKEND_ID, 1)
        agent = Agent(writer, "bench")
        agent.apply(load_state(spec["small"]))
        out = {"batch_probe": writer.batch_refused or "yes", "phases": {}}
        for name, source, probe in PHASES:
            out["phases"][name] = phase(agent, writer, spec, source, probe)
            if name == "full":
                out["digest"], out["sizes"] = digest(writer)
                out["kernel"] = kernel_call(writer)
        print(json.dumps(out), flush=True)
        return 0
    finally:
        dp.close()
        detach(pins)
        shutil.rmtree(pins, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
