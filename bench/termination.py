"""Socket termination benchmark: how long it takes to destroy the sockets of a
removed backend, with socklb's Terminator (bpf_sock_destroy() kfunc from
iter/tcp, or the iterator + netlink SOCK_DESTROY) against `ss -K` with the
equivalent filter, measured in the same run.

    .venv/bin/python -m bench.termination [--sizes 1000,10000,100000]
        [--rounds 7] [--large-rounds 5] [--netns 100] [--netns-sockets 1000,10000]
        [--methods kfunc,kfunc-dsts,netlink,ss,kfunc-all,kfunc-all-dsts,kfunc-pass] [--no-doc]

Host phase, loopback in the root namespace: a VIP 127.96.61.10:80 with 10
backends 127.61.0.1..10:PORT (accept-and-hold server processes, one per
backend), client processes in a cgroup of ours where the dataplane agent's
programs are attached, holding 1k, 10k, 100k connections to the VIP (at
most 14000 per process: the hard RLIMIT_NOFILE is 20000), exactly a tenth of
them to the "removed" backend 127.61.0.1 (state DRAINING, so the agent does
not terminate them itself and no new connection goes there). Each round
destroys those victims with every method in turn (order rotated per round):

  kfunc      Terminator(method="kfunc", netns=[host]).run([Target.backend(id)])
  netlink    Terminator(method="netlink", netns=[host]).run(...)
  ss         ss -K -H -t -n dst 127.61.0.1:PORT      (subprocess, output discarded)
  kfunc-all  Terminator(method="kfunc") with no netns list: the agent's
             default, every namespace on the node, found through /proc and
             /run/netns (so it includes finding them)
  kfunc-dsts     kfunc with the destination hint the agent passes:
                 .run([Target.backend(id)], dsts=[("127.61.0.1", PORT)])
  kfunc-all-dsts kfunc-all with that hint: what the agent runs
  kfunc-pass the floor under "kfunc": its loaded iter/tcp and iter/udp
             programs read once in DESTROY mode, records parsed, nothing else
             (no further pass, no report: Terminator.one_pass)

Every Terminator measurement also reads rep.sockets[:100] (what the agent's
report keeps; the records are built lazily). After each host size, the walk
floor: Terminator.count() with a hint no socket matches (one iter/tcp+udp
walk, a few loads and a hash lookup per socket) and count() without a hint
(a storage lookup per socket), medians of 5.

Terminator objects are created once (program load timed apart); each
measurement times .run() alone. After each method the benchmark checks that
exactly the victims died: `ss` shows no established client socket to the
victim and every other client socket alive, and each client process reports
which of its connections broke (each connection learned its backend from a
tag byte the server sent on accept): exactly its victims, no other. Then the
victims are re-created (the victim backend is made the only ACTIVE one, the
clients reopen what they lost, the state goes back) and the servers are
waited on until they hold every connection again, so each measurement starts
from the same table.

Namespace phase: 100 network namespaces, each with lo up, the 10 backends
listening on its loopback (servers enter each namespace to listen), and
connections to the VIP made from inside it by the clients (which setns()
into it; their sockets belong to that namespace and to our cgroup), a tenth
of each namespace's to the victim. Methods: the Terminator given the 100
namespaces, kfunc-all (every namespace on the node), and ss -K once per
namespace, both as an operator would run it (`ip netns exec NS ss -K ...`)
and with ss's own namespace switch (`ss -N NS -K ...`).

Figures are medians over rounds; ratios are ss -K time / Terminator time.
An extra, instrumented run per Terminator method and size (not in the
medians) splits its time through the run's hooks (Terminator.run(hooks=...),
socklb.dataplane.iterrun.Hooks): iterator passes (kernel walk, plus the
kfunc destroying), parsing records, SOCK_DESTROY requests, finding the
namespaces; and building the report's records, timed here.

Everything made here carries socklb-term-<pid> and is removed on exit or
failure; leftovers of a SIGKILLed run are removed at the next start.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.lab import Teardown, install_exit_handlers, join_cgroup, log, rmdir_cgroup, run, run_stamp
from bench.report import paired_ratios, quartiles, target_text, write_doc_section
from socklb.dataplane.iterrun import Hooks
from socklb.dataplane.kernel import cgroup2_mount, ensure_bpffs
from socklb.dataplane.layout import TermRec
from socklb.dataplane.sockdestroy import Target, Terminator

REPO = Path(__file__).resolve().parent.parent
PREFIX = "socklb-term-"
BPFFS = Path("/sys/fs/bpf")
DOC = REPO / "docs" / "benchmarks.md"
BEGIN, END = "<!-- termination:begin -->", "<!-- termination:end -->"

VIP, VIP_PORT = "127.96.61.10", 80
BACKENDS = [f"127.61.0.{i}" for i in range(1, 11)]
VICTIM = 0                      # index (and tag byte) of the removed backend
CLIENT_MAX = 14000              # connections per client process (hard NOFILE limit 20000)
SERVER_MAX = 14000              # held connections per server process
TARGET_RATIO = 3.0              # issue: kfunc at least 3x faster than ss -K at 100k

HOST_METHODS = ("kfunc", "kfunc-dsts", "netlink", "ss", "kfunc-all", "kfunc-all-dsts", "kfunc-pass")
NETNS_METHODS = ("kfunc", "kfunc-dsts", "kfunc-dsts-seq", "netlink", "kfunc-all", "kfunc-all-dsts", "ss-exec",
                 "ss-N", "ss-N-par")
TERM_METHODS = ("kfunc", "kfunc-dsts", "kfunc-dsts-seq", "netlink", "kfunc-all", "kfunc-all-dsts")
SS_PEERS = ("ss", "ss-exec", "ss-N")  # the peers the target is measured against (ss-N-par is a reference)
CHILD_EHASH = "net.ipv4.tcp_child_ehash_entries"
REC_SIZE = ctypes.sizeof(TermRec)  # bytes of one termination record
REPORTED = 100                  # records the agent's report keeps (terminations.MAX_REPORTED_SOCKETS)
LABEL = {
    "kfunc": "Terminator kfunc",
    "kfunc-dsts": "Terminator kfunc + dsts hint",
    "kfunc-dsts-seq": "Terminator kfunc + dsts hint, one netns at a time (SOCKLB_NETNS_WORKERS=1)",
    "kfunc-all-dsts": "Terminator kfunc + dsts hint, every netns (discovered)",
    "netlink": "Terminator netlink",
    "kfunc-all": "Terminator kfunc, every netns (discovered)",
    "kfunc-pass": "one iter/tcp+udp destroy pass alone (floor)",
    "ss": "ss -K",
    "ss-exec": "ss -K via ip netns exec, per netns",
    "ss-N": "ss -N NS -K, per netns",
    "ss-N-par": "ss -N NS -K, per netns, one process per CPU at a time (reference)",
}


# --- small helpers ------------------------------------------------------------------------

def median(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def ms(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x * 1000:.1f}" if x < 10 else f"{x * 1000:.0f}"


def split(total: int, parts: int) -> list[int]:
    """total spread over parts as evenly as possible (first ones get the remainder)."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def owner_pid(name: str) -> int | None:
    m = re.match(rf"^{PREFIX}(\d+)", name)
    return int(m.group(1)) if m else None


