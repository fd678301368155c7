"""End-to-end harness: real processes on one machine.

- ``Etcd``: Debian's /usr/bin/etcd on 127.0.0.1 with free ports and its own
  data dir: the integration tests' ``EtcdServer`` (tests/integration/conftest.py).
- ``ControlPlane``: ``python -m socklb.controlplane.server`` (embedded or etcd store).
- ``Node``: ``python -m socklb.dataplane.cli run --controlplane ...`` on a test
  cgroup of its own, with its own pin dir and admin socket: two nodes on one
  machine. It is the kernel tests' ``netenv.Agent`` (dump, stop, detach and pin
  checks) started in control-plane mode instead of standalone mode.
- ``EtcdCluster``: three ``EtcdMember`` processes on loopback ports (the
  "etcd3" cluster kind), with the leader found through etcd's Maintenance API.
- ``Cluster``: an optional etcd, a main control-plane replica, two nodes, and
  the API calls the tests make (gRPC stubs of socklb.v1.LoadBalancer).
- Faults: ``Link`` (a TCP relay between a node and its control plane that can
  be cut and healed), ``Tmpfs`` (a small disk to fill; ``Cluster.move_store``
  puts the embedded store on it), ``etcd_nospace`` (etcd's out-of-space alarm).

etcd and the control planes run in sessions (process groups) of their own and
are stopped by group; the agents are stopped (SIGTERM, then SIGKILL) and
detached. Every name that lands on the machine (cgroups, pin dirs, the work dir, a tmpfs in it) is
``socklb-test-endtoend-<pid>-<n>`` so that a later run can recognise and sweep the
leftovers of a killed one (``sweep_leftovers``).

All waits are bounded polls; nothing asserts on how long something took.
"""
from __future__ import annotations

import errno
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc
from pyetcd import etcdrpc

import netenv
from support import free_port, free_ports

from socklb.lb.addresses import split_host_port
from socklb.v1 import api_pb2, api_pb2_grpc, node_pb2, node_pb2_grpc, types_pb2

REPO = netenv.REPO
KIND = "endtoend"  # letters only: netenv.stale() recognises socklb-test-<letters>-<pid>-<n>

# Bounds that only keep a broken run from hanging; nothing asserts on them.
START_TIMEOUT = 60.0
SYNC_TIMEOUT = 60.0
RPC_DEADLINE = 20.0
STOP_TIMEOUT = 15.0

N = 20  # connections per traffic check
LOOP_INTERVAL = 0.005  # seconds between a client loop's connections

# The channel the tests use reconnects quickly after a control-plane restart
# (gRPC's default backoff grows to minutes).
CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def e2e_name() -> str:
    return netenv.unique_name(KIND)


# Every process started here carries SOCKLB_E2E_OWNER=<the session's work dir
# name> in its environment: a control plane on etcd names no path of ours on
# its command line, and the sweep must still recognise it after a killed run.
OWNER_ENV = "SOCKLB_E2E_OWNER"
OWNER = e2e_name()


def child_env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", **{OWNER_ENV: OWNER})


def poll(fn, timeout: float, interval: float = 0.2):
    """fn() until truthy (bounded); returns the last value."""
    return netenv.poll(fn, timeout=timeout, interval=interval)


INTEGRATION_CONFTEST = REPO / "tests" / "integration" / "conftest.py"


def etcd_binary() -> str | None:
    """What the integration tests' fixture runs (SOCKLB_TEST_ETCD, default
    /usr/bin/etcd), if it is there."""
    path = os.environ.get("SOCKLB_TEST_ETCD", "/usr/bin/etcd")
    return path if os.path.isfile(path) and os.access(path, os.X_OK) else None


# --------------------------------------------------------------------------
# processes


