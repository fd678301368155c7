"""Harness for the kernel tests: test cgroups, network namespaces, backend
servers, client processes, the dataplane agent, and a binomial bound.

Everything here creates uniquely named objects (``socklb-test-<pid>-<n>``) and
knows how to remove them again; the fixtures in conftest.py make sure that
happens even when a test fails.

Safety rules:
- BPF is only attached to a cgroup created here, never to the root cgroup.
- Clients run inside that cgroup (``client.py`` joins it before it creates a
  single socket) and, for non-loopback VIPs, inside a namespace created here
  that has no default route.
"""

from __future__ import annotations

import errno
import itertools
import json
import math
import os
import re
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from support import free_port, in_ci

from socklb.dataplane import kernel
from socklb.dataplane import netns as dp_netns

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CLIENT = HERE / "client.py"

PREFIX = "socklb-test"
BPFFS = Path("/sys/fs/bpf")
NETNS_DIR = Path("/run/netns")

# Bounds that only keep a broken run from hanging forever; nothing asserts on them.
AGENT_READY_TIMEOUT = 120.0
RPC_TIMEOUT = 120.0
CMD_TIMEOUT = 120.0
READY = re.compile(r"\bready\b")

_counter = itertools.count()


def unique_name(kind: str = "") -> str:
    """socklb-test-<pid>-<n>: the pid lets a later run recognise leftovers."""
    mid = f"-{kind}" if kind else ""
    return f"{PREFIX}{mid}-{os.getpid()}-{next(_counter)}"


def factory(make, stop):
    """The body of a fixture that hands out ``make``: yields a function that
    calls make(*args, **kw) and remembers what it made, and stops each of
    those at the end even when the test failed. ``yield from factory(...)``."""
    made = []

    def make_one(*args, **kw):
        obj = make(*args, **kw)
        made.append(obj)
        return obj

    try:
        yield make_one
    finally:
        for obj in made:
            stop(obj)


# --------------------------------------------------------------------------
# Environment probes


def require(condition: bool, what: str) -> None:
    """Skip (developer machine) or fail (CI=true) when a prerequisite of a
    kernel test is missing. Every kernel test goes through this (the autouse
    fixture in conftest.py)."""
    if condition:
        return
    import pytest

    if in_ci():
        pytest.fail(f"kernel test prerequisite missing (CI=true, so not skipping): {what}", pytrace=False)
    pytest.skip(f"kernel test prerequisite missing: {what}")


def require_bpf_build_tools() -> None:
    """What building the socket iterator programs (termination, socket
    statistics) at run time takes."""
    require(shutil.which("clang") is not None or shutil.which("clang-14") is not None, "clang (scripts/setup.sh)")
    require(shutil.which("bpftool") is not None, "bpftool")


def cgroup2_mount() -> Path | None:
    """The cgroup2 mount point (the agent's kernel.cgroup2_mount), or None."""
    try:
        return kernel.cgroup2_mount()
    except OSError:
        return None


def ensure_bpffs() -> bool:
    """bpffs at BPFFS, mounted by the agent's kernel.ensure_bpffs if missing."""
    try:
        kernel.ensure_bpffs(BPFFS)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


def have_bcc() -> bool:
    import importlib.util

    return importlib.util.find_spec("bcc") is not None


def have_agent() -> bool:
    return (REPO / "socklb" / "dataplane" / "cli.py").is_file()