def port_below_ephemeral() -> int:
    """A port below the ephemeral range (never handed out by connect()) that
    is free on every backend address: unlike tests/support.free_port (any
    free port the kernel hands out, of one address), a search."""
    lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    start = max(2000, lo - 2000 - (os.getpid() % 1000))
    for port in range(start, lo):
        ok = True
        for addr in BACKENDS:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((addr, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port below the ephemeral range")


# --- helper processes ------------------------------------------------------------------------

class Worker:
    """A bench.termination_workers process, JSON lines both ways."""

    def __init__(self, name: str, argv: list[str], logdir: Path, preexec=None, timeout: float = 60):
        self.name = name
        self.err = logdir / f"{name}.err"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                         preexec_fn=preexec, cwd=REPO)
        self.buf = b""
        self.hello = self.recv(timeout)

    def send(self, obj: dict) -> None:
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self, timeout: float = 600) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            r, _, _ = select.select([fd], [], [], max(0.0, left))
            if not r:
                raise RuntimeError(f"{self.name}: no answer within {timeout:.0f}s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"{self.name} exited ({self.proc.wait()}): {self.stderr_tail()}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"{self.name}: {msg['error']}")
        return msg

    def call(self, obj: dict, timeout: float = 600) -> dict:
        self.send(obj)
        return self.recv(timeout)

    def stderr_tail(self) -> str:
        try:
            return "\n".join(self.err.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call({"op": "quit"}, timeout=60)
            except Exception:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def call_all(workers: list[Worker], cmds: list[dict], timeout: float = 900) -> list[dict]:
    """One command to each worker, all running at once."""
    for w, c in zip(workers, cmds):
        w.send(c)
    return [w.recv(timeout) for w in workers]


def wait_servers(servers: list[Worker], total: int, timeout: float = 120) -> None:
    """Until the servers hold exactly the clients' `total` connections
    (accepted all, closed every reset one): the table is back to its start."""
    deadline = time.monotonic() + timeout
    while True:
        held = sum(a["held"] for a in call_all(servers, [{"op": "stat"}] * len(servers)))
        if held == total:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"servers hold {held} connections, clients {total}")
        time.sleep(0.05)


def worker_argv(kind: str, arg: Path) -> list[str]:
    return [sys.executable, "-m", "bench.termination_workers", kind, str(arg)]


# --- the agent ---------------------------------------------------------------------------------

class Agent:
    def __init__(self, lab: "Lab"):
        from bench.agent import detach, wait_ready

        self.lab = lab
        self.version = 1
        self.state_file = lab.tmp / "state.json"
        self.state_file.write_text(json.dumps(self.doc(victims=False)))
        self.admin = lab.tmp / "admin.sock"
        lab.teardown.add("socklb programs", lambda: detach(lab.pin_dir, lab.cgroup))
        self.log = lab.tmp / "agent.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "socklb.dataplane.cli", "run", "--state", str(self.state_file),
                 "--cgroup", str(lab.cgroup), "--pin-dir", str(lab.pin_dir), "--admin-socket", str(self.admin)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        lab.teardown.add("socklb agent", self.stop)
        wait_ready(self.proc, self.log, 120)
        import grpc
        from socklb.v1 import node_pb2, node_pb2_grpc

        self.pb = node_pb2
        self.channel = grpc.insecure_channel(f"unix://{self.admin}")
        self.stub = node_pb2_grpc.NodeAdminStub(self.channel)
        lab.teardown.add("admin channel", self.channel.close)
        self.victim_id = self.backend_id()
        log(f"socklb agent (pid {self.proc.pid}) ready; victim backend {BACKENDS[VICTIM]}:{lab.port} "
            f"has id {self.victim_id}")

    def doc(self, victims: bool) -> dict:
        """victims=True: only the victim backend takes new connections;
        False: every backend but the victim (which is DRAINING)."""
        def st(i):
            active = (i == VICTIM) == victims
            return "BACKEND_STATE_ACTIVE" if active else "BACKEND_STATE_DRAINING"

        return {"version": self.version, "services": [{
            "name": "bench-term",
            "frontends": [{"address": VIP, "port": VIP_PORT, "protocol": "PROTOCOL_TCP"}],
            "backends": [{"address": a, "port": self.lab.port, "weight": 1, "state": st(i)}
                         for i, a in enumerate(BACKENDS)],
        }]}

    def set(self, victims: bool) -> None:
        from socklb.dataplane.statefile import parse_state

        self.version += 1
        state = parse_state(json.dumps(self.doc(victims)))
        self.stub.ApplyState(self.pb.ApplyStateRequest(full=state), timeout=60)

    def backend_id(self) -> int:
        resp = self.stub.DumpBackends(self.pb.DumpRequest(), timeout=60)
        ids = [b.id for b in resp.backends if b.address == BACKENDS[VICTIM] and b.port == self.lab.port]
        if len(ids) != 1:
            raise RuntimeError(f"victim backend not found once in the agent's backends: {resp}")
        return ids[0]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --- the lab ----------------------------------------------------------------------------------------

class Lab:
    def __init__(self, teardown: Teardown):
        self.teardown = teardown
        self.tag = f"{PREFIX}{os.getpid()}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        teardown.add("temp dir", lambda: shutil.rmtree(self.tmp, ignore_errors=True))
        self.cgroup = cgroup2_mount() / self.tag
        self.cgroup.mkdir()
        teardown.add("cgroup", lambda: remove_cgroup(self.cgroup))
        self.pin_dir = BPFFS / self.tag
        self.port = port_below_ephemeral()
        self.netns: list[str] = []
        self.ns_ehash = 0  # tcp_ehash_entries inside the namespaces (< 0: they share the host's hash)
        self.agent = Agent(self)

    def servers(self, listeners: list[list], name: str) -> Worker:
        spec = self.tmp / f"{name}.json"
        spec.write_text(json.dumps({"listeners": listeners}))
        w = Worker(name, worker_argv("server", spec), self.tmp)
        self.teardown.add(name, w.stop)
        return w

    def clients(self, n: int, netns: list[str], name: str) -> list[Worker]:
        paths = self.tmp / f"{name}-netns.json"
        paths.write_text(json.dumps(netns))
        out = []
        for i in range(n):
            w = Worker(f"{name}{i}", worker_argv("client", paths), self.tmp, preexec=join_cgroup(self.cgroup))
            self.teardown.add(w.name, w.stop)
            want = "/" + self.tag
            if w.hello["cgroup"] != want:
                raise RuntimeError(f"{w.name} is in cgroup {w.hello['cgroup']}, not {want}")
            out.append(w)
        return out

    def add_netns(self, count: int, child_ehash: int | None = None) -> list[str]:
        """count namespaces with lo up; child_ehash: the host's
        net.ipv4.tcp_child_ehash_entries while they are created (it decides
        whether each gets a TCP established hash of its own; None: as the
        host has it), its own value restored right after."""
        names = [f"{self.tag}-ns{i}" for i in range(count)]
        with sysctl_set(CHILD_EHASH, child_ehash, self.teardown):
            for name in names:
                run(["ip", "netns", "add", name])
                self.teardown.add(f"netns {name}", lambda n=name: run(["ip", "netns", "del", n], check=False))
                run(["ip", "-n", name, "link", "set", "lo", "up"])
        return [f"/run/netns/{n}" for n in names]