class Proc:
    """A process in its own session, output appended to a log file."""

    ready_pattern: re.Pattern | None = re.compile(r"\bready\b")

    def __init__(self, name: str, log_path: Path):
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self._offset = 0  # where the current run's output starts in the log

    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        return bool(self.ready_pattern and self.ready_pattern.search(self.output()))

    def start(self, timeout: float = START_TIMEOUT) -> "Proc":
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start without waiting for ready (members of an etcd cluster are all
        launched before any of them can be ready)."""
        assert not self.running(), f"{self.name} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"==== {time.strftime('%H:%M:%S')} start {self.name}\n".encode())
            log.flush()
            self._offset = log.tell()
            env = child_env()
            self.proc = subprocess.Popen(
                self.command(), cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "Proc":
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before ready:\n"
                                   f"{self.output()}")
            if self.is_ready():
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.output()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _killpg(self, sig) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)  # the session leader's pid is the group id
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process group and reap it."""
        if self.proc is None:
            return
        self._killpg(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """SIGTERM, then SIGKILL after ``timeout``. True if it exited on SIGTERM."""
        if self.proc is None:
            return True
        if self.proc.poll() is not None:
            self._killpg(signal.SIGKILL)  # anything it left in its group
            return True
        self._killpg(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
            graceful = True
        except subprocess.TimeoutExpired:
            graceful = False
        self.kill()
        return graceful

    def output(self) -> str:
        """This run's output."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _integration_fixtures():
    """tests/integration/conftest.py, loaded under its own module name for its
    EtcdServer (pytest loads it as that directory's conftest; none of its
    fixtures are registered from here)."""
    name = "socklb_integration_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, INTEGRATION_CONFTEST)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        sys.modules[name] = mod
    return sys.modules[name]


class Etcd:
    """The integration tests' EtcdServer (one member, a temp data dir, free
    ports; start/stop repeatable on the same data dir and ports) with the
    interface of ``Proc``."""

    name = "etcd"

    def __init__(self):
        self.server = _integration_fixtures().EtcdServer(etcd_binary())
        self._last: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return self.server.endpoint

    @property
    def log_path(self) -> Path:
        return self.server.log_path

    @property
    def pid(self) -> int | None:
        return self.server.proc.pid if self.server.proc is not None else None

    def start(self) -> "Etcd":
        self.server.start(timeout=START_TIMEOUT)
        self._last = self.server.proc
        return self

    def running(self) -> bool:
        return self.server.proc is not None and self.server.proc.poll() is None

    def stop(self) -> bool:
        """SIGTERM (SIGKILL after a while). True if it exited on SIGTERM."""
        p = self._last
        self.server.stop()
        if p is None:
            return True
        try:
            os.killpg(p.pid, signal.SIGKILL)  # anything left in its process group
        except ProcessLookupError:
            pass
        return p.returncode != -signal.SIGKILL

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def remove(self) -> None:
        self.stop()
        self.server.remove()


class EtcdMember(Proc):
    """One member of an ``EtcdCluster``: client and peer URLs on 127.0.0.1, its
    own data dir under the cluster's work dir. Ready when its /health is true
    (it has a leader). A restart reuses the data dir (the initial-cluster flags
    are then ignored by etcd)."""

    ready_pattern = None

    def __init__(self, workdir: Path, name: str, initial_cluster: str, client_port: int, peer_port: int):
        super().__init__(f"etcd {name}", workdir / f"etcd-{name}.log")
        self.member = name
        self.data_dir = workdir / f"etcd-{name}"
        self.initial_cluster = initial_cluster
        self.client_port, self.peer_port = client_port, peer_port

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        client = f"http://{self.endpoint}"
        return [etcd_binary(), "--name", self.member, "--data-dir", str(self.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", self.initial_cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", self.data_dir.parent.name,
                "--heartbeat-interval", "100", "--election-timeout", "1000"]

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=0.5) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def status(self):
        return etcd_status(self.endpoint)


def etcd_status(endpoint: str):
    """etcd's Maintenance.Status of the member at endpoint (its id, the leader's id)."""
    with grpc.insecure_channel(endpoint) as ch:
        return etcdrpc.MaintenanceStub(ch).Status(etcdrpc.StatusRequest(), timeout=2)


def etcd_nospace(endpoint: str, on: bool) -> None:
    """Raise (on) or disarm etcd's NOSPACE alarm for the member at endpoint
    through its Maintenance API: the state etcd enters when its database
    outgrows its space quota (writes and lease grants refused with
    RESOURCE_EXHAUSTED "database space exceeded")."""
    action = etcdrpc.AlarmRequest.ACTIVATE if on else etcdrpc.AlarmRequest.DEACTIVATE
    member = etcd_status(endpoint).header.member_id
    with grpc.insecure_channel(endpoint) as ch:
        etcdrpc.MaintenanceStub(ch).Alarm(etcdrpc.AlarmRequest(action=action, memberID=member, alarm=etcdrpc.NOSPACE),
                                          timeout=RPC_DEADLINE)


class EtcdCluster:
    """``size`` etcd members on loopback ports, started together; the
    interface of ``Etcd`` that ``Cluster`` uses (start, running, remove,
    endpoint: every member's client address, comma-separated)."""

    def __init__(self, workdir: Path, size: int = 3):
        ports = free_ports(2 * size)
        names = [f"m{i + 1}" for i in range(size)]
        initial = ",".join(f"{n}=http://127.0.0.1:{ports[2 * i + 1]}" for i, n in enumerate(names))
        self.members = [EtcdMember(workdir, n, initial, ports[2 * i], ports[2 * i + 1])
                        for i, n in enumerate(names)]

    @property
    def endpoint(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> "EtcdCluster":
        """Start the members that are not running (all at once), wait until every one is ready."""
        down = [m for m in self.members if not m.running()]
        for m in down:
            m.launch()
        for m in down:
            m.wait_ready()
        return self

    def running(self) -> bool:
        return all(m.running() for m in self.members)

    def leader(self, timeout: float = SYNC_TIMEOUT) -> EtcdMember:
        """The member that every running member names as leader (bounded wait)."""
        def agreed():
            ids, leaders = {}, set()
            for m in self.members:
                if not m.running():
                    continue
                try:
                    st = m.status()
                except grpc.RpcError:
                    return None
                ids[st.header.member_id] = m
                leaders.add(st.leader)
            return ids.get(leaders.pop()) if len(leaders) == 1 else None

        found = poll(agreed, timeout)
        assert found is not None, f"the etcd members did not agree on a leader within {timeout}s"
        return found

    def remove(self) -> None:
        for m in self.members:
            m.stop()
            shutil.rmtree(m.data_dir, ignore_errors=True)


class ControlPlane(Proc):
    def __init__(self, workdir: Path, store_url: str, replica: str, port: int | None = None):
        super().__init__(f"controlplane {replica}", workdir / f"cp-{replica}.log")
        self.store_url = store_url
        self.replica = replica
        self.port = port or free_port()
        self._channel: grpc.Channel | None = None
        self._stub = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "socklb.controlplane.server", "--listen", self.addr,
                "--store", self.store_url, "--replica-id", self.replica]

    def start(self, timeout: float = START_TIMEOUT) -> "ControlPlane":
        self.close_channel()
        super().start(timeout)
        return self

    def restart_as(self, replica: str) -> "ControlPlane":
        """Start again on the same address and store under a new replica name
        (a restarted pod gets a new name), so the nodes' ``replica`` field
        tells whether they reconnected."""
        assert not self.running()
        self.replica = replica
        self.name = f"controlplane {replica}"
        return self.start()

    def close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    @property
    def api(self) -> api_pb2_grpc.LoadBalancerStub:
        if self._stub is None:
            self._channel = grpc.insecure_channel(self.addr, options=CHANNEL_OPTIONS)
            self._stub = api_pb2_grpc.LoadBalancerStub(self._channel)
        return self._stub

    def kill(self) -> None:
        super().kill()
        self.close_channel()

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        graceful = super().stop(timeout)
        self.close_channel()
        return graceful


class Node(netenv.Agent):
    """A dataplane node: the agent in control-plane mode on its own cgroup,
    pin dir and admin socket."""

    def __init__(self, name: str, workdir: Path, controlplanes: list[str]):
        # netenv.Agent's attributes, without its standalone state file.
        self.name = name
        self.cgroup = netenv.TestCgroup(name=e2e_name())
        self.workdir = workdir
        self.pin_dir = netenv.BPFFS / e2e_name()
        self.socket = workdir / f"{name}.sock"
        self.controlplanes = list(controlplanes)
        self.extra_args: list[str] = []
        self.proc = None
        self.log = []
        self._log_lock = threading.Lock()
        self._ready = threading.Event()
        self._admin = self._admin_channel = None

    def start(self) -> "Node":
        self._ready.clear()
        cmd = [
            sys.executable, "-m", "socklb.dataplane.cli", "run",
            "--controlplane", ",".join(self.controlplanes),
            "--node", self.name,
            "--cgroup", str(self.cgroup.path),
            "--pin-dir", str(self.pin_dir),
            "--admin-socket", str(self.socket),
            "--stats-interval", "1",
        ]
        env = child_env()
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        proc = self.proc
        threading.Thread(target=self._drain, args=(proc,), daemon=True).start()
        deadline = time.monotonic() + netenv.AGENT_READY_TIMEOUT
        while not self._ready.is_set():
            if proc.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError(f"node {self.name} exited with {proc.returncode} before ready:\n"
                                   f"{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} not ready after {netenv.AGENT_READY_TIMEOUT}s:\n"
                                   f"{self.log_text()}")
            self._ready.wait(0.1)
        return self

    def info(self) -> dict:
        """``dump info -o json`` (the operator's CLI)."""
        return self.dump("info")

    def applied(self) -> int:
        """The agent's applied version, straight from its admin socket (cheaper
        than a CLI process in poll loops)."""
        if self._admin is None:
            self._admin_channel = grpc.insecure_channel(f"unix://{self.socket}")
            self._admin = node_pb2_grpc.NodeAdminStub(self._admin_channel)
        return self._admin.GetInfo(node_pb2.GetInfoRequest(), timeout=RPC_DEADLINE).applied_version

    def services(self) -> list[dict]:
        """The programmed frontends (``dump services``), sorted."""
        return sorted(self.dump("services").get("frontends", []), key=lambda f: int(f["id"]))

    def destroy(self) -> list[str]:
        """Stop, detach, remove pins and the cgroup; returns the problems found."""
        if self._admin_channel is not None:
            self._admin_channel.close()
            self._admin = self._admin_channel = None
        problems = [f"node {self.name}: {p}" for p in self.cleanup()]
        try:
            self.cgroup.remove()
        except Exception as e:  # report, keep cleaning
            problems.append(f"node {self.name}: cgroup: {e}")
        return problems


# --------------------------------------------------------------------------
# API helpers


def tcp_frontend(vip: str, port: int) -> types_pb2.Frontend:
    return types_pb2.Frontend(address=vip, port=port, protocol=types_pb2.PROTOCOL_TCP)


def backend_of(b: netenv.Backend) -> types_pb2.Backend:
    return types_pb2.Backend(address=b.addr, port=b.port)


def health_name(h: int) -> str:
    return api_pb2.NodeHealth.Name(h)


def code_of(e: grpc.RpcError) -> grpc.StatusCode | None:
    try:
        return e.code()
    except Exception:
        return None


class Cluster:
    """An optional etcd, the main control-plane replica, two nodes. Kinds:
    "embedded" (the embedded store), "etcd" (one etcd member), "etcd3" (a
    3-member etcd cluster; the store URL lists every member)."""

    NODE_NAMES = ("node-1", "node-2")

    def __init__(self, kind: str, root: Path, index: int):
        assert kind in ("embedded", "etcd", "etcd3")
        self.kind = kind
        self.index = index  # the VIPs are 127.96.<index>.<n>
        self.workdir = root / kind
        self.workdir.mkdir(parents=True)
        self.etcd = (Etcd() if kind == "etcd" else EtcdCluster(self.workdir, 3) if kind == "etcd3"
                     else None)
        self.store_url = (f"etcd://{self.etcd.endpoint}" if self.etcd
                          else f"embedded://{self.workdir / 'store'}")
        self.generation = 0
        self.cp = ControlPlane(self.workdir, self.store_url, self._replica_name())
        self.nodes: list[Node] = []
        self._vips = 0
        # per test
        self.extra_cps: list[ControlPlane] = []
        self.extra_nodes: list[Node] = []
        self._old_nodes: list[Node] = []  # extra nodes of earlier tests (their logs)
        self.clients: list[netenv.Client] = []
        self.backends: list[netenv.Backend] = []
        self.services: set[str] = set()

    def _replica_name(self) -> str:
        self.generation += 1
        return f"{self.kind}-r1-g{self.generation}"

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        if self.etcd is not None:
            self.etcd.start()
        self.cp.start()
        self.nodes = [Node(n, self.workdir, [self.cp.addr]) for n in self.NODE_NAMES]
        start_all(self.nodes)
        self.wait_nodes_ready(self.nodes)

    def restart_cp(self) -> None:
        """Start the main replica again (same address and store, next name)."""
        self.cp.restart_as(self._replica_name())

    def ensure(self) -> None:
        """Bring back what an earlier (possibly failed) test left stopped."""
        if self.etcd is not None and not self.etcd.running():
            self.etcd.start()
        if not self.cp.running():
            self.restart_cp()
        down = [n for n in self.nodes if not n.running()]
        start_all(down)
        self.wait_nodes_ready(self.nodes)

    def end_test(self) -> list[str]:
        """Undo what one test made; returns problems (reported, not raised here)."""
        problems = []
        for c in self.clients:
            c.close()
        self.clients.clear()
        for n in self.extra_nodes:
            problems += n.destroy()
            self._old_nodes.append(n)
        self.extra_nodes.clear()
        for cp in self.extra_cps:
            cp.stop()
        self.extra_cps.clear()
        try:  # a test may have left etcd or the control plane stopped
            if self.etcd is not None and not self.etcd.running():
                self.etcd.start()
            if not self.cp.running():
                self.restart_cp()
        except Exception as e:
            problems.append(f"restarting after the test: {e}")
        if self.cp.running() and (self.etcd is None or self.etcd.running()):
            # The next test starts from nodes that hold none of this test's services.
            last = 0
            for name in sorted(self.services):
                try:
                    r, _ = retry_unavailable(lambda: self.cp.api.DeleteService(
                        api_pb2.DeleteServiceRequest(name=name), timeout=RPC_DEADLINE))
                    if r.existed:
                        last = max(last, r.revision)
                except grpc.RpcError as e:
                    problems.append(f"deleting service {name}: {code_of(e)} {e.details()}")
            if last and all(n.running() for n in self.nodes):
                try:
                    self.wait_applied(last)
                except AssertionError as e:
                    problems.append(f"after deleting the test's services: {e}")
        self.services.clear()
        for b in self.backends:
            b.stop()
        self.backends.clear()
        return problems

    def destroy(self) -> list[str]:
        problems = []
        for c in self.clients:
            c.close()
        for n in self.extra_nodes:
            problems += n.destroy()
        for cp in self.extra_cps:
            cp.stop()
        for b in self.backends:
            b.stop()
        for n in self.nodes:
            problems += n.destroy()
        self.cp.stop()
        if self.etcd is not None:
            self.etcd.remove()
        return problems

    def _etcd_procs(self) -> list:
        if isinstance(self.etcd, EtcdCluster):
            return list(self.etcd.members)
        return [self.etcd] if self.etcd else []

    def logs(self) -> str:
        parts = []
        for p in self._etcd_procs() + [self.cp] + self.extra_cps:
            parts.append(f"---- {p.log_path.name} ----\n{tail(p.log_text())}")
        for n in self.nodes + self.extra_nodes:
            parts.append(f"---- node {n.name} ({n.pin_dir.name}) ----\n{tail(n.log_text())}")
        return "\n".join(parts)

    def save_logs(self, dest: Path) -> None:
        """Copy every log (process logs, node agents' output) to dest/<kind>/."""
        out = dest / self.kind
        out.mkdir(parents=True, exist_ok=True)
        for p in set(self.workdir.glob("*.log")) | {e.log_path for e in self._etcd_procs()}:
            if p.exists():
                shutil.copy(p, out / p.name)
        for n in self.nodes + self.extra_nodes + self._old_nodes:
            (out / f"node-{n.name}.log").write_text(n.log_text() + "\n")

    def repoint(self, node: Node, controlplanes: list[str]) -> None:
        """Restart a node's agent with other control-plane addresses (its
        pinned programs and maps stay and go on forwarding meanwhile)."""
        node.stop()
        node.controlplanes = list(controlplanes)
        node.start()

    def move_store(self, directory: Path) -> None:
        """Embedded store: stop the control plane, copy its store into
        ``directory`` (a fresh or an earlier place) and start it there (same
        address, next name). The store's revisions go on where they were, so
        the nodes' applied versions stay meaningful."""
        assert self.kind == "embedded", self.kind
        src = Path(self.store_url.removeprefix("embedded://"))
        self.cp.stop()
        if directory.resolve() == src.resolve():  # already there (a move that failed half-way)
            self.restart_cp()
            return
        directory.mkdir(parents=True, exist_ok=True)
        for f in directory.glob("store.db*"):
            f.unlink()
        for f in src.glob("store.db*"):  # the database and its WAL; the -shm index is rebuilt
            if not f.name.endswith("-shm"):
                shutil.copy2(f, directory / f.name)
        self.store_url = self.cp.store_url = f"embedded://{directory}"
        self.restart_cp()

    # -- things a test makes -----------------------------------------------------

    def add_replica(self, replica: str) -> ControlPlane:
        cp = ControlPlane(self.workdir, self.store_url, replica)
        self.extra_cps.append(cp)
        return cp.start()

    def add_node(self, name: str, controlplanes: list[str]) -> Node:
        n = Node(name, self.workdir, controlplanes)
        self.extra_nodes.append(n)
        return n.start()

    def client(self, node: Node) -> netenv.Client:
        c = netenv.Client(node.cgroup)
        self.clients.append(c)
        return c

    def backend(self, label: str, addr: str) -> netenv.Backend:
        b = netenv.Backend(label, addr)
        self.backends.append(b)
        return b

    def vip(self) -> tuple[str, int]:
        """A fresh loopback VIP (127.96.<cluster>.<n>) and a free port on it."""
        self._vips += 1
        vip = f"127.96.{self.index}.{self._vips}"
        return vip, free_port(vip)

    # -- API -------------------------------------------------------------------

    def put_service(self, name: str, vip: str, port: int, backends, cp: ControlPlane | None = None):
        svc = api_pb2.Service(name=name, frontends=[tcp_frontend(vip, port)],
                              backends=[backend_of(b) for b in backends])
        self.services.add(name)
        return (cp or self.cp).api.PutService(api_pb2.PutServiceRequest(service=svc), timeout=RPC_DEADLINE)

    def set_backends(self, name: str, backends, cp: ControlPlane | None = None):
        return (cp or self.cp).api.SetBackends(
            api_pb2.SetBackendsRequest(service=name, backends=[backend_of(b) for b in backends]),
            timeout=RPC_DEADLINE)

    def list_nodes(self, cp: ControlPlane | None = None) -> dict[str, api_pb2.Node]:
        r = (cp or self.cp).api.ListNodes(api_pb2.ListNodesRequest(), timeout=RPC_DEADLINE)
        return {n.name: n for n in r.nodes}

    def list_services(self, cp: ControlPlane | None = None) -> dict[str, api_pb2.Service]:
        r = (cp or self.cp).api.ListServices(api_pb2.ListServicesRequest(), timeout=RPC_DEADLINE)
        return {s.name: s for s in r.services}

    # -- waiting -----------------------------------------------------------------

    def node_status(self, nodes, version: int = 0, replica: str | None = None,
                    cp: ControlPlane | None = None) -> dict[str, str]:
        """What keeps each node from being "in sync": READY in ListNodes (through
        ``cp``) with applied_version >= version (and on ``replica`` if given),
        and its own agent reporting applied_version >= version. Empty when all are."""
        try:
            listed = self.list_nodes(cp)
        except grpc.RpcError as e:
            return {"ListNodes": f"{code_of(e)} {e.details()}"}
        out = {}
        for n in nodes:
            rec = listed.get(n.name)
            if rec is None:
                out[n.name] = "not listed"
                continue
            why = []
            if rec.health != api_pb2.NODE_HEALTH_READY:
                why.append(f"health {health_name(rec.health)} {rec.last_error}".strip())
            if rec.applied_version < version:
                why.append(f"listed applied_version {rec.applied_version} < {version}")
            if replica is not None and rec.replica != replica:
                why.append(f"on replica {rec.replica!r}, not {replica!r}")
            try:
                local = n.applied()
            except grpc.RpcError as e:
                why.append(f"admin socket: {code_of(e)} {e.details()}")
                local = version
            if local < version:
                why.append(f"agent applied_version {local} < {version}")
            if why:
                out[n.name] = "; ".join(why)
        return out

    def wait_nodes_ready(self, nodes, version: int = 0, replica: str | None = None,
                         cp: ControlPlane | None = None, timeout: float = SYNC_TIMEOUT) -> None:
        if replica is None and (cp or self.cp) is self.cp and all(n in self.nodes for n in nodes):
            replica = self.cp.replica
        last = {}

        def ok():
            nonlocal last
            last = self.node_status(nodes, version, replica, cp)
            return not last

        assert poll(ok, timeout, 0.3), f"nodes not in sync with version {version} after {timeout}s: {last}"

    def wait_applied(self, version: int, nodes=None, timeout: float = SYNC_TIMEOUT) -> None:
        """Both (or the given) nodes ACKed ``version`` (a write's resource_version)."""
        nodes = self.nodes if nodes is None else nodes
        self.wait_nodes_ready(nodes, version, replica=None, timeout=timeout)


def retry_unavailable(fn, timeout: float = SYNC_TIMEOUT, interval: float = 0.5):
    """fn() again while it fails with UNAVAILABLE (bounded); returns
    (result, attempts). Any other error, or UNAVAILABLE past the bound, is raised."""
    deadline = time.monotonic() + timeout
    attempts = 0
    while True:
        attempts += 1
        try:
            return fn(), attempts
        except grpc.RpcError as e:
            if code_of(e) != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        time.sleep(interval)


# -- traffic (clients are netenv.Client processes inside a node's cgroup)


def assert_reach_only(client, vip, port, backend, n=N, where=""):
    """n new connections through the VIP, each answered by ``backend``."""
    r = client.call("tcp_many", addr=vip, port=port, n=n)
    assert r["errors"] == {} and r["counts"] == {backend.label: n}, (where, r)
    # the client sees the VIP as its peer, not the backend
    assert r["peers"] == {netenv.peer(vip, port): n}, (where, r)


def loop_ok(client) -> int:
    return client.call("loop_status")["ok"]


def wait_progress(clients, by: int, timeout: float = 60.0) -> None:
    """Each client loop makes ``by`` more successful connections (bounded)."""
    start = [loop_ok(c) for c in clients]
    assert poll(lambda: all(loop_ok(c) >= s + by for c, s in zip(clients, start)), timeout), \
        [c.call("loop_status") for c in clients]


def start_all(nodes) -> None:
    """Start agents in parallel (each compiles its BPF programs)."""
    errors = []

    def one(n):
        try:
            n.start()
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def tail(text: str, lines: int = 80) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# faults: a link that can be cut, a disk that can be filled


class Link:
    """A TCP relay on 127.0.0.1 (in this process) between a node and its
    control plane: ``addr`` is what the node is given as its control plane.

    ``cut()`` blackholes the link: no byte goes through in either direction,
    neither on the open connections nor on new ones (they are accepted and
    then get nothing), so a node cannot tell it from a dead network until its
    keepalive gives up. ``heal()`` lets the held bytes through (a short
    partition: the connections live on); ``heal(reset=True)`` first drops every
    connection (a partition that outlived the keepalives: both ends see the
    stream die and the node connects again)."""

    def __init__(self, target: str):
        host, port = split_host_port(target)
        self.target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.connections = 0  # connections accepted so far
        threading.Thread(target=self._accept, name=f"link {self.addr}", daemon=True).start()

    def cut(self) -> None:
        self._open.clear()

    def heal(self, reset: bool = False) -> None:
        if reset:
            self._drop_all()
        self._open.set()

    def close(self) -> None:
        self._closed = True
        self._open.set()
        self._listener.close()
        self._drop_all()

    def _drop_all(self) -> None:
        with self._lock:
            socks, self._socks = self._socks, set()
        for s in socks:
            _drop(s)

    def _track(self, s: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._socks.add(s)
            return True

    def _wait_open(self) -> None:
        self._open.wait()
        if self._closed:
            raise OSError("link closed")

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        if not self._track(c):
            _drop(c)
            return
        try:
            self._wait_open()  # a cut link answers nothing, not even with the upstream's refusal
            u = socket.create_connection(self.target, timeout=5)
            u.settimeout(None)
        except OSError:
            _drop(c)
            return
        if not self._track(u):
            _drop(u)
            _drop(c)
            return
        threading.Thread(target=self._pipe, args=(u, c), daemon=True).start()
        self._pipe(c, u)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                self._wait_open()  # held while the link is cut
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        _drop(src)
        _drop(dst)


def _drop(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


class Tmpfs:
    """A tmpfs of ``size`` bytes at ``path`` (a disk that can be filled):
    ``fill()`` takes every free byte with a filler file, ``free()`` removes it,
    ``unmount()`` (lazily if busy) is safe to call more than once."""

    def __init__(self, path: Path, size: int):
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        netenv.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)])
        self.mounted = True
        self.filler = path / "filler"

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Write the filler until ENOSPC; returns the bytes it took."""
        written = 0
        with open(self.filler, "ab", buffering=0) as f:
            for chunk in (1 << 20, 4096):
                block = b"\0" * chunk
                try:
                    while True:
                        written += f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
        return written

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def unmount(self) -> None:
        if not self.mounted:
            return
        if netenv.run(["umount", str(self.path)], check=False).returncode != 0:
            netenv.run(["umount", "-l", str(self.path)])
        self.mounted = False


# --------------------------------------------------------------------------
# leftovers of killed runs

_NAME_RE = re.compile(rf"{netenv.PREFIX}-{KIND}-\d+-\d+")


def _stale(name: str) -> bool:
    return bool(_NAME_RE.fullmatch(name)) and netenv.stale(name)


def sweep_leftovers() -> None:
    """Remove what an earlier, killed run left: its processes (any whose command
    line names one of its paths), pins, cgroups, mounts and work dir. Only names
    ``socklb-test-endtoend-<pid>-<n>`` whose pid no longer runs."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
            env = (d / "environ").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        owner = [e.partition("=")[2] for e in env if e.startswith(OWNER_ENV + "=")]
        if any(_stale(m) for a in args for m in _NAME_RE.findall(a)) or any(_stale(o) for o in owner):
            try:
                os.kill(int(d.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    if netenv.BPFFS.is_dir():
        for p in netenv.BPFFS.iterdir():
            if _stale(p.name):
                netenv.run([sys.executable, "-m", "socklb.dataplane.cli", "detach", "--pin-dir", str(p)],
                           check=False, cwd=str(REPO))
                shutil.rmtree(p, ignore_errors=True)
    mount = netenv.cgroup2_mount()
    if mount is not None:
        for p in mount.iterdir():
            if p.is_dir() and _stale(p.name):
                if shutil.which("bpftool"):
                    for prog in netenv.cgroup_progs(p):
                        netenv.run(["bpftool", "cgroup", "detach", str(p), prog["attach_type"],
                                    "id", str(prog["id"])], check=False)
                try:
                    cg = netenv.TestCgroup.__new__(netenv.TestCgroup)
                    cg.mount, cg.name, cg.path = mount, p.name, p
                    cg.remove()
                except Exception:
                    pass
    tmp = Path(tempfile.gettempdir())
    with open("/proc/self/mounts") as f:  # a disk-full probe's tmpfs
        mounts = [line.split()[1] for line in f]
    for m in mounts:
        if m.startswith(f"{tmp}/") and any(_stale(n) for n in _NAME_RE.findall(m)):
            netenv.run(["umount", "-l", m], check=False)
    for p in tmp.glob(f"{netenv.PREFIX}-{KIND}-*"):
        if _stale(p.name):
            shutil.rmtree(p, ignore_errors=True)
