"""Convergence of the control plane: API write -> every node ACKed.

    .venv/bin/python -m bench.convergence [--nodes 10,100,1000] [--services 10000] [--writes 100]

What it does (everything on this machine, nothing needs root):

1. Starts the control plane as its own process (``python -m
   socklb.controlplane.server`` on an embedded store in a temp dir) and
   reads its memory (VmRSS) idle.
2. Loads ``--small-services`` services (10 backends each) through the API,
   connects 10 nodes and times writes: the "few services" side of the
   "cost of one update does not depend on the number of services" ratio.
   The same 10 nodes run once as lean asyncio nodes and once as the real
   node code path (Agent on in-memory maps + SyncClient), to show the lean node is
   faithful.
3. Loads the rest up to ``--services`` through the API with a few concurrent
   clients (the load rate is reported), then has fresh nodes fetch the full
   snapshot (size of all chunks, time from Hello to the node's Ack).
4. For each node count, connects lean nodes (spread over worker processes),
   and times ``--writes`` SetBackends writes on random services: from the
   moment the driver sends the write until the last node handed its Ack to
   gRPC (node-side timestamps, CLOCK_MONOTONIC, collected over pipes).
5. Times the same writes against a peer, interleaved write by write with the
   control plane's: a bare grpc.aio push server (bench/convergence_floor.py)
   with as many lean nodes of its own (same worker processes), so the table
   shows what the control plane adds to the transport.

Results are printed and written to docs/benchmarks.md between the
``<!-- convergence:begin -->`` / ``<!-- convergence:end -->`` markers.
Timing is reported, never asserted. ``--profile`` samples the control plane
with py-spy during the largest node count's writes. ``--cp-workers N`` runs
the control plane with ``--workers N`` on an etcd of the benchmark's own
(``--etcd`` alone: one process on etcd), its CPU summed over its processes.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.convergence_nodes import NodeReport, worker_main
from bench.report import write_doc_section
from socklb.v1 import api_pb2, api_pb2_grpc, types_pb2

# The test areas' helpers (tests/support.py) are shared with the benchmarks
# rather than copied: tests/ is not a package, so by path, as tests/conftest.py does.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- convergence:begin -->", "<!-- convergence:end -->"
BACKENDS_PER_SERVICE = 10
ETCD = "/usr/bin/etcd"
TARGET_P99_MS = 100.0
# Capacities given to Agent nodes when the default BPF map sizes cannot hold
# the benchmark's state (10k services x 10 backends = 100k backend entries).
BIG_LIMITS = (1 << 24, 1 << 24)


class BenchError(RuntimeError):
    pass


# --- small helpers -----------------------------------------------------------

def pct(values: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def rss_mib(pid: int) -> float:
    return proc_status(pid)["VmRSS"] / 1024


def cpu_seconds(pid: int) -> float:
    """CPU of the process and of its live children (the control plane's
    --workers; the floor and a single control plane have none)."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a child that just ended
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def service_name(i: int) -> str:
    return f"bench/svc-{i:05d}"


def frontend(i: int) -> types_pb2.Frontend:
    # Loopback VIPs: nothing ever connects to them.
    return types_pb2.Frontend(address=f"127.{100 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}", port=80,
                              protocol=types_pb2.PROTOCOL_TCP)


def backends(i: int, gen: int | None = None) -> list[types_pb2.Backend]:
    """Ten backends of service i; `gen` changes the first one's port so that
    every write is a real change."""
    out = [types_pb2.Backend(address=f"10.{(i >> 8) & 255}.{i & 255}.{b + 1}", port=8080,
                             node=f"node-{b:04d}") for b in range(BACKENDS_PER_SERVICE)]
    if gen is not None:
        out[0].port = 10000 + gen % 50000
    return out


def service(i: int) -> api_pb2.Service:
    return api_pb2.Service(name=service_name(i), frontends=[frontend(i)], backends=backends(i))


# --- processes -----------------------------------------------------------------

class Server:
    """A server process that logs "ready" when it serves (control plane or floor)."""

    def __init__(self, name: str, argv: list[str], log: Path):
        self.name = name
        self.log = log
        self._logf = open(log, "wb")
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=self._logf, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            if re.search(r"\bready\b", self.log.read_text(errors="replace")):
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name} not ready after {timeout}s:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._logf.close()