def own_cgroup(pid: int | str = "self") -> str:
    """The cgroup2 path (relative to the mount) of a process."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return ""


def run(cmd, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", CMD_TIMEOUT)
    r = subprocess.run(cmd, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{cmd!r} failed ({r.returncode}): {r.stdout}{r.stderr}")
    return r


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


_leftover_re = re.compile(rf"^{PREFIX}(?:-[a-z]+)?-(\d+)-\d+$")


def stale(name: str) -> bool:
    """A name of ours made by a process that no longer runs."""
    m = _leftover_re.match(name)
    return bool(m) and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1)))


# --------------------------------------------------------------------------
# cgroup


class TestCgroup:
    """A dedicated cgroup under the cgroup2 mount (or below another test
    cgroup: child()); removed with everything in it, cgroups below included."""

    __test__ = False  # not a pytest test class

    def __init__(self, mount: Path | None = None, name: str | None = None, parent: Path | None = None):
        self.mount = mount or cgroup2_mount()
        if self.mount is None:
            raise RuntimeError("no cgroup2 mount")
        self.name = name or unique_name()
        self.path = (parent or self.mount) / self.name
        if self.path.resolve() == self.mount.resolve():
            raise RuntimeError("refusing to use the root cgroup")
        self.path.mkdir()

    def child(self, name: str) -> "TestCgroup":
        """A cgroup below this one (removed with it)."""
        return TestCgroup(self.mount, name, parent=self.path)

    @property
    def rel(self) -> str:
        """The path relative to the cgroup2 mount, as /proc/<pid>/cgroup shows it."""
        return "/" + str(self.path.relative_to(self.mount))

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except FileNotFoundError:
            return []

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def remove(self) -> None:
        """Remove the cgroups below it, kill what is left inside, then rmdir
        (bounded retries)."""
        if not self.path.exists():
            return
        for sub in sorted((p for p in self.path.iterdir() if p.is_dir()), reverse=True):
            TestCgroup.__new__(TestCgroup)._adopt(self.mount, sub).remove()
        for _ in range(200):
            pids = self.pids()
            if not pids:
                break
            kill = self.path / "cgroup.kill"
            if kill.exists():
                try:
                    kill.write_text("1")
                except OSError:
                    pass
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _reap(pid)
            time.sleep(0.05)
        for _ in range(200):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    raise
                time.sleep(0.05)
        raise RuntimeError(f"cannot remove {self.path}: still busy ({self.pids()})")


    def _adopt(self, mount: Path, path: Path) -> "TestCgroup":
        """This object standing for an existing cgroup (to remove it):
        ``TestCgroup.__new__(TestCgroup)._adopt(mount, path)``."""
        self.mount, self.name, self.path = mount, path.name, path
        return self


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --------------------------------------------------------------------------
# network namespaces

class NetNS:
    """A named network namespace (``ip netns add``) with lo up and no routes
    other than the local ones: a packet that was not translated goes nowhere."""

    def __init__(self, name: str | None = None):
        self.name = name or unique_name("ns")
        run(["ip", "netns", "add", self.name])
        try:
            self.ip("link", "set", "lo", "up")
        except Exception:
            self.remove()
            raise

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def ip(self, *args: str) -> str:
        return run(["ip", "-n", self.name, *args]).stdout

    def has_default_route(self) -> bool:
        return bool(self.ip("-4", "route", "show", "default").strip()) or bool(
            self.ip("-6", "route", "show", "default").strip()
        )

    def entered(self):
        """Context manager: the calling thread is in this namespace inside it
        (the agent's netns.entered). Sockets created there stay in the
        namespace afterwards."""
        return dp_netns.entered(self.path)

    def pids(self) -> list[int]:
        r = run(["ip", "netns", "pids", self.name], check=False)
        return [int(x) for x in r.stdout.split()]

    def remove(self) -> None:
        if not self.path.exists():
            return
        for pid in self.pids():
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
        run(["ip", "netns", "del", self.name], check=False)


# --------------------------------------------------------------------------
# backends


class Backend(threading.Thread):
    """A TCP or UDP server answering each request with its name.

    TCP: one reply line ``<name>`` per line received, for as long as the
    connection is open. UDP: one datagram ``<name>`` back to the sender.
    """

    def __init__(self, name: str, addr: str, port: int = 0, proto: str = "tcp", netns: NetNS | None = None):
        super().__init__(name=f"backend-{name}", daemon=True)
        self.label = name
        self.proto = proto
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM

        def make():
            s = socket.socket(fam, kind)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
            if proto == "tcp":
                s.listen(512)
            s.setblocking(False)
            return s

        if netns is not None:
            with netns.entered():
                self.sock = make()
        else:
            self.sock = make()
        self.addr = addr
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.replied = 0  # UDP replies sent
        self.accepted = 0
        self._stop_r, self._stop_w = os.pipe()
        self._conns: dict[socket.socket, bytes] = {}
        self.start()

    def run(self):
        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, "listen")
        sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        reply = (self.label + "\n").encode()
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stop":
                        return
                    if key.data == "listen" and self.proto == "tcp":
                        try:
                            c, _ = self.sock.accept()
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            continue
                        self.accepted += 1
                        c.setblocking(False)
                        self._conns[c] = b""
                        sel.register(c, selectors.EVENT_READ, "conn")
                    elif key.data == "listen":
                        try:
                            data, peer = self.sock.recvfrom(65535)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            continue
                        self.requests += 1
                        try:
                            self.sock.sendto(self.label.encode(), peer)
                        except OSError:
                            pass
                        # On loopback a datagram is queued at the receiver (or
                        # dropped) by the time sendto returns: counted after it.
                        self.replied += 1
                    else:
                        c = key.fileobj
                        try:
                            data = c.recv(65535)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            data = b""
                        if not data:
                            sel.unregister(c)
                            self._conns.pop(c, None)
                            c.close()
                            continue
                        buf = self._conns[c] + data
                        n = buf.count(b"\n")
                        self._conns[c] = buf.rsplit(b"\n", 1)[-1] if n else buf
                        if n:
                            self.requests += n
                            try:
                                c.setblocking(True)
                                c.sendall(reply * n)
                                c.setblocking(False)
                            except OSError:
                                sel.unregister(c)
                                self._conns.pop(c, None)
                                c.close()
        finally:
            for c in list(self._conns):
                c.close()
            self._conns.clear()
            sel.close()
            self.sock.close()

    def stop(self):
        if self.is_alive():
            os.write(self._stop_w, b"x")
            self.join(10)
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass


# --------------------------------------------------------------------------
# clients


class ClientError(Exception):
    pass


class Client:
    """A ``client.py`` process: joins the cgroup (and netns) before it makes
    any socket, then runs JSON commands read line by line from stdin.

    extra: the source of a script that adds commands of its own to
    client.py (see client.py), run in its place. netns_exec: started with
    ``ip netns exec NAME`` instead, and moved into the cgroup by this class
    before it makes any socket."""

    def __init__(self, cgroup: TestCgroup | None = None, netns: NetNS | None = None,
                 extra: str | None = None, netns_exec: bool = False):
        cmd = [sys.executable, str(CLIENT)] if extra is None else [sys.executable, "-c", extra, str(HERE)]
        if netns_exec:
            cmd = ["ip", "netns", "exec", netns.name, *cmd, "--wait-go"]
        else:
            if cgroup is not None:
                cmd += ["--cgroup", str(cgroup.path)]
            if netns is not None:
                cmd += ["--netns", str(netns.path)]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        try:
            if netns_exec:
                cgroup.add(self._read()["pre"])
                self.proc.stdin.write("go\n")
                self.proc.stdin.flush()
            self.hello = self._read()
        except BaseException:
            self.close()
            raise
        if cgroup is not None and self.hello.get("cgroup") != cgroup.rel:
            self.close()
            raise ClientError(f"client is in cgroup {self.hello.get('cgroup')!r}, not {cgroup.rel!r}: {self.hello}")
        if cgroup is not None and self.hello.get("pid") not in cgroup.pids():
            self.close()
            raise ClientError(f"client pid not in the test cgroup: {self.hello}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, timeout: float = RPC_TIMEOUT) -> dict:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise ClientError(f"client did not answer within {timeout}s")
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise ClientError(f"client exited ({self.proc.poll()}): {err}")
        return json.loads(line)

    def call(self, op: str, timeout: float = RPC_TIMEOUT, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        res = self._read(timeout)
        if "exception" in res:
            raise ClientError(f"{op}: {res['exception']}")
        return res

    def close(self) -> None:
        stop_client(self.proc)


def stop_client(proc: subprocess.Popen) -> None:
    """Closing stdin is how a client process (client.py, udp_dns_client.py)
    is asked to exit; killed if it has not within 5 s."""
    if proc.poll() is None:
        try:
            proc.stdin.close()
        except OSError:
            pass
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    for f in (proc.stdout, proc.stderr):
        try:
            f.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# the agent


def bpftool_json(*args: str, check: bool = True):
    r = run(["bpftool", "-j", *args], check=check)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout) if r.stdout.strip() else None


def cgroup_progs(path: Path) -> list[dict]:
    """Programs attached to exactly this cgroup (not the inherited ones)."""
    return bpftool_json("cgroup", "show", str(path)) or []


def pinned_files(pin_dir: Path) -> list[str]:
    return sorted(
        str(p.relative_to(pin_dir)) for p in pin_dir.rglob("*") if not p.is_dir()
    )


def pinned_ids(pin_dir: Path) -> dict[str, tuple[str, int]]:
    """For each pinned file: ("map"|"link"|"prog", id)."""
    out = {}
    for rel in pinned_files(pin_dir):
        path = str(pin_dir / rel)
        for kind in ("map", "link", "prog"):
            info = bpftool_json(kind, "show", "pinned", path, check=False)
            if isinstance(info, dict) and "id" in info:
                out[rel] = (kind, info["id"])
                break
        else:
            out[rel] = ("?", -1)
    return out


class Agent:
    """``python -m socklb.dataplane.cli run`` on a test cgroup with its own
    pin dir, admin socket and state file."""

    def __init__(self, cgroup: TestCgroup, workdir: Path, state: dict, extra_args=()):
        self.cgroup = cgroup
        self.workdir = workdir
        self.pin_dir = BPFFS / unique_name()
        self.socket = workdir / "admin.sock"
        self.state_file = workdir / "state.yaml"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []
        self._log_lock = threading.Lock()
        self._ready = threading.Event()
        self.write_state(state)

    # -- process

    def cli(self, *args: str, check: bool = False, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
        return run(
            [sys.executable, "-m", "socklb.dataplane.cli", *args],
            check=check,
            cwd=str(REPO),
            timeout=timeout,
        )

    def start(self) -> "Agent":
        self._ready.clear()
        cmd = [
            sys.executable, "-m", "socklb.dataplane.cli", "run",
            "--state", str(self.state_file),
            "--cgroup", str(self.cgroup.path),
            "--pin-dir", str(self.pin_dir),
            "--admin-socket", str(self.socket),
            "--node", "test-node",
            *self.extra_args,
        ]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            cmd, cwd=str(REPO), env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        proc = self.proc
        threading.Thread(target=self._drain, args=(proc,), daemon=True).start()
        # Bounded wait for "ready" (or for the process to die).
        deadline = time.monotonic() + AGENT_READY_TIMEOUT
        while not self._ready.is_set():
            if proc.poll() is not None:
                time.sleep(0.2)  # let the drain thread collect the last lines
                raise RuntimeError(f"agent exited with {proc.returncode} before ready:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent not ready after {AGENT_READY_TIMEOUT}s:\n{self.log_text()}")
            self._ready.wait(0.1)
        return self

    def _drain(self, proc):
        for line in proc.stdout:
            with self._log_lock:
                self.log.append(line.rstrip("\n"))
            if READY.search(line) and proc is self.proc:
                self._ready.set()
        proc.stdout.close()

    def log_text(self, since: int = 0) -> str:
        with self._log_lock:
            return "\n".join(self.log[since:])

    def log_len(self) -> int:
        with self._log_lock:
            return len(self.log)

    def wait_log(self, pattern: str, since: int = 0, timeout: float = 60.0) -> str | None:
        """The first log line after ``since`` matching the regex, or None
        (bounded wait)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            with self._log_lock:
                for line in self.log[since:]:
                    if rx.search(line):
                        return line
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig) -> None:
        if self.running():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: pinned programs and maps stay."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def cleanup(self) -> list[str]:
        """Stop, ``detach``, then remove whatever is still there. Returns the
        problems found (an empty list when detach did its whole job)."""
        problems = []
        self.stop()
        if have_agent() and self.pin_dir.exists():
            r = self.cli("detach", "--pin-dir", str(self.pin_dir), "--cgroup", str(self.cgroup.path))
            if r.returncode != 0:
                problems.append(f"detach exited {r.returncode}: {r.stdout}{r.stderr}")
        if self.pin_dir.exists():
            left = pinned_files(self.pin_dir)
            if left:
                problems.append(f"detach left pins: {left}")
            shutil.rmtree(self.pin_dir, ignore_errors=True)
        if self.cgroup.path.exists() and shutil.which("bpftool"):
            progs = cgroup_progs(self.cgroup.path)
            if progs:
                problems.append(f"detach left programs on the cgroup: {progs}")
                for p in progs:
                    run(["bpftool", "cgroup", "detach", str(self.cgroup.path),
                         p["attach_type"], "id", str(p["id"])], check=False)
        try:
            self.socket.unlink()
        except FileNotFoundError:
            pass
        return problems

    # -- state and admin API

    def write_state(self, state: dict) -> None:
        """Atomically replace the state file (JSON is YAML)."""
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_file)

    def apply(self, state: dict) -> subprocess.CompletedProcess:
        path = self.workdir / f"apply-{next(_counter)}.yaml"
        path.write_text(json.dumps(state, indent=1))
        return self.cli("apply", "--admin-socket", str(self.socket), str(path))

    def dump(self, what: str) -> dict:
        r = self.cli("dump", what, "--admin-socket", str(self.socket), "-o", "json")
        if r.returncode != 0:
            raise RuntimeError(f"dump {what} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return json.loads(r.stdout) if r.stdout.strip() else {}

    def applied_version(self) -> int:
        return int(self.dump("info").get("appliedVersion", 0))

    def wait_version(self, version: int, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if self.applied_version() == version:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


# --------------------------------------------------------------------------
# desired state helpers


def service(name, frontends, backends, selection="SELECTION_RANDOM", affinity=0) -> dict:
    return {
        "name": name,
        "frontends": frontends,
        "backends": backends,
        "selection": selection,
        "affinity_timeout_seconds": affinity,
    }


def frontend(addr, port, proto="tcp") -> dict:
    return {"address": addr, "port": port, "protocol": "PROTOCOL_" + proto.upper()}


def backend(b: Backend | tuple, weight=1, state=None, port=None) -> dict:
    addr, bport = (b.addr, b.port) if isinstance(b, Backend) else b
    d = {"address": addr, "port": bport if port is None else port, "weight": weight}
    if state:
        d["state"] = "BACKEND_STATE_" + state.upper()
    return d


def node_state(version, *services) -> dict:
    return {"version": version, "services": list(services)}


def web_on_two_backends(agent, backends, vip: str) -> tuple[Agent, int]:
    """A started agent (the ``agent`` fixture) with one TCP service "web" at
    vip on a free port, over backends b0 and b1 (127.0.0.2, 127.0.0.3):
    (agent, port)."""
    bes = [backends(f"b{i}", f"127.0.0.{i + 2}") for i in range(2)]
    port = free_port(vip)
    return agent(node_state(1, service("web", [frontend(vip, port)], [backend(b) for b in bes]))), port


# --------------------------------------------------------------------------
# statistics


def _log_binom_pmf(n: int, k: int, p: float) -> float:
    return (
        math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        + k * math.log(p) + (n - k) * math.log1p(-p)
    )


def binom_tail_le(n: int, k: int, p: float) -> float:
    """P[X <= k] for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return min(1.0, sum(math.exp(_log_binom_pmf(n, i, p)) for i in range(0, k + 1)))


def binom_bounds(n: int, p: float, alpha: float = 1e-9) -> tuple[int, int]:
    """[lo, hi] such that P[X < lo] <= alpha/2 and P[X > hi] <= alpha/2."""
    if p <= 0:
        return 0, 0
    if p >= 1:
        return n, n
    lo = 0
    while lo < n and binom_tail_le(n, lo, p) <= alpha / 2:
        lo += 1
    # now P[X <= lo-1] <= alpha/2
    hi = n
    while hi > 0 and binom_tail_le(n, n - hi, 1 - p) <= alpha / 2:
        hi -= 1
    # P[X >= hi+1] = P[n-X <= n-hi-1] <= alpha/2
    return lo, hi


def tries_for(p_fail_each: float, alpha: float = 1e-9) -> int:
    """Smallest k with p_fail_each**k <= alpha."""
    return max(1, math.ceil(math.log(alpha) / math.log(p_fail_each)))


def assert_proportions(counts: dict, n: int, shares: dict, alpha: float = 1e-9) -> None:
    """Every answer came from one of ``shares`` (name -> expected probability)
    and each backend's count lies in its binomial bounds. alpha is the total
    false-failure probability (split over the backends, Bonferroni)."""
    assert sum(counts.values()) == n, counts
    assert set(counts) <= set(shares), f"unexpected backends: {counts}"
    for name, p in shares.items():
        lo, hi = binom_bounds(n, p, alpha / len(shares))
        got = counts.get(name, 0)
        assert lo <= got <= hi, (
            f"{name}: {got} of {n} answers, expected share {p:.3f}, "
            f"allowed [{lo}, {hi}] (false-failure probability {alpha:g}); all counts: {counts}"
        )


def poll(fn, timeout: float = 60.0, interval: float = 0.1):
    """fn() until it returns something truthy (bounded); returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)


def peer(addr: str, port: int) -> str:
    """How client.py reports an address: the JSON of [addr, port]."""
    return json.dumps([addr, port])


def stale_agent_pids() -> list[int]:
    """Agents started by an earlier run that died (their pin dir name is
    stale): ``socklb.dataplane.cli run ... --pin-dir /sys/fs/bpf/<stale>``."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "socklb.dataplane.cli" not in args or "--pin-dir" not in args:
            continue
        i = args.index("--pin-dir")
        if i + 1 < len(args) and stale(Path(args[i + 1]).name):
            out.append(int(d.name))
    return out