@contextmanager
def sysctl_set(name: str, value: int | None, teardown: Teardown) -> Iterator[None]:
    """The sysctl at value for the block (None: untouched), the host's value
    put back after it however it ends; the teardown restores it too (a
    signal in the block)."""
    if value is None:
        yield
        return
    path = Path("/proc/sys", name.replace(".", "/"))
    before = path.read_text().strip()
    restore = lambda: path.write_text(before)  # noqa: E731
    teardown.add(f"sysctl {name}={before}", restore)
    path.write_text(str(value))
    log(f"{name} = {value} (was {before}) while the namespaces are created")
    try:
        yield
    finally:
        restore()


def netns_ehash(ns_name: str) -> int:
    """net.ipv4.tcp_ehash_entries seen inside a namespace: its own hash's
    buckets, negative when it shares the host's."""
    return int(run(["ip", "netns", "exec", ns_name, "cat", "/proc/sys/net/ipv4/tcp_ehash_entries"]).stdout)


def remove_cgroup(path: Path) -> None:
    if not path.exists():
        return
    kill = path / "cgroup.kill"
    for _ in range(100):
        try:
            pids = (path / "cgroup.procs").read_text().split()
        except OSError:
            pids = []
        if not pids:
            break
        if kill.exists():
            kill.write_text("1")  # only our clients are in there
        time.sleep(0.1)
    rmdir_cgroup(path, tries=100)


@contextmanager
def lab_run() -> Iterator[Lab]:
    """The lab of one benchmark run, torn down however the run ends (SIGTERM
    and SIGHUP too); what a killed earlier run left is removed first."""
    teardown = Teardown()
    install_exit_handlers(teardown)
    try:
        ensure_bpffs(BPFFS)
        remove_stale()
        yield Lab(teardown)
    finally:
        teardown.close()


def remove_stale() -> None:
    """What a SIGKILLed earlier run of this benchmark left: its agent, pins,
    cgroup, namespaces and temp dir (names carry the owner's pid)."""
    from bench.agent import detach
    from bench.lab import processes_with_args

    cg_root = cgroup2_mount()
    res = run(["ip", "netns", "list"], check=False, quiet=True)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = owner_pid(name)
        if pid is not None and not pid_alive(pid):
            run(["ip", "netns", "del", name], check=False)
    for pins in BPFFS.glob(f"{PREFIX}*"):
        pid = owner_pid(pins.name)
        if pid is None or pid_alive(pid):
            continue
        for agent in processes_with_args("--pin-dir", str(pins)):
            os.kill(agent, signal.SIGKILL)
        log(f"removing stale pins {pins}")
        detach(pins, cg_root / pins.name)
    for cg in cg_root.glob(f"{PREFIX}*"):
        pid = owner_pid(cg.name)
        if pid is not None and not pid_alive(pid):
            log(f"removing stale cgroup {cg}")
            remove_cgroup(cg)
    for d in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = owner_pid(d.name)
        if pid is not None and not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)


# --- Terminator instrumentation (only for the extra breakdown runs) -------------------------------