class Workers:
    """Node worker processes (bench/convergence_nodes.py) and their pipes."""

    def __init__(self, count: int, kind: str, stats_interval: float):
        ctx = multiprocessing.get_context("spawn")  # no fork after gRPC started
        self.kind = kind
        self.inbox: queue.Queue = queue.Queue()
        self.procs, self.conns = [], []
        # Per worker: target -> nodes connected to it.
        self.count: list[collections.Counter] = [collections.Counter() for _ in range(count)]
        self.errors: list[str] = []
        for i in range(count):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(child, kind, stats_interval), daemon=True,
                            name=f"bench-{kind}-{i}")
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
            threading.Thread(target=self._reader, args=(i, parent), daemon=True).start()
        self._tokens = iter(range(1, 1 << 62))
        self.pids = [self._expect("ready", i, 60)[1] for i in range(count)]

    def _reader(self, i: int, conn) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                self.inbox.put((i, ("gone",)))
                return
            self.inbox.put((i, msg))

    def _expect(self, kind: str, worker: int | None, timeout: float, token=None):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"timed out after {timeout:.0f}s waiting for {kind} from {self.kind} workers")
            try:
                i, msg = self.inbox.get(timeout=left)
            except queue.Empty:
                continue
            if msg[0] == "error":
                self.errors.append(f"{msg[1]}: {msg[2]}")
                raise BenchError(f"{self.kind} worker {i}: node {msg[1]!r}: {msg[2]}")
            if msg[0] == "gone" and kind != "stopped":
                raise BenchError(f"{self.kind} worker {i} died")
            if msg[0] == kind and (worker is None or i == worker) and (token is None or msg[1] == token):
                return msg
            if msg[0] == "gone":
                continue
            self.inbox.put((i, msg))  # not ours (yet): should not happen in this sequential driver
            time.sleep(0.001)

    def nodes(self, target: str) -> int:
        return sum(c[target] for c in self.count)

    def connect(self, target: str, names: list[str], opts: dict | None = None,
                timeout: float = 600) -> list[NodeReport]:
        per: dict[int, list[str]] = collections.defaultdict(list)
        for name in names:
            i = min(range(len(self.count)), key=lambda j: (self.count[j][target] + len(per[j]), j))
            per[i].append(name)
        for i, ns in per.items():
            self.conns[i].send(("connect", target, ns, opts or {}))
        reports = []
        for _ in per:
            reports += self._expect("connected", None, timeout)[1]
        for i, ns in per.items():
            self.count[i][target] += len(ns)
        return reports

    def wait_acked(self, target: str, version: int, timeout: float = 60,
                   names: set[str] | None = None) -> tuple[list[float], list[float]]:
        """(ack times, receive times), one per node connected to target (names:
        only these nodes)."""
        token = next(self._tokens)
        busy = [i for i, c in enumerate(self.count) if c[target]]
        for i in busy:
            self.conns[i].send(("wait", token, target, version) + ((names,) if names is not None else ()))
        acks, recvs = [], []
        for _ in busy:
            msg = self._expect("acked", None, timeout, token)
            acks += msg[2]
            recvs += msg[3]
        return acks, recvs

    def disconnect(self) -> None:
        busy = [i for i, c in enumerate(self.count) if sum(c.values())]
        for i in busy:
            self.conns[i].send(("disconnect",))
        for _ in busy:
            self._expect("disconnected", None, 120)
        self.count = [collections.Counter() for _ in self.count]

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for i, p in enumerate(self.procs):
            if p.is_alive():
                try:
                    self.conns[i].send(("stop",))
                except OSError:
                    pass
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
                p.join()


# --- results ---------------------------------------------------------------------

@dataclass
class WriteRun:
    setup: str  # "socklb lean", "socklb agent", "floor lean"
    nodes: int
    services: int
    all_ms: list[float] = field(default_factory=list)  # write sent -> last node ACKed
    median_node_ms: list[float] = field(default_factory=list)  # write sent -> half of the nodes ACKed
    recv_ms: list[float] = field(default_factory=list)  # write sent -> the last node received it
    first_recv_ms: list[float] = field(default_factory=list)  # write sent -> the first node received it
    node_ms: list[float] = field(default_factory=list)  # median over nodes of receive -> ACK
    api_ms: list[float] = field(default_factory=list)  # write sent -> API response
    server_cpu_ms: float = float("nan")  # per write, background subtracted
    server_bg_pct: float = float("nan")  # server CPU use with no writes (stats reports, duties)
    nodes_cpu_ms: float = float("nan")  # node workers' CPU per write
    server_rss_mib: float = float("nan")

    @property
    def p50(self) -> float:
        return pct(self.all_ms, 0.5)

    @property
    def p99(self) -> float:
        return pct(self.all_ms, 0.99)


@dataclass
class ConnectRun:
    nodes: int  # total connected after this step
    added: int
    seconds: float
    snapshot_ms_p50: float
    snapshot_ms_max: float
    rss_mib: float
    hwm_mib: float
    server_cpu_s: float  # server CPU over this step (mostly building and sending snapshots)