class Probe(Hooks):
    """Splits the time of a Terminator run through its hooks (iterrun.Hooks):
    `iter` lists each iterator read (proto, seconds, records, thread) and a
    ("ns", 0, 0, thread) mark where a namespace starts (the namespace
    threads' events interleave: a namespace's reads follow its mark in the
    same thread); list.append is atomic, the float sums are not (only
    netlink and parse add to them from the namespace threads: close enough
    for a breakdown); parse, netlink and list_netns sum
    seconds; `record` (building the report's records) is timed by the caller."""

    def __init__(self):
        self.iter: list[tuple[str, float, int, int]] = []
        self.parse = self.netlink = self.record = self.list_netns = 0.0
        self.netlink_n = 0

    def namespaces(self, seconds: float, count: int) -> None:
        self.list_netns += seconds

    def netns(self, ns) -> None:
        self.iter.append(("ns", 0.0, 0, threading.get_ident()))

    def read(self, key: str, seconds: float, size: int) -> None:
        self.iter.append((key, seconds, size // REC_SIZE, threading.get_ident()))

    def parsed(self, seconds: float, records: int) -> None:
        self.parse += seconds

    def destroyed(self, seconds: float, sockets: int) -> None:
        self.netlink += seconds
        self.netlink_n += sockets


# --- one phase: a socket table, the victims, the methods --------------------------------------------

@dataclass
class Result:
    seconds: list[float] = field(default_factory=list)
    destroyed: list[int] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)   # per measurement: what it scanned, or left


@dataclass
class Breakdown:
    method: str
    total: float
    passes: int
    first_tcp: float        # first iter/tcp pass (kfunc: walk + destroy)
    later_tcp: float        # further iter/tcp passes (walks that find nothing)
    udp: float
    parse: float
    netlink: float
    record: float
    list_netns: float
    netns: int
    later_found: int = 0    # sockets the further passes found (destroyed ones the first pass skipped)
    threads: int = 1        # namespace threads of the Terminator (> 1: step times are summed over them)

    @property
    def other(self) -> float:
        if self.threads > 1:
            return float("nan")  # the steps overlapped: their sum is not part of the wall time
        return self.total - (self.first_tcp + self.later_tcp + self.udp + self.parse + self.netlink
                             + self.record + self.list_netns)


class Phase:
    """Client processes holding a socket table; per namespace index (-1 =
    the host), `want[ns]` connections of which `victims[ns]` to the victim."""

    def __init__(self, lab: Lab, name: str, clients: list[Worker], servers: list[Worker],
                 ns_of_client: list[list[int]], ns_names: dict[int, str]):
        self.lab, self.name = lab, name
        self.clients, self.servers = clients, servers
        self.ns_of_client = ns_of_client        # namespaces each client serves
        self.ns_names = ns_names                # ns index -> name for `ip netns exec` / ss -N
        self.held = [{ns: [0, 0] for ns in nss} for nss in ns_of_client]  # [victims, others]

    @property
    def total(self) -> int:
        return sum(v + o for h in self.held for v, o in h.values())

    @property
    def victims(self) -> int:
        return sum(v for h in self.held for v, _o in h.values())

    def fill(self, target: list[dict[int, tuple[int, int]]]) -> None:
        """Grow each client's connections to target[client][ns] = (total,
        victims), the victims first (victim the only ACTIVE backend), then the
        others (victim DRAINING, which it stays)."""
        agent = self.lab.agent
        t0 = time.monotonic()
        for victims in (True, False):
            agent.set(victims)
            cmds = []
            for ci in range(len(self.clients)):
                counts = {}
                for ns, (tot, vic) in target[ci].items():
                    want = vic if victims else tot - vic
                    have = self.held[ci][ns][0 if victims else 1]
                    if want > have:
                        counts[str(ns)] = want - have
                cmds.append({"op": "open", "addr": VIP, "port": VIP_PORT, "counts": counts})
            for ci, ans in enumerate(call_all(self.clients, cmds)):
                if ans["errors"]:
                    raise RuntimeError(f"client {ci}: connect errors {ans['errors']}")
                tags = {int(k) for k in ans["by_backend"]}
                if (victims and tags - {VICTIM}) or (not victims and VICTIM in tags):
                    raise RuntimeError(f"connections reached the wrong backends: {ans['by_backend']}")
                for ns_s, n in cmds[ci]["counts"].items():
                    self.held[ci][int(ns_s)][0 if victims else 1] += n
        self.check_clients()
        self.wait_servers()
        log(f"{self.name}: {self.total} connections, {self.victims} to the victim "
            f"({time.monotonic() - t0:.1f}s to open)")

    def check_clients(self) -> None:
        for ci, ans in enumerate(call_all(self.clients, [{"op": "stat"}] * len(self.clients))):
            want_v = sum(v for v, _ in self.held[ci].values())
            want = sum(v + o for v, o in self.held[ci].values())
            got_v = ans["by_backend"].get(str(VICTIM), 0)
            if ans["held"] != want or got_v != want_v:
                raise RuntimeError(f"client {ci} holds {ans['held']} ({got_v} to the victim), "
                                   f"expected {want} ({want_v})")

    def wait_servers(self, timeout: float = 120) -> None:
        wait_servers(self.servers, self.total, timeout)

    # -- after a method: exactly the victims died? then re-create them

    def verify_and_refill(self, method: str, host_ss: bool) -> None:
        if host_ss:
            port = self.lab.port
            alive_v = ss_count(["dst", f"{BACKENDS[VICTIM]}:{port}"])
            alive = ss_count(["dport", "=", f":{port}"])
            want = self.total - self.victims
            if alive_v or alive != want:
                raise RuntimeError(f"{method}: ss shows {alive_v} victims alive and {alive} client "
                                   f"sockets in all (expected 0 and {want})")
        answers = call_all(self.clients, [{"op": "reap"}] * len(self.clients))
        reopen = []
        for ci, ans in enumerate(answers):
            want = {f"{ns}/{VICTIM}": v for ns, (v, _o) in self.held[ci].items() if v}
            if ans["dead"] != want:
                wrong = {k: n for k, n in ans["dead"].items() if want.get(k) != n}
                missed = {k: n for k, n in want.items() if k not in ans["dead"]}
                raise RuntimeError(f"{method}: client {ci} lost the wrong set: "
                                   f"unexpected/miscounted {dict(list(wrong.items())[:5])}, "
                                   f"victims alive {dict(list(missed.items())[:5])}")
            reopen.append({ns: v for ns, (v, _o) in self.held[ci].items() if v})
        self.lab.agent.set(True)
        cmds = [{"op": "open", "addr": VIP, "port": VIP_PORT, "counts": {str(k): n for k, n in r.items()}}
                for r in reopen]
        for ci, ans in enumerate(call_all(self.clients, cmds)):
            if ans["errors"] or set(ans["by_backend"]) - {str(VICTIM)}:
                raise RuntimeError(f"refill: client {ci}: {ans}")
        self.lab.agent.set(False)
        self.check_clients()
        self.wait_servers()

    def stop(self) -> None:
        for w in self.clients + self.servers:
            w.stop()


def ss_count(filt: list[str]) -> int:
    r = run(["ss", "-Htn", "state", "established", *filt])
    return r.stdout.count("\n")


def run_ss(cmds: list[list[str]], procs: int = 1) -> int:
    """Run the ss commands, at most `procs` at a time (1: one after
    another); the lines they printed (sockets killed)."""
    pending = list(reversed(cmds))
    running: list[tuple[list[str], subprocess.Popen]] = []
    killed = 0
    while pending or running:
        while pending and len(running) < procs:
            cmd = pending.pop()
            running.append((cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
        cmd, p = running.pop(0)
        out, err = p.communicate()
        if p.returncode != 0:
            for _c, other in running:
                other.kill()
                other.wait()
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {err.decode()[-500:]}")
        killed += out.count(b"\n")
    return killed


def ss_kill(filt: list[str], ns: str | None = None, via: str = "exec") -> list[str]:
    cmd = ["ss", "-K", "-H", "-t", "-n", *filt]
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd] if via == "exec" else ["ss", "-N", ns, *cmd[1:]]
    return cmd


# --- measurement -----------------------------------------------------------------------------------------

class Bench:
    def __init__(self, lab: Lab, args):
        self.lab, self.args = lab, args
        self.loads: dict[str, float] = {}
        self.terminators: dict[str, Terminator] = {}

    def terminator(self, key: str, method: str, netns: list[str] | None, workers: int | None = None) -> Terminator:
        if key not in self.terminators:
            t = Terminator(self.lab.pin_dir, method=method, netns=netns, workers=workers)
            self.lab.teardown.add(f"terminator {key}", t.close)
            self.terminators[key] = t
            self.loads.setdefault(method, t.load_seconds)
            log(f"Terminator {key}: method {t.method.value}, {t.workers} netns thread(s), "
                f"loaded in {t.load_seconds * 1000:.0f} ms")
        return self.terminators[key]

    def term_for(self, key: str, method: str, netns: list[str] | None):
        """The Terminator of a method, and the dsts hint it runs with."""
        every = method.startswith("kfunc-all")
        t = self.terminator(key, "netlink" if method == "netlink" else "kfunc", None if every else netns,
                            workers=1 if method.endswith("-seq") else None)
        dsts = [(BACKENDS[VICTIM], self.lab.port)] if "-dsts" in method else None
        return t, dsts

    def run_method(self, phase: Phase, method: str, netns: list[str] | None, key: str,
                   probe: Probe | None = None) -> tuple[float, int, str]:
        """Destroy the victims once; (seconds, destroyed, note). probe: the
        Terminator run's hooks, and the time its records took."""
        port = self.lab.port
        filt = ["dst", f"{BACKENDS[VICTIM]}:{port}"]
        if method == "kfunc-pass":
            return self.one_pass(phase, key)
        if method in TERM_METHODS:
            t, dsts = self.term_for(key, method, netns)
            target = [Target.backend(self.lab.agent.victim_id)]
            t0 = time.perf_counter()
            rep = t.run(target, dsts=dsts, hooks=probe)
            t1 = time.perf_counter()
            rep.sockets[:REPORTED]  # what the agent's report keeps
            t2 = time.perf_counter()
            dt_ = t2 - t0
            if probe is not None:
                probe.record += t2 - t1
            if rep.errors or rep.failed:
                raise RuntimeError(f"{method}: {rep.failed} failed, errors {rep.errors}")
            return dt_, rep.destroyed, f"{rep.netns_scanned} netns"
        # ss -K: in each namespace of the phase (the host: once)
        names = [None] if not phase.ns_names else list(phase.ns_names.values())
        via = "exec" if method == "ss-exec" else "N"
        cmds = [ss_kill(filt, ns, via) for ns in names]
        procs = (os.cpu_count() or 1) if method == "ss-N-par" else 1
        t0 = time.perf_counter()
        killed = run_ss(cmds, procs)
        return time.perf_counter() - t0, killed, f"{len(cmds)} ss process(es), {procs} at a time"

    def one_pass(self, phase: Phase, key: str) -> tuple[float, int, str]:
        """The floor under the kfunc Terminator: its loaded program's
        iter/tcp and iter/udp read once in DESTROY mode in this thread's
        namespace (the host), records parsed, nothing else: no further
        pass, no report (Terminator.one_pass)."""
        t = self.terminator(key.replace("kfunc-pass", "kfunc"), "kfunc", [f"/proc/{os.getpid()}/ns/net"])
        target = [Target.backend(self.lab.agent.victim_id)]
        t0 = time.perf_counter()
        recs = t.one_pass(target)
        secs = time.perf_counter() - t0
        destroyed = sum(r.result == 0 for r in recs)
        missed = 0
        while destroyed + missed < phase.victims:  # untimed: finish what one pass skipped
            more = t.one_pass(target, ("tcp",))
            if not more:
                break
            missed += sum(r.result == 0 for r in more)
        return secs, destroyed + missed, f"{missed} left for a further pass" if missed else "one pass"

    def measure(self, phase: Phase, methods: list[str], rounds: int, netns: list[str] | None,
                key: str, host_ss: bool) -> dict[str, Result]:
        results = {m: Result() for m in methods}
        self.warm_up(phase, methods, netns, key)
        for r in range(rounds):
            order = methods[r % len(methods):] + methods[:r % len(methods)]
            line = []
            for m in order:
                secs, destroyed, note = self.run_method(phase, m, netns, f"{key}:{m}")
                if destroyed != phase.victims:
                    raise RuntimeError(f"{m}: destroyed {destroyed}, victims {phase.victims}")
                phase.verify_and_refill(m, host_ss)
                results[m].seconds.append(secs)
                results[m].destroyed.append(destroyed)
                results[m].extra.append(note)
                line.append(f"{m} {secs * 1000:.1f} ms")
            log(f"{phase.name} round {r + 1}/{rounds}: " + ", ".join(line))
        return results

    def warm_up(self, phase: Phase, methods: list[str], netns: list[str] | None, key: str) -> None:
        """Load what is missing and walk the table once per method without
        destroying anything (Terminator.count; ss without -K), so no timed
        round pays for a first run."""
        filt = ["dst", f"{BACKENDS[VICTIM]}:{self.lab.port}"]
        for m in methods:
            if m == "kfunc-pass":
                continue
            if m in TERM_METHODS:
                t, dsts = self.term_for(f"{key}:{m}", m, netns)
                rep = t.count([Target.backend(self.lab.agent.victim_id)], dsts=dsts)
                if rep.found != phase.victims:
                    raise RuntimeError(f"{m}: counted {rep.found} victims, expected {phase.victims}")
            else:
                for ns in (list(phase.ns_names.values()) or [None])[:3]:
                    cmd = ss_kill(filt, ns, "exec" if m == "ss-exec" else "N")
                    cmd.remove("-K")
                    run(cmd)

    def breakdown(self, phase: Phase, methods: list[str], netns: list[str] | None, key: str,
                  host_ss: bool) -> list[Breakdown]:
        out = []
        for m in methods:
            if m not in TERM_METHODS:
                continue
            p = Probe()
            secs, destroyed, _ = self.run_method(phase, m, netns, f"{key}:{m}", probe=p)
            phase.verify_and_refill(m, host_ss)
            first = later = 0.0
            passes = nns = later_found = 0
            seen_tcp: dict[int, bool] = {}  # thread -> its namespace had its first tcp pass
            for proto, secs_, n, thread in p.iter:
                if proto == "ns":
                    nns += 1
                    seen_tcp[thread] = False
                elif proto == "tcp":
                    passes += 1
                    if seen_tcp.get(thread):
                        later += secs_
                        later_found += n
                    else:
                        first += secs_
                        seen_tcp[thread] = True
            out.append(Breakdown(
                method=m, total=secs, passes=passes, first_tcp=first, later_tcp=later,
                udp=sum(s for proto, s, _n, _t in p.iter if proto == "udp"),
                parse=p.parse, netlink=p.netlink, record=p.record, list_netns=p.list_netns,
                netns=nns, later_found=later_found, threads=self.term_for(f"{key}:{m}", m, netns)[0].workers))
        return out

    def walk_floor(self, netns: list[str], key: str, n: int = 5) -> dict[str, float]:
        """Medians of count() (STATS mode, one iter/tcp+udp pass, nothing
        destroyed): with a hint no socket matches (the kernel walk plus a few
        loads and a hash lookup per socket), with the victims' backend as
        hint (plus a storage lookup per victim: a destroying run minus this
        is the cost of the destroys) and without a hint (a storage lookup
        per socket)."""
        t = self.terminator(f"{key}:kfunc", "kfunc", netns)
        target = [Target.backend(self.lab.agent.victim_id)]
        out = {}
        for name, dsts in (("nomatch", [("127.61.0.254", 1)]), ("hint", [(BACKENDS[VICTIM], self.lab.port)]),
                           ("nohint", None)):
            xs = []
            for _ in range(n):
                t0 = time.perf_counter()
                t.count(target, dsts=dsts)
                xs.append(time.perf_counter() - t0)
            out[name] = median(xs)
        return out


# --- the run --------------------------------------------------------------------------------------------------

def host_phase(lab: Lab, bench: Bench, args) -> tuple[dict, dict, dict]:
    sizes = sorted(args.sizes)
    nclients = max(1, math.ceil(max(sizes) / CLIENT_MAX))
    servers = [lab.servers([[None, a, lab.port, i]], f"server{i}") for i, a in enumerate(BACKENDS)]
    clients = lab.clients(nclients, [], "client")
    phase = Phase(lab, "host", clients, servers, [[-1]] * nclients, {})
    results, breakdowns, tables, floors = {}, {}, {}, {}
    host_ns = [f"/proc/{os.getpid()}/ns/net"]
    for size in sizes:
        victims = size // 10
        # per client: (total, victims)
        tot, vic = split(size, nclients), split(victims, nclients)
        for ci in range(nclients):
            phase.held[ci].setdefault(-1, [0, 0])
        phase.fill([{-1: (tot[ci], vic[ci])} for ci in range(nclients)])
        tables[size] = count_tables()
        rounds = args.large_rounds if size >= 50000 else args.rounds
        phase.name = f"host {size}"
        results[size] = bench.measure(phase, args.methods, rounds, host_ns, "host", host_ss=True)
        breakdowns[size] = bench.breakdown(phase, args.methods, host_ns, "host", host_ss=True)
        floors[size] = bench.walk_floor(host_ns, "host")
        log(f"walk floor at {size}: " + ", ".join(f"{k} {ms(v)} ms" for k, v in floors[size].items()))
        print_results(f"host, {size} client sockets ({victims} victims)", results[size], "ss")
    phase.stop()
    return results, breakdowns, tables, floors


def count_tables() -> dict:
    """Sockets in the host's TCP tables (for the record: the walk covers them all)."""
    r = run(["ss", "-Htan"], check=False, quiet=True)
    return {"tcp": r.stdout.count("\n")}


def netns_phase(lab: Lab, bench: Bench, args, total: int) -> tuple[dict, list]:
    k = args.netns
    if not lab.netns:
        t0 = time.monotonic()
        lab.netns = lab.add_netns(k, args.child_ehash)
        lab.ns_ehash = netns_ehash(Path(lab.netns[0]).name)
        log(f"{k} network namespaces in {time.monotonic() - t0:.1f}s; tcp_ehash_entries inside: {lab.ns_ehash}")
    paths = lab.netns
    names = {i: Path(p).name for i, p in enumerate(paths)}
    nserv = max(1, math.ceil(total / SERVER_MAX))
    ncli = max(1, math.ceil(total / CLIENT_MAX))
    servers = [lab.servers([[paths[j], a, lab.port, i] for j in range(k) if j % nserv == s
                            for i, a in enumerate(BACKENDS)], f"nsserver{total}-{s}") for s in range(nserv)]
    clients = lab.clients(ncli, paths, f"nsclient{total}-")
    ns_of = [[j for j in range(k) if j % ncli == c] for c in range(ncli)]
    phase = Phase(lab, f"{k} netns, {total}", clients, servers, ns_of, names)
    per_ns_tot = split(total, k)
    per_ns = {j: (per_ns_tot[j], per_ns_tot[j] // 10) for j in range(k)}
    phase.fill([{j: per_ns[j] for j in nss} for nss in ns_of])
    methods = [m for m in args.netns_methods]
    res = bench.measure(phase, methods, args.netns_rounds, paths, f"netns{k}", host_ss=False)
    bd = bench.breakdown(phase, methods, paths, f"netns{k}", host_ss=False)
    print_results(f"{k} netns, {total} client sockets ({phase.victims} victims)", res,
                  "ss-N" if "ss-N" in res else "ss-exec")
    phase.stop()
    return res, bd


def print_results(title: str, res: dict[str, Result], base: str) -> None:
    print(f"\n{title}", flush=True)
    b = median(res[base].seconds) if base in res else float("nan")
    for m, r in res.items():
        med = median(r.seconds)
        rat = b / med if base in res and m != base else float("nan")
        print(f"  {LABEL[m]:45s} {ms(med):>8s} ms  ({' '.join(ms(s) for s in r.seconds)})"
              + (f"  {base} / this = {rat:.2f}x" if not math.isnan(rat) else ""), flush=True)


# --- the docs section ----------------------------------------------------------------------------------------

def fastest_ss(res: dict[str, Result]) -> tuple[str, float]:
    cands = [(median(r.seconds), m) for m, r in res.items() if m in SS_PEERS]
    if not cands:
        return "", float("nan")
    t, m = min(cands)
    return m, t


def results_table(rows: list[tuple[str, dict[str, Result], int, int]]) -> list[str]:
    out = ["| sockets | victims | method | median ms | min ms | per round ms | fastest ss -K / this |",
           "|---:|---:|---|---:|---:|---|---:|"]
    for label, res, total, victims in rows:
        base_m, base = fastest_ss(res)
        for m, r in res.items():
            med = median(r.seconds)
            rat = "" if m in SS_PEERS else f"**{base / med:.2f}x**"
            out.append(f"| {label} | {victims} | {LABEL[m]} | {ms(med)} | {ms(min(r.seconds))} | "
                       f"{' '.join(ms(s) for s in r.seconds)} | {rat} |")
    return out


def breakdown_table(rows: list[tuple[str, list[Breakdown]]]) -> list[str]:
    out = ["| sockets | method | total ms | netns | threads | iter/tcp passes | first tcp passes ms | "
           "further tcp passes ms | iter/udp ms | parse records ms | SOCK_DESTROY ms | report records ms | "
           "find netns ms | other ms |",
           "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, bds in rows:
        for b in bds:
            out.append(f"| {label} | {LABEL[b.method]} | {ms(b.total)} | {b.netns} | {b.threads} | {b.passes} | "
                       f"{ms(b.first_tcp)} | "
                       f"{ms(b.later_tcp)} | {ms(b.udp)} | {ms(b.parse)} | {ms(b.netlink)} | {ms(b.record)} | "
                       f"{ms(b.list_netns)} | {ms(b.other)} |")
    return out


def write_doc(section: str) -> None:
    write_doc_section(DOC, section)


def machine() -> str:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}"


def headline(res: dict[str, Result], where: str, target: float | None) -> list[str]:
    base_m, base = fastest_ss(res)
    if not base_m:
        return []
    out = []
    for m in ("kfunc", "kfunc-dsts", "kfunc-dsts-seq", "netlink", "kfunc-all", "kfunc-all-dsts", "kfunc-pass",
              "ss-N-par"):
        if m not in res:
            continue
        t = median(res[m].seconds)
        # Decides: the per-round ratios (each round ran every method back to back).
        per_round = paired_ratios(res[base_m].seconds, res[m].seconds)
        q1, q3 = quartiles(per_round)
        line = speedup_line(f"{where}: {LABEL[base_m]} / {LABEL[m]}", median(per_round), q1, q3,
                             f"{ms(base)} ms / {ms(t)} ms = {base / t:.2f}x")
        if m in ("kfunc", "kfunc-dsts", "kfunc-dsts-seq", "kfunc-all-dsts") and target:
            line += target_text((">=", target), q1, median(per_round), q3)
        out.append(line)
    return out


def speedup_line(what: str, med: float, q1: float, q3: float, medians: str) -> str:
    """The deciding statistic first (median of the per-round speed-ups, with
    quartiles), then the ratio of the medians (the table's last column)."""
    def x(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{v:.2f}"
    return f"- {what}: per-round median **{x(med)}x** (quartiles {x(q1)}–{x(q3)}; medians {medians})"


def kernel_floor(res: dict, floors: dict, tables: dict) -> list[str]:
    """What bounds the kfunc Terminator at the largest size, from this run's figures."""
    big = max(res)
    if big not in floors or "ss" not in res[big]:
        return []
    f, n_tcp, r = floors[big], tables.get(big, {}).get("tcp", 0), res[big]
    ss = median(r["ss"].seconds)
    best_m = min((m for m in r if m.startswith("kfunc")), key=lambda m: median(r[m].seconds))
    best = median(r[best_m].seconds)
    hinted = [median(r[m].seconds) for m in ("kfunc-dsts", "kfunc-all-dsts") if m in r]
    destroy = (min(hinted) - f["hint"]) if hinted else float("nan")
    need = ss / TARGET_RATIO
    return [f"- Kernel floor at {big:,} sockets: one iter/tcp pass walks the whole established hash, "
            f"{n_tcp:,} TCP sockets here (the clients' server-side peers, the listeners and other namespaces' "
            f"sockets included: with tcp_child_ehash_entries = 0 every namespace shares it), taking each "
            f"bucket's lock, a reference and the socket lock per socket and running the program once per "
            f"socket: {ms(f['nomatch'])} ms with the hint rejecting every socket "
            f"({f['nomatch'] / max(n_tcp, 1) * 1e9:.0f} ns per socket), {ms(f['nohint'])} ms when every "
            f"socket's storage is looked up (no hint). Destroying the {big // 10:,} victims adds about "
            f"{ms(destroy)} ms (hinted run minus a hinted count(): bpf_sock_destroy(), the reset to the "
            f"peer and both sides' teardown, which ss -K pays too). The fastest Terminator row "
            f"({LABEL[best_m]}) took {ms(best)} ms against ss -K {ms(ss)} ms ({ss / best:.2f}x); 3x would "
            f"need {ms(need)} ms, "
            + ("within reach of this walk." if f["nomatch"] + destroy < need else
               "less than the walk plus the destroys themselves: not reachable by a Terminator that walks "
               "the table with iter/tcp.")]


def sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "?"


def kernel_has(symbol: str) -> bool:
    try:
        with open("/proc/kallsyms") as f:
            return any(line.rstrip().endswith(" " + symbol) for line in f)
    except OSError:
        return False


def layout_text(ns_ehash: int) -> str:
    """The TCP hash layout of the namespace phase, from tcp_ehash_entries read inside a namespace."""
    if ns_ehash < 0:
        return f"shared hash: the namespaces use the host's TCP established hash ({-ns_ehash} buckets)"
    return f"hash per namespace: each namespace has a TCP established hash of its own ({ns_ehash} buckets)"


def doc_section(args, ns_ehash: int) -> tuple[str, str, str]:
    """(begin marker, end marker, title): the full run writes the
    termination section; a namespace-phase-only run (--sizes "") its own
    section per hash layout, so that both layouts stay recorded."""
    if args.sizes or not args.netns:
        return BEGIN, END, "## Socket termination"
    name = f"termination-netns-{'shared' if ns_ehash < 0 else 'own'}"
    return (f"<!-- {name}:begin -->", f"<!-- {name}:end -->",
            f"## Socket termination in {args.netns} network namespaces, {layout_text(ns_ehash).split(':')[0]}")


def render_doc(args, host, netns_res, loads, started, load_before, elapsed, ns_ehash: int = -1) -> str:
    all_bds = [b for bds in (host[1].values() if host else []) for b in bds]
    all_bds += [b for _r, bds in netns_res.values() for b in bds]
    cmd = "cd /work/main && .venv/bin/python -m bench.termination" + (f" {args.argv}" if args.argv else "")
    begin, end, title = doc_section(args, ns_ehash)
    lines = [begin, title, "",
             "Time to destroy the TCP sockets of a removed backend (a tenth of the client sockets), with "
             "socklb's Terminator (`bpf_sock_destroy()` from `iter/tcp`, or the same iterator listing "
             "the sockets + netlink `SOCK_DESTROY`) and with `ss -K` given the equivalent filter, "
             "interleaved in one run; after every measurement the benchmark checks that exactly the "
             "victims died, then re-creates them.", "",
             "```", cmd, "```", "",
             f"- Machine: {machine()}; load average {load_before} before the run, "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after",
             f"- Date: {started} UTC; the run took {elapsed / 60:.1f} min",
             f"- Setup: VIP {VIP}:{VIP_PORT}, 10 backends 127.61.0.1–10 (one port), accept-and-hold "
             f"servers; clients in a cgroup with the socklb agent's programs, ≤ {CLIENT_MAX} sockets per "
             f"process; victim backend 127.61.0.1 (DRAINING); each client socket also has its accepted "
             f"server-side peer in the table (no flow record). Rounds: {args.rounds} "
             f"({args.large_rounds} at ≥ 50k sockets), {args.netns_rounds} in the namespace phase; "
             "medians over rounds, method order rotated per round. The lines below each table give the "
             "median of the per-round speed-ups over the fastest ss with its quartiles, which decides the "
             "target (met: both quartiles meet it; borderline: they straddle it; not met: neither does), "
             "then the ratio of the medians (the table's last column).",
             f"- Program load (excluded from the times; built object cached): "
             + ", ".join(f"{m} {s * 1000:.0f} ms" for m, s in loads.items()), ""]
    if host:
        res, bds, tables, floors = host
        lines += ["### Host network namespace (loopback)", ""]
        lines += results_table([(f"{s:,}", res[s], s, s // 10) for s in sorted(res)])
        lines += [""]
        big = max(res)
        lines += headline(res[big], f"{big:,} sockets", TARGET_RATIO)
        bd = {b.method: b for b in bds.get(big, [])}
        for m in ("kfunc", "kfunc-dsts"):
            if m not in bd:
                continue
            b = bd[m]
            lines += [f"- Where the {LABEL[m]}'s time goes at {big:,} sockets (instrumented run, "
                      f"{ms(b.total)} ms): iter/tcp passes {b.passes} ({ms(b.first_tcp)} ms destroying"
                      + (f", {ms(b.later_tcp)} ms further" if b.passes > b.netns else "")
                      + f"), iter/udp {ms(b.udp)} ms, SocketRecords for the {REPORTED} reported "
                      f"{ms(b.record)} ms, parsing {ms(b.parse)} ms, the rest {ms(b.other)} ms"]
        if floors:
            tcp = {z: t["tcp"] for z, t in tables.items()}
            lines += ["- Walk floor (one `count()`: iter/tcp + iter/udp, nothing destroyed, no records; "
                      "median of 5): " + "; ".join(
                          f"{z:,} sockets ({tcp.get(z, 0):,} TCP in the table): hint matching nothing "
                          f"{ms(f['nomatch'])} ms ({f['nomatch'] / max(tcp.get(z, 1), 1) * 1e9:.0f} ns per "
                          f"socket), hint matching the victims {ms(f['hint'])} ms, no hint {ms(f['nohint'])} ms"
                          for z, f in sorted(floors.items()))]
        lines += kernel_floor(res, floors, tables)
        lines += [f"- Before the single pass, the lazy records and the dsts hint (run of 2026-11-22 01:54 UTC, "
                  f"same setup): Terminator kfunc 769.3 ms vs ss -K 339.2 ms at 100,000 sockets (0.44x); "
                  f"its profile: a further pass finding nothing 26%, a SocketRecord per destroyed socket 25%."]
        floor = [n for z in res if "kfunc-pass" in res[z] for n in res[z]["kfunc-pass"].extra if "left" in n]
        runs = sum(len(res[z]["kfunc-pass"].extra) for z in res if "kfunc-pass" in res[z])
        if runs:
            lines += [f"- The single pass (floor) destroyed every victim in {runs - len(floor)} of {runs} "
                      "measurements" + (f"; the others: {', '.join(floor)}" if floor else "")]
        lines += ["- TCP sockets in the host's table during each size (all states, both sides, "
                  "other tenants' included): " + ", ".join(f"{s:,}: {t['tcp']:,}" for s, t in sorted(tables.items())),
                  ""]
        lines += ["Where the Terminator's time goes (one extra instrumented run per method and size, not in the "
                  "medians above; the wrappers add a little):", ""]
        lines += breakdown_table([(f"{s:,}", bds[s]) for s in sorted(bds)])
        lines += [""]
    if netns_res:
        lines += [f"### {args.netns} network namespaces ({layout_text(ns_ehash)})", ""]
        lines += results_table([(f"{t:,} ({t // args.netns} per netns)", r, t, t // 10) for t, (r, _b) in
                                sorted(netns_res.items())])
        lines += [""]
        for t, (r, _b) in sorted(netns_res.items()):
            # issue 14: the target holds for termination on busy nodes, 100k sockets in 100 namespaces
            lines += headline(r, f"{t:,} sockets in {args.netns} netns", TARGET_RATIO if t >= 100000 else None)
        lines += ["", "Breakdown (instrumented run):", ""]
        lines += breakdown_table([(f"{t:,}", b) for t, (_r, b) in sorted(netns_res.items())])
        lines += [""]
    lines += ["Notes:", "",
              "- Every measurement destroyed exactly the victims: after each one, `ss` (host phase) shows no "
              "established client socket to the victim and all the others, and every client process reports "
              "that exactly its victim connections broke (each knows its backend from a tag byte the server "
              "sent); otherwise the run stops. Then the victims are re-created (victim the only ACTIVE "
              "backend while the clients reopen them) and the servers are waited on until they hold every "
              "connection again.",
              "- Terminator times are `Terminator.run()` wall time in the benchmark's process (scan, destroy, "
              "report), programs already loaded and warmed by one `count()`; `ss -K` times are the wall time "
              "of the `ss` process(es), started one after another, their output read and discarded (the "
              "reference row ss-N-par: as many at a time as CPUs, what parallelism alone gives ss; the "
              "target is measured against the sequential ss).",
              "- Terminator rows walk the namespaces in one thread per CPU (the agent's default, "
              "`netns.netns_workers`) unless marked `SOCKLB_NETNS_WORKERS=1` (one thread, in turn); in the "
              "breakdown of a run with several threads the step times are summed over the threads (they "
              "exceed the wall time, so `other` is n/a).",
              "- `ss -K -H -t -n dst 127.61.0.1:PORT` matches exactly the client sockets connected to the "
              "victim (their server-side peers have that address as source, not destination), the same set "
              "as the Terminator's `Target.backend(id)`; `-n -H` only make ss's output cheaper (the fastest "
              "ss, so the ratios are conservative). Every method also kills the server side: the destroyed "
              "client socket sends a reset.",
              "- kfunc / netlink scan the host namespace only in the host phase and the 100 namespaces only "
              "in the namespace phase, the scope of the ss runs; kfunc-all is the agent's default: every "
              "namespace of the node, found through /proc/*/ns/net and /run/netns (other tenants' too), "
              "discovery included.",
              "- The floor row reads the kfunc Terminator's loaded iter/tcp and iter/udp programs once in "
              "DESTROY mode and parses the records (`Terminator.one_pass()`), nothing else: what a run with a "
              "single pass and no per-socket report would cost.",
              f"- Further passes: on a kernel whose iterator resumes a bucket by socket cookie "
              f"(bpf_iter_tcp_resume / bpf_iter_udp_resume in BTF or /proc/kallsyms) the Terminator walks "
              f"each namespace once; otherwise it scans again while a pass destroyed something. This kernel "
              f"{'has' if kernel_has('bpf_iter_tcp_resume') else 'does not have'} bpf_iter_tcp_resume and "
              f"{'has' if kernel_has('bpf_iter_udp_resume') else 'shows no'} bpf_iter_udp_resume (so iter/udp, "
              f"cheap here, still gets a further pass after one that destroyed a UDP socket); in this run's "
              f"instrumented runs further tcp passes found {sum(b.later_found for b in all_bds)} sockets.",
              "- dsts hint: `run(targets, dsts=[(address, port)])` puts the targets' backends in a hash map "
              "that the iterator checks against each socket's peer (direct loads from the socket) before "
              "its flow-record lookup (`bpf_sk_storage_get`); the agent knows those addresses. Without the "
              "hint every non-listening socket is looked up.",
              f"- net.ipv4.tcp_child_ehash_entries = {sysctl('net/ipv4/tcp_child_ehash_entries')} on the host "
              f"(0: new namespaces share the host's TCP established hash, here "
              f"{sysctl('net/ipv4/tcp_ehash_entries')} buckets; with the shared hash every per-namespace "
              "iterator pass or ss dump walks all of its buckets and skips other namespaces' sockets: "
              "per-namespace cost grows with the node's whole socket count)"
              + (f"; the namespace phase's namespaces: {layout_text(ns_ehash)}"
                 + (f" (created with {CHILD_EHASH} = {args.child_ehash}, the host's value restored after)"
                    if args.child_ehash is not None else "") if netns_res else "") + ".",
              "- The namespace phase at 100,000 sockets in both TCP hash layouts (shared: the default; one "
              "hash per namespace: net.ipv4.tcp_child_ehash_entries set before the namespaces are created) "
              "is recorded in the sections below, written by namespace-only runs (`--sizes ''`, "
              "`--child-ehash`); what a node should set: docs/operations.md.",
              "- The machine is a shared 2-CPU VM (other sessions run tests and benchmarks on it, some with "
              "their own socket iterators): compare ratios within one run, not absolute numbers across runs.",
              end]
    return "\n".join(lines) + "\n"


# --- main ------------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",") if x]
    p.add_argument("--sizes", type=ints, default=[1000, 10000, 100000],
                   help="client socket counts of the host phase (empty: skip it)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--large-rounds", type=int, default=5, help="rounds at 50k sockets and more")
    p.add_argument("--methods", default=",".join(HOST_METHODS))
    p.add_argument("--netns", type=int, default=100, help="namespaces of the namespace phase (0: skip it)")
    p.add_argument("--netns-sockets", type=ints, default=[1000, 10000],
                   help="client sockets over all namespaces, one run each")
    p.add_argument("--netns-rounds", type=int, default=5)
    p.add_argument("--netns-methods", default=",".join(NETNS_METHODS))
    p.add_argument("--child-ehash", type=int, default=None,
                   help="net.ipv4.tcp_child_ehash_entries while the namespaces are created (0: they share the "
                        "host's TCP established hash; N: each gets one of its own of about N buckets); the "
                        "host's value is restored right after. Default: leave it as the host has it")
    p.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    a = p.parse_args(argv)
    a.argv = shlex.join(argv if argv is not None else sys.argv[1:])
    a.methods = [m for m in a.methods.split(",") if m]
    a.netns_methods = [m for m in a.netns_methods.split(",") if m]
    for m in a.methods:
        if m not in HOST_METHODS:
            p.error(f"unknown method {m}; host phase: {', '.join(HOST_METHODS)}")
    for m in a.netns_methods:
        if m not in NETNS_METHODS:
            p.error(f"unknown method {m}; namespace phase: {', '.join(NETNS_METHODS)}")
    if any(s % 10 or s <= 0 for s in a.sizes + a.netns_sockets):
        p.error("socket counts must be positive multiples of 10 (a tenth are victims)")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (BPF, cgroups, namespaces)", file=sys.stderr)
        return 2
    for tool in ("ss", "ip", "clang", "bpftool"):
        if not shutil.which(tool):
            print(f"{tool} is needed", file=sys.stderr)
            return 2
    started, load_before, t_start = run_stamp()
    with lab_run() as lab:
        bench = Bench(lab, args)
        host = host_phase(lab, bench, args) if args.sizes else None
        netns_res = {}
        if args.netns:
            for total in args.netns_sockets:
                netns_res[total] = netns_phase(lab, bench, args, total)
        elapsed = time.monotonic() - t_start
        section = render_doc(args, host, netns_res, bench.loads, started, load_before, elapsed, lab.ns_ehash)
        print("\n" + section)
        if not args.no_doc:
            write_doc(section)
            log(f"wrote {DOC}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