# --- the benchmark -----------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="socklb-convergence-"))
        self.store_tmp = Path(tempfile.mkdtemp(prefix="socklb-convergence-store-", dir=args.store_parent)) \
            if args.store_parent else None
        self.store_dir = (self.store_tmp or self.tmp) / "store"
        self.cp: Server | None = None
        self.etcd: Server | None = None
        self.floor: Server | None = None
        self.lean: Workers | None = None
        self.agents: Workers | None = None
        self.spy: subprocess.Popen | None = None
        self.gen = 0
        self.loaded = 0
        self.results: dict = {"runs": [], "connects": [], "floor_connects": [], "notes": []}
        self.node_seq = 0

    # --- lifecycle
    def close(self) -> None:
        for closer in (self._stop_spy, lambda: self.lean and self.lean.stop(),
                       lambda: self.agents and self.agents.stop(),
                       lambda: self.floor and self.floor.stop(), lambda: self.cp and self.cp.stop(),
                       lambda: self.etcd and self.etcd.stop()):
            try:
                closer()
            except Exception as e:  # clean up the rest regardless
                print(f"cleanup: {type(e).__name__}: {e}", file=sys.stderr)
        if not self.args.keep_tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self.store_tmp is not None:
                shutil.rmtree(self.store_tmp, ignore_errors=True)

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def start_cp(self) -> None:
        self.cp_port = free_port()
        self.cp_target = f"127.0.0.1:{self.cp_port}"
        store = f"embedded://{self.store_dir}"
        if self.args.etcd:
            store = self.start_etcd()
        argv = [sys.executable, "-m", self.args.cp_module, "--listen", self.cp_target, "--store", store]
        if self.args.cp_workers != 1:
            argv += ["--workers", str(self.args.cp_workers)]
        self.cp_argv = argv
        self.cp = Server("control plane", argv, self.tmp / "controlplane.log")
        self.cp.wait_ready()
        self.channel = grpc.insecure_channel(self.cp_target)
        self.api = api_pb2_grpc.LoadBalancerStub(self.channel)

    def start_etcd(self) -> str:
        """An etcd of the benchmark's own (the store --cp-workers > 1 needs), on the store directory."""
        client, peer = free_port(), free_port()
        self.etcd = Server("etcd", [ETCD, "--data-dir", str(self.store_dir), "--name", "bench",
                                    "--listen-client-urls", f"http://127.0.0.1:{client}",
                                    "--advertise-client-urls", f"http://127.0.0.1:{client}",
                                    "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                                    "--initial-cluster", f"bench=http://127.0.0.1:{peer}"], self.tmp / "etcd.log")
        self.etcd.wait_ready()
        return f"etcd://127.0.0.1:{client}"

    # --- loading
    def load(self, upto: int) -> tuple[int, float]:
        """PutService for services [loaded, upto) with --load-clients concurrent clients."""
        first = self.loaded
        n = upto - first
        if n <= 0:
            return 0, 0.0
        channels = [grpc.insecure_channel(self.cp_target) for _ in range(self.args.load_clients)]
        stubs = [api_pb2_grpc.LoadBalancerStub(c) for c in channels]
        lock = threading.Lock()
        nxt = [first]

        def client(k: int) -> None:
            stub = stubs[k]
            while True:
                with lock:
                    i = nxt[0]
                    if i >= upto:
                        return
                    nxt[0] += 1
                stub.PutService(api_pb2.PutServiceRequest(service=service(i)), timeout=60)

        t0 = time.monotonic()
        with ThreadPoolExecutor(self.args.load_clients) as pool:
            for f in [pool.submit(client, k) for k in range(self.args.load_clients)]:
                f.result()
        dt = time.monotonic() - t0
        for c in channels:
            c.close()
        self.loaded = upto
        return n, dt

    # --- nodes
    def new_names(self, n: int, prefix: str = "node") -> list[str]:
        out = [f"{prefix}-{self.node_seq + k:05d}" for k in range(n)]
        self.node_seq += n
        return out

    def connect(self, workers: Workers, target: str, upto: int, server_pid: int,
                batch: int) -> list[ConnectRun]:
        runs = []
        while workers.nodes(target) < upto:
            k = min(batch, upto - workers.nodes(target))
            t0, c0 = time.monotonic(), cpu_seconds(server_pid)
            reports = workers.connect(target, self.new_names(k))
            dt, cpu = time.monotonic() - t0, cpu_seconds(server_pid) - c0
            ms = [(r.t_ack - r.t_hello) * 1000 for r in reports]
            st = proc_status(server_pid)
            runs.append(ConnectRun(workers.nodes(target), k, dt, pct(ms, 0.5), max(ms), st["VmRSS"] / 1024,
                                   st["VmHWM"] / 1024, cpu))
        return runs

    # --- writes
    def write_socklb(self) -> int:
        i = random.randrange(self.loaded if self.pool_all else min(self.loaded, self.args.small_services))
        self.gen += 1
        svc = self.api.SetBackends(api_pb2.SetBackendsRequest(service=service_name(i),
                                                              backends=backends(i, self.gen)), timeout=30)
        return svc.resource_version

    def write_floor(self) -> int:
        from socklb.controlplane import compute

        i = random.randrange(self.loaded)
        self.gen += 1
        svc = service(i)
        del svc.backends[:]
        svc.backends.extend(backends(i, self.gen))
        payload = compute.node_service(svc, None).SerializeToString()
        return int.from_bytes(self.floor_push(payload, timeout=30), "big")

    def measure(self, workers: Workers, writes: int, *variants: tuple) -> list[WriteRun]:
        """Time `writes` writes of each variant (setup, target, write, server pid,
        services), interleaved write by write so that the machine's drifts hit
        every variant alike."""
        runs, bg = [], []
        for setup, target, _write, pid, services in variants:
            runs.append(WriteRun(setup, workers.nodes(target), services))
        # Background CPU of each server with these nodes connected and no writes.
        c0, t0 = [cpu_seconds(v[3]) for v in variants], time.monotonic()
        time.sleep(self.args.idle_window)
        dt = time.monotonic() - t0
        bg = [(cpu_seconds(v[3]) - c) / dt for v, c in zip(variants, c0)]
        c0, w0, t0 = [cpu_seconds(v[3]) for v in variants], workers.cpu(), time.monotonic()
        for _ in range(writes):
            for run, (setup, target, write, pid, services) in zip(runs, variants):
                start = time.monotonic()
                version = write()
                answered = time.monotonic()
                times, recvs = workers.wait_acked(target, version)
                run.all_ms.append((max(times) - start) * 1000)
                run.recv_ms.append((max(recvs) - start) * 1000)
                run.first_recv_ms.append((min(recvs) - start) * 1000)
                run.node_ms.append(statistics.median(t - r for t, r in zip(times, recvs)) * 1000)
                run.median_node_ms.append((statistics.median(times) - start) * 1000)
                run.api_ms.append((answered - start) * 1000)
                time.sleep(random.uniform(*self.args.gap))
        elapsed = time.monotonic() - t0
        nodes_cpu = (workers.cpu() - w0) / (writes * len(variants)) * 1000
        for run, v, c, rate in zip(runs, variants, c0, bg):
            run.server_bg_pct = rate * 100
            run.server_cpu_ms = max(0.0, cpu_seconds(v[3]) - c - rate * elapsed) / writes * 1000
            run.nodes_cpu_ms = nodes_cpu
            run.server_rss_mib = rss_mib(v[3])
            self.results["runs"].append(run)
            self.log(f"  {run.setup:13s} {run.nodes:5d} nodes {run.services:6d} services: write->all ACKed "
                     f"p50 {run.p50:.1f} ms p99 {run.p99:.1f} ms max {max(run.all_ms):.1f} ms; API p50 "
                     f"{pct(run.api_ms, 0.5):.1f} p99 {pct(run.api_ms, 0.99):.1f} ms; server CPU/write "
                     f"{run.server_cpu_ms:.1f} ms (idle {run.server_bg_pct:.0f}%); nodes CPU/write "
                     f"{run.nodes_cpu_ms:.1f} ms")
        return runs

    # --- profiling
    def start_spy(self, pid: int, out: Path) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(spy).exists():
            self.results["notes"].append("--profile: py-spy not found (.venv/bin/pip install py-spy)")
            return
        self.spy_out = out
        # --gil: only the thread holding the GIL is sampled, so samples are the
        # Python-level CPU that the event loop and the store threads take from each other.
        self.spy = subprocess.Popen([spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE), "--format",
                                     "raw", "--gil", "--nonblocking", "--threads", "-o", str(out)],
                                    stdout=subprocess.DEVNULL,
                                    stderr=open(self.tmp / "py-spy.log", "wb"))
        time.sleep(1.0)

    def _stop_spy(self) -> None:
        if self.spy is not None and self.spy.poll() is None:
            self.spy.send_signal(signal.SIGINT)
            try:
                self.spy.wait(30)
            except subprocess.TimeoutExpired:
                self.spy.kill()
                self.spy.wait()
        self.spy = None

    # --- the phases
    def run(self) -> None:
        a = self.args
        self.pool_all = False
        self.log(f"control plane: python -m {a.cp_module} (tmp {self.tmp})")
        self.start_cp()
        cp = self.cp.pid
        self.results["rss_idle"] = rss_mib(cp)
        self.log(f"control plane pid {cp} ready, RSS {self.results['rss_idle']:.1f} MiB")
        self.lean = Workers(a.workers, "lean", a.stats_interval)

        # Few services: lean vs agent at 10 nodes.
        small = min(a.small_services, a.services)
        n, dt = self.load(small)
        self.log(f"loaded {n} services in {dt:.2f}s")
        self.connect(self.lean, self.cp_target, a.compare_nodes, cp, a.batch)
        self.measure(self.lean, a.writes, ("socklb lean", self.cp_target, self.write_socklb, cp, small))
        self.lean.disconnect()
        if a.agent:
            self.agents = Workers(1, "agent", a.stats_interval)
            self.agents.connect(self.cp_target, self.new_names(a.compare_nodes, "agent"), {"limits": BIG_LIMITS})
            self.measure(self.agents, a.agent_writes, ("socklb agent", self.cp_target, self.write_socklb, cp, small))
            self.agents.disconnect()

        # The full store.
        n, dt = self.load(a.services)
        self.results["load"] = (n, dt)
        self.results["rss_loaded"] = rss_mib(cp)
        if n:
            self.log(f"loaded {n} more services ({a.services} in all) in {dt:.1f}s: {n / dt:.0f} writes/s "
                     f"with {a.load_clients} clients; RSS {self.results['rss_loaded']:.1f} MiB")
        self.pool_all = True

        snaps = []
        for _ in range(a.snapshot_repeats):
            (r,) = self.lean.connect(self.cp_target, self.new_names(1, "fresh"), {"digest": True})
            snaps.append(r)
            self.lean.disconnect()
        self.results["snapshots"] = snaps
        r = snaps[0]
        self.log(f"full snapshot: {r.services} services, {r.snapshot_bytes} bytes in {r.chunks} chunks; "
                 f"Hello->Ack {', '.join(f'{(s.t_ack - s.t_hello) * 1000:.0f}' for s in snaps)} ms "
                 f"(node parse {r.parse_s * 1000:.0f} ms)")
        if r.services != a.services:
            raise BenchError(f"snapshot has {r.services} services, expected {a.services}")
        # A node that holds that state reconnects (as after a control-plane
        # restart): the control plane compares digests and, the node's version
        # being older, sends an empty delta instead of the snapshot.
        resumes = []
        for _ in range(a.snapshot_repeats):
            (x,) = self.lean.connect(self.cp_target, self.new_names(1, "resume"),
                                     {"resume": (snaps[-1].version - 1, snaps[-1].digest)})
            resumes.append(x)
            self.lean.disconnect()
        self.results["resumes"] = resumes
        self.log(f"resume with a matching digest: Hello->Ack "
                 f"{', '.join(f'{(x.t_ack - x.t_hello) * 1000:.0f}' for x in resumes)} ms "
                 f"(snapshot chunks received: {sum(x.chunks for x in resumes)})")

        if a.agent:
            (r,) = self.agents.connect(self.cp_target, self.new_names(1, "agent-default"))
            self.results["agent_default"] = r
            self.log(f"agent, default map sizes: {'NACK: ' + r.nacked if r.nacked else 'applied'} "
                     f"after {(r.t_ack - r.t_hello):.1f}s")
            self.agents.disconnect()
            (r,) = self.agents.connect(self.cp_target, self.new_names(1, "agent-big"), {"limits": BIG_LIMITS})
            self.results["agent_full_snapshot"] = r
            self.log(f"agent, raised map sizes: snapshot Hello->Ack {(r.t_ack - r.t_hello):.1f}s")
            if a.agent_full_writes:
                self.measure(self.agents, a.agent_full_writes,
                             ("socklb agent", self.cp_target, self.write_socklb, cp, a.services))
            self.agents.disconnect()
            self.agents.stop()
            self.agents = None

        if a.floor:
            floor_target = f"127.0.0.1:{free_port()}"
            self.floor = Server("floor", [sys.executable, "-m", "bench.convergence_floor", "--listen",
                                          floor_target], self.tmp / "floor.log")
            self.floor.wait_ready()
            fch = grpc.insecure_channel(floor_target)
            self.floor_push = fch.unary_unary("/bench.Floor/Push")
        for i, n in enumerate(a.nodes):
            steps = self.connect(self.lean, self.cp_target, n, cp, a.batch)
            self.results["connects"] += steps
            if steps:
                secs = sum(s.seconds for s in steps)
                self.log(f"connected {n} nodes (+{sum(s.added for s in steps)} in {secs:.1f}s), "
                         f"snapshot Hello->Ack p50 {steps[-1].snapshot_ms_p50:.0f} ms; control plane RSS "
                         f"{steps[-1].rss_mib:.0f} MiB (peak {steps[-1].hwm_mib:.0f})")
            variants = [("socklb lean", self.cp_target, self.write_socklb, cp, a.services)]
            if a.floor:
                self.results["floor_connects"] += self.connect(self.lean, floor_target, n, self.floor.pid,
                                                               a.batch)
                variants.append(("floor lean", floor_target, self.write_floor, self.floor.pid, a.services))
            last = i == len(a.nodes) - 1
            if last and a.profile:
                self.start_spy(cp, self.tmp / "cp.pyspy.txt")
            self.measure(self.lean, a.writes, *variants)
            if last and a.profile:
                self._stop_spy()
                self.results["profile"] = summarize_profile(self.tmp / "cp.pyspy.txt", a.writes)
        self.results["rss_connected"] = proc_status(cp)
        self.results["cp_log"] = self.cp.log.read_text(errors="replace")
        self.lean.disconnect()
        if a.floor:
            fch.close()
            self.floor.stop()
            self.floor = None


# --- profile summary ------------------------------------------------------------------

PROFILE_RATE = 250  # py-spy samples per second per thread
# Leaf frames of a thread that waits (py-spy counts some waits as active).
_IDLE_LEAVES = ("_worker (concurrent/futures/thread.py)", "Condition.wait (threading.py)",
                "Thread.run (threading.py)", "EpollSelector.select (selectors.py)")


def _frame(f: str) -> str:
    f = re.sub(r" \((?:/work/main/|" + re.escape(f"{ROOT}/") + r"|/usr/lib/python3\.\d+/|.*?site-packages/)", " (", f)
    return re.sub(r":\d+\)$", ")", f)


def summarize_profile(path: Path, writes: int, top: int = 12) -> dict:
    """py-spy raw output ('thread;frame;...;leaf count', root first) -> CPU per
    write of the event loop's main pieces and of the other threads' work."""
    main_self: collections.Counter = collections.Counter()
    main_incl: collections.Counter = collections.Counter()
    other_incl: collections.Counter = collections.Counter()
    main_total = main_busy = other_busy = 0
    if not path.exists():
        return {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        thread, *frames = stack.split(";")
        frames = [_frame(f) for f in frames]
        idle = not frames or frames[-1] in _IDLE_LEAVES
        if "MainThread" in thread:
            main_total += n
            if idle:
                continue
            main_busy += n
            main_self[frames[-1]] += n
            for f in set(frames):
                main_incl[f] += n
        elif not idle:
            other_busy += n
            for f in set(frames):
                if "(socklb/" in f or "sqlite" in f:
                    other_incl[f] += n
    per_write = lambda c: c / PROFILE_RATE / writes * 1000  # noqa: E731  ms per write
    wanted = [f for f, _ in main_incl.most_common() if "(socklb/" in f and "server.py)" not in f
              or f.startswith(("wait (asyncio/tasks.py)", "ensure_future (asyncio/tasks.py)"))]
    return {
        "writes": writes,
        "main_wall_ms": per_write(main_total),
        "main_busy_ms": per_write(main_busy),
        # Callbacks' own time: gRPC's Cython/C core, which py-spy cannot see into.
        "grpc_core_ms": per_write(main_self.get("Handle._run (asyncio/events.py)", 0)),
        "main": [(f, per_write(main_incl[f])) for f in wanted[:top]],
        "other_busy_ms": per_write(other_busy),
        "other": [(f, per_write(c)) for f, c in other_incl.most_common(top)
                  if not f.startswith(("_worker", "Thread."))][:top // 2 + 2],
    }


# --- report ----------------------------------------------------------------------------

def code_version() -> str:
    """The commit measured, and the files of socklb/ that differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "socklb"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "n/a"
    files = [ln[3:] for ln in dirty if ln.strip()]
    return f"commit {head}" + (f" with uncommitted changes in {', '.join(files)}" if files else "")


def loadavg() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, Python {platform.python_version()}, "
            f"grpcio {grpc.__version__}")


def table(runs: list[WriteRun]) -> list[str]:
    out = ["| setup | nodes | services | writes | all ACKed p50 ms | p99 ms | max ms | half ACKed p50 ms "
           "| first / all received p50 ms | node receive → ACK p50 ms | API reply p50 / p99 ms "
           "| server CPU/write ms | server idle CPU % | nodes CPU/write ms | server RSS MiB |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        out.append(f"| {r.setup} | {r.nodes} | {r.services} | {len(r.all_ms)} | **{fmt(r.p50)}** | **{fmt(r.p99)}** "
                   f"| {fmt(max(r.all_ms))} | {fmt(pct(r.median_node_ms, 0.5))} "
                   f"| {fmt(pct(r.first_recv_ms, 0.5))} / {fmt(pct(r.recv_ms, 0.5))} | {fmt(pct(r.node_ms, 0.5))} "
                   f"| {fmt(pct(r.api_ms, 0.5))} / {fmt(pct(r.api_ms, 0.99))} "
                   f"| {fmt(r.server_cpu_ms)} | {fmt(r.server_bg_pct, 0)} | {fmt(r.nodes_cpu_ms)} "
                   f"| {fmt(r.server_rss_mib, 0)} |")
    return out


def find(runs, setup, nodes, services) -> WriteRun | None:
    for r in runs:
        if r.setup == setup and r.nodes == nodes and r.services == services:
            return r
    return None


def report(b: Bench) -> tuple[list[str], list[str]]:
    """(body lines shared by stdout and the docs, headline lines)."""
    a, res = b.args, b.results
    runs: list[WriteRun] = res["runs"]
    body = table(runs) + [""]
    small = min(a.small_services, a.services)
    heads = []

    big = max(a.nodes)
    r = find(runs, "socklb lean", big, a.services)
    if r:
        heads.append(f"- p99 write → all {big} nodes ACKed: **{fmt(r.p99)} ms** (p50 {fmt(r.p50)} ms) — "
                     f"target ≤ {TARGET_P99_MS:.0f} ms: **{ratio(r.p99, TARGET_P99_MS):.2f}x** the target")
    x, y = find(runs, "socklb lean", a.compare_nodes, a.services), find(runs, "socklb lean", a.compare_nodes, small)
    if x and y:
        heads.append(f"- Cost of one update, {a.services} vs {small} services in the store "
                     f"({a.compare_nodes} nodes): p50 **{ratio(x.p50, y.p50):.2f}x**, p99 "
                     f"**{ratio(x.p99, y.p99):.2f}x**, server CPU per write "
                     f"**{ratio(x.server_cpu_ms, y.server_cpu_ms):.2f}x** "
                     f"({fmt(x.server_cpu_ms)} vs {fmt(y.server_cpu_ms)} ms) — target ≈ 1x")
    x, y = find(runs, "socklb agent", a.compare_nodes, small), find(runs, "socklb lean", a.compare_nodes, small)
    if x and y:
        xr, yr = pct(x.first_recv_ms, 0.5), pct(y.first_recv_ms, 0.5)
        heads.append(f"- Real node code path (Agent on in-memory maps + SyncClient) vs lean node, "
                     f"{a.compare_nodes} nodes, {small} services: first node received p50 **{ratio(xr, yr):.2f}x** ({fmt(xr)} vs {fmt(yr)} ms), "
                     f"server CPU per write **{ratio(x.server_cpu_ms, y.server_cpu_ms):.2f}x**; all ACKed p50 "
                     f"**{ratio(x.p50, y.p50):.2f}x** ({fmt(x.p50)} vs {fmt(y.p50)} ms: the Agent's apply, "
                     f"{fmt(x.nodes_cpu_ms / x.nodes)} ms CPU per node per write, with the {x.nodes} Agents "
                     f"sharing one process)")
    for n in a.nodes:
        x, y = find(runs, "socklb lean", n, a.services), find(runs, "floor lean", n, a.services)
        if x and y:
            heads.append(f"- {n} nodes, control plane vs bare grpc.aio push server (as many nodes, writes "
                         f"interleaved): p50 "
                         f"**{ratio(x.p50, y.p50):.2f}x**, p99 **{ratio(x.p99, y.p99):.2f}x** "
                         f"({fmt(x.p99)} vs {fmt(y.p99)} ms); server CPU per write "
                         f"{fmt(x.server_cpu_ms)} vs {fmt(y.server_cpu_ms)} ms")
    if len(a.nodes) > 1:
        lo, hi = find(runs, "socklb lean", min(a.nodes), a.services), find(runs, "socklb lean", big, a.services)
        if lo and hi:
            heads.append(f"- Scaling {min(a.nodes)} → {big} nodes: p99 **{ratio(hi.p99, lo.p99):.1f}x**, server CPU "
                         f"per write **{ratio(hi.server_cpu_ms, lo.server_cpu_ms):.1f}x** "
                         f"({fmt(hi.server_cpu_ms / big * 1000)}"
                         f" µs per node at {big})")

    snaps: list[NodeReport] = res.get("snapshots", [])
    if snaps:
        s = snaps[0]
        ms = [(x.t_ack - x.t_hello) * 1000 for x in snaps]
        body.append(f"- Full snapshot ({s.services} services × {BACKENDS_PER_SERVICE} backends): "
                    f"**{s.snapshot_bytes:,} bytes** in {s.chunks} chunks; fresh node Hello → Ack "
                    f"**{fmt(statistics.median(ms), 0)} ms** (median of {len(ms)}: "
                    f"{', '.join(fmt(m, 0) for m in ms)}), of which parsing on the node "
                    f"{fmt(s.parse_s * 1000, 0)} ms")
    resumes: list[NodeReport] = res.get("resumes", [])
    if resumes:
        ms = [(x.t_ack - x.t_hello) * 1000 for x in resumes]
        body.append(f"- Reconnect of a node that holds the state (matching digest, older version → empty delta, "
                    f"no snapshot): Hello → Ack **{fmt(statistics.median(ms), 0)} ms** (median of {len(ms)}: "
                    f"{', '.join(fmt(m, 0) for m in ms)})"
                    + ("" if not any(x.chunks for x in resumes) else " — **the digest did not match: "
                       "the control plane sent a snapshot**"))
    n, dt = res.get("load", (0, 0))
    if n:
        body.append(f"- Loading through the API: {n} PutService calls in {dt:.1f} s = **{n / dt:.0f} writes/s** "
                    f"({a.load_clients} concurrent clients)")
    conn = res.get("connects", [])
    if conn:
        total = sum(c.added for c in conn)
        secs = sum(c.seconds for c in conn)
        cpu = sum(c.server_cpu_s for c in conn)
        body.append(f"- Connecting {total} nodes (batches of {a.batch}, each getting the full snapshot): "
                    f"{secs:.1f} s = **{total / secs:.1f} nodes/s**, control-plane CPU "
                    f"**{cpu / total * 1000:.0f} ms per node**; per-node Hello → Ack in the last batch p50 "
                    f"{fmt(conn[-1].snapshot_ms_p50 / 1000)} s, max {fmt(conn[-1].snapshot_ms_max / 1000)} s")
    mem = [f"idle {fmt(res.get('rss_idle', float('nan')))} MiB",
           f"{a.services} services loaded {fmt(res.get('rss_loaded', float('nan')))} MiB"]
    by_nodes = {}
    for c in conn:
        by_nodes[c.nodes] = c
    for n in a.nodes:
        if n in by_nodes:
            mem.append(f"{n} nodes connected {fmt(by_nodes[n].rss_mib)} MiB")
    rc = res.get("rss_connected")
    if rc:
        mem.append(f"after the writes at {max(a.nodes)} nodes {fmt(rc['VmRSS'] / 1024)} MiB "
                   f"(peak VmHWM {fmt(rc['VmHWM'] / 1024)} MiB)")
    body.append("- Control-plane memory (VmRSS): " + "; ".join(mem))
    ad = res.get("agent_default")
    if ad:
        body.append(f"- Real node (Agent, default map sizes) on the full snapshot: "
                    f"{'**NACK** — ' + ad.nacked if ad.nacked else 'applied'}")
    af = res.get("agent_full_snapshot")
    if af:
        body.append(f"- Real node (Agent, map sizes raised) on the full snapshot: Hello → Ack "
                    f"{(af.t_ack - af.t_hello):.1f} s")
        x = find(runs, "socklb agent", 1, a.services)
        lean_full = find(runs, "socklb lean", a.compare_nodes, a.services)
        if x:
            body.append(f"- Real node at {a.services} services, 1 node: write → ACKed p50 {fmt(x.p50)} ms "
                        f"(lean node at {a.compare_nodes} nodes: "
                        f"{fmt(getattr(lean_full, 'p50', float('nan')))} ms)")
    log = res.get("cp_log", "")
    if log:
        pending = log.count("Task was destroyed but it is pending")
        never = log.count("Task exception was never retrieved")
        nacks = log.count("refused version")
        body.append(f"- Control-plane log: {nacks} NACK warnings (expected: the Agent with default map "
                    f"sizes), {pending} asyncio \"Task was destroyed but it is pending\", {never} \"Task "
                    f"exception was never retrieved\"")
    prof = res.get("profile")
    if prof:
        body += ["", f"Control-plane profile during the {prof['writes']} writes at {big} nodes (py-spy "
                     f"{PROFILE_RATE} Hz `--gil`: the thread holding the GIL; ms per control-plane write, over "
                     "the whole measurement: its writes, the floor's interleaved writes, the pauses):", "",
                 f"- event loop (main thread) busy **{fmt(prof['main_busy_ms'])} ms** per write, of which "
                 f"gRPC's Cython/C core (callbacks' own time, opaque to py-spy) {fmt(prof['grpc_core_ms'])} ms; "
                 "inclusive times:"]
        for f, ms in prof["main"]:
            body.append(f"  - {fmt(ms)} ms `{f}`")
        body.append(f"- other threads (store calls run with asyncio.to_thread, store watch) busy "
                    f"**{fmt(prof['other_busy_ms'])} ms** per write, competing for the GIL:")
        for f, ms in prof["other"]:
            body.append(f"  - {fmt(ms)} ms `{f}`")
    return body, heads


NOTES = [
    "How to read it:",
    "",
    "- \"server CPU/write\" does not depend on the node harness: a control plane whose streams share one "
    "event loop (and one GIL) cannot converge N nodes faster than this, on any number of cores. The floor row "
    "at the same N is what grpc.aio alone costs for the same pushes and ACKs.",
    "- The node workers share this machine's CPUs with the server (\"nodes CPU/write\"): in a cluster every "
    "node has its own CPU, so \"first / all received\" and the floor rows tell the server's share apart.",
    "- Lean vs agent: the first node receives each update as early with either node; the ACKs differ by the "
    "Agent's apply (\"node receive → ACK\"), with all Agents sharing one process (and its GIL).",
    "- \"server idle CPU %\" is the server's CPU with the nodes connected and no writes: StatsReports, node "
    "record flushes and heartbeats, the leader's duties (every 2 s).",
]


def doc_section(b: Bench, body: list[str], heads: list[str], command: str) -> str:
    a = b.args
    lines = [BEGIN, "## Control-plane convergence", "",
             "API write (SetBackends on one random service) → every connected node has ACKed the "
             "resulting version, over real gRPC NodeSync streams to nodes that apply to nothing. "
             "\"Lean\" nodes are asyncio nodes in worker processes (Hello → parse each snapshot chunk "
             "/ delta → check from_version → Ack, a StatsReport every "
             f"{a.stats_interval:g} s as real nodes send); \"agent\" nodes run the real node code path "
             "(`Agent` on a `MemoryMapWriter` + `SyncClient`: validation, merge, planning, no BPF). Times run from the "
             "moment the driver sends the write to the moment the last node handed its Ack to gRPC "
             "(node-side CLOCK_MONOTONIC). \"floor\" is the peer: a bare grpc.aio server pushing the "
             "same delta to as many nodes of its own in the same worker processes (bench/convergence_floor.py: no "
             "store, no cache, no registry); its writes alternate with the control plane's. "
             "Server CPU per write has the server's idle CPU (stats reports, leader duties) subtracted. "
             f"p99 interpolates between the closest ranks of {a.writes} writes.", "",
             "```", command, "```", "",
             f"- Machine: {machine()}; load average {b.results.get('loadavg_before')} before the run, "
             f"{b.results.get('loadavg_after')} after",
             f"- Date: {b.results.get('started')}; run time {b.results.get('duration_s', 0) / 60:.1f} min; "
             f"code: {b.results.get('code')}",
             f"- Setup: control plane `python -m {a.cp_module}` "
             + (f"(--workers {a.cp_workers}: the CPU of all its processes; etcd store of its own, etcd's CPU not "
                f"counted), " if a.etcd else f"(embedded store on {a.store_parent or 'the temp dir'}), ") +
             f"{a.services} services × {BACKENDS_PER_SERVICE} backends (loopback VIPs), "
             f"{a.workers} lean-node worker processes, writes {a.gap[0] * 1000:.0f}–{a.gap[1] * 1000:.0f} ms apart", "",
             *body, "", *heads, "", *NOTES, END]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="bench.convergence", description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="10,100,1000", help="node counts, comma-separated (default 10,100,1000)")
    p.add_argument("--services", type=int, default=10000, help="services in the store (default 10000)")
    p.add_argument("--small-services", type=int, default=100,
                   help="services for the 'few services' side of the ratio (default 100)")
    p.add_argument("--compare-nodes", type=int, default=10,
                   help="nodes for the services ratio and the lean/agent comparison (default 10)")
    p.add_argument("--writes", type=int, default=100, help="timed writes per setup (default 100)")
    p.add_argument("--workers", type=int, default=2, help="lean-node worker processes (default 2)")
    p.add_argument("--batch", type=int, default=50, help="nodes connected at a time (default 50)")
    p.add_argument("--load-clients", type=int, default=8, help="concurrent API clients for loading (default 8)")
    p.add_argument("--stats-interval", type=float, default=5.0,
                   help="seconds between a node's StatsReports, 0 = none (default 5, as SyncClient)")
    p.add_argument("--gap", default="0.02,0.2", help="random pause between writes, seconds (default 0.02,0.2)")
    p.add_argument("--idle-window", type=float, default=4.0,
                   help="seconds to measure idle server CPU (default 4: two leader-duty periods)")
    p.add_argument("--snapshot-repeats", type=int, default=3)
    p.add_argument("--no-agent", dest="agent", action="store_false", help="skip the real-node (Agent) runs")
    p.add_argument("--agent-writes", type=int, default=30,
                   help="writes timed with the Agent nodes on the small store (default 30)")
    p.add_argument("--agent-full-writes", type=int, default=3,
                   help="writes timed with one Agent node on the full store (default 3; 0 = none)")
    p.add_argument("--no-floor", dest="floor", action="store_false", help="skip the bare grpc.aio peer")
    p.add_argument("--profile", action="store_true",
                   help="py-spy the control plane during the largest node count's writes (.venv/bin/pip install "
                        "py-spy); the raw stacks stay in the temp dir with --keep-tmp")
    p.add_argument("--store-parent", metavar="DIR", default="",
                   help="make the embedded store's directory under DIR (default: the temp dir, on disk; "
                        "/dev/shm takes fsync out of the picture)")
    p.add_argument("--cp-workers", type=int, default=1,
                   help="the control plane's --workers (default 1; more runs an etcd of the benchmark's own)")
    p.add_argument("--etcd", action="store_true", help="the control plane on an etcd store of the benchmark's own "
                                                       "(implied by --cp-workers > 1)")
    p.add_argument("--cp-module", default="socklb.controlplane.server",
                   help="for experiments: a module with socklb.controlplane.server's command line")
    p.add_argument("--json", metavar="FILE", default="", help="write every sample (per write) to FILE")
    p.add_argument("--no-doc", dest="doc", action="store_false", help="do not write docs/benchmarks.md")
    p.add_argument("--doc-file", default=str(DOC), help=argparse.SUPPRESS)
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (store, logs)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    a.nodes = sorted({int(x) for x in a.nodes.split(",") if x.strip()})
    a.gap = tuple(float(x) for x in a.gap.split(","))
    a.etcd = a.etcd or a.cp_workers > 1
    if len(a.gap) != 2 or not a.nodes or min(a.nodes) < 1 or a.services < 1 or a.writes < 1:
        p.error("bad --nodes/--gap/--services/--writes")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    random.seed(args.seed)
    command = ".venv/bin/python -m bench.convergence " + " ".join(sys.argv[1:] if argv is None else argv)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    b = Bench(args)
    b.results["loadavg_before"] = loadavg()
    b.results["code"] = code_version()
    b.results["started"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()
    try:
        b.run()
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        if b.cp is not None:
            print("control plane log tail:\n" + b.cp.log.read_text(errors="replace")[-3000:], file=sys.stderr)
        return 1
    finally:
        b.close()
    b.results["loadavg_after"] = loadavg()
    b.results["duration_s"] = time.monotonic() - t0
    body, heads = report(b)
    print()
    print("\n".join(body + [""] + heads))
    print(f"\n(total run time {time.monotonic() - t0:.0f} s)")
    if args.json:
        import dataclasses
        import json

        dump = {k: v for k, v in b.results.items() if k not in ("runs", "connects", "floor_connects", "cp_log",
                                                                 "snapshots", "resumes", "agent_default",
                                                                 "agent_full_snapshot")}
        for k in ("runs", "connects", "floor_connects", "snapshots", "resumes"):
            dump[k] = [dataclasses.asdict(x) for x in b.results.get(k, [])]
        Path(args.json).write_text(json.dumps(dump, indent=1, default=str))
    if args.doc:
        write_doc_section(Path(args.doc_file), doc_section(b, body, heads, command.strip()))
        print(f"wrote the convergence section of {args.doc_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
