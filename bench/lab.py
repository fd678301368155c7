"""The benchmark's private little network: two namespaces, a veth, cgroups.

Everything here is created under names that carry the benchmark's pid, is
registered with a Teardown as soon as it exists, and lives only inside
namespaces this process made. Nothing is ever sent from the root namespace.
"""

from __future__ import annotations

import atexit
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PREFIX = "socklb-bench-"

CLIENT_ADDR = "192.0.2.1"
BACKEND_ADDR = "192.0.2.2"
PREFIX_LEN = 24


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, check: bool = True, input: str | None = None,
        quiet: bool = False) -> subprocess.CompletedProcess:
    """Run a short command, capturing output so failures can be explained."""
    res = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"command failed ({res.returncode}): {' '.join(cmd)}\n"
                           f"{res.stderr.strip() or res.stdout.strip()}")
    if not quiet and res.returncode != 0:
        log(f"(ignored) {' '.join(cmd)}: {res.stderr.strip()}")
    return res


class Teardown:
    """A LIFO of clean-up steps that always runs to the end.

    Steps are registered right after the thing they undo exists, so a failure
    half-way through setup still undoes exactly what was made. One failing
    step is reported and the others still run. ``close`` is idempotent, so it
    can be called from ``finally``, ``atexit`` and a signal handler alike.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], None]]] = []

    def add(self, what: str, step: Callable[[], None]) -> None:
        self._steps.append((what, step))

    def close(self) -> None:
        while self._steps:
            what, step = self._steps.pop()
            try:
                step()
            except Exception as exc:  # keep going: the rest must still be undone
                log(f"cleanup of {what} failed: {exc}")


def install_exit_handlers(teardown: Teardown) -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so ``finally`` blocks run; atexit
    covers paths that skip them. SIGINT already raises KeyboardInterrupt."""
    atexit.register(teardown.close)

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit)


def run_stamp() -> tuple[str, str, float]:
    """What a report says of when its run began: the UTC date to the minute,
    the load average then, and the monotonic clock for the run's length."""
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M")
    return started, " ".join(f"{x:.2f}" for x in os.getloadavg()), time.monotonic()


def make_tempdir(teardown: Teardown) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
    # nginx workers run as nobody and must reach their files under it.
    path.chmod(0o755)
    teardown.add(f"temp dir {path}", lambda: shutil.rmtree(path, ignore_errors=True))
    return path


# --- network namespaces -----------------------------------------------------

@dataclass(frozen=True)
class Net:
    client_ns: str
    backend_ns: str
    client_if: str = "bc0"
    backend_if: str = "bb0"


def netns_exec(ns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def add_netns(name: str, teardown: Teardown) -> None:
    run(["ip", "netns", "add", name])
    teardown.add(f"netns {name}", lambda: delete_netns(name))
    run(netns_exec(name, ["ip", "link", "set", "lo", "up"]))


def delete_netns(name: str) -> None:
    """Stop what still runs in the namespace (only ever our own children: the
    namespace is ours), then delete it."""
    res = run(["ip", "netns", "pids", name], check=False, quiet=True)
    for pid in res.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    run(["ip", "netns", "del", name], check=False)


def build_net(teardown: Teardown, vip: str, extra_backend_addrs: list[str]) -> Net:
    """Client ns <-veth-> backend ns. The veth is created directly inside the
    two namespaces so it never exists in the root namespace, even briefly.
    The client ns gets only a /24 and a host route for the VIP (needed for the
    DNAT variants to route before NAT): no default route anywhere. The
    backend side gets BACKEND_ADDR plus extra_backend_addrs."""
    tag = f"{PREFIX}{os.getpid()}"
    net = Net(client_ns=f"{tag}-client", backend_ns=f"{tag}-backend")
    add_netns(net.client_ns, teardown)
    add_netns(net.backend_ns, teardown)
    run(["ip", "link", "add", "name", net.client_if, "netns", net.client_ns,
         "type", "veth", "peer", "name", net.backend_if, "netns", net.backend_ns])
    for ns, ifname, addr in ((net.client_ns, net.client_if, CLIENT_ADDR),
                             (net.backend_ns, net.backend_if, BACKEND_ADDR)):
        run(netns_exec(ns, ["ip", "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", ifname]))
        run(netns_exec(ns, ["ip", "link", "set", ifname, "up"]))
    for addr in extra_backend_addrs:
        run(netns_exec(net.backend_ns, ["ip", "addr", "add", f"{addr}/{PREFIX_LEN}",
                                        "dev", net.backend_if]))
    # Via the backend: if a VIP packet ever went untranslated it would reach
    # the backend ns, which does not own the VIP and drops it.
    run(netns_exec(net.client_ns, ["ip", "route", "add", f"{vip}/32", "via", BACKEND_ADDR]))
    tune_client_ns(net.client_ns)
    return net


def tune_client_ns(ns: str) -> None:
    """Hundreds of thousands of short connections per run: give the client
    the full ephemeral range and let it reuse TIME_WAIT ports, as a busy
    client node would. Applies to every variant alike."""
    run(netns_exec(ns, ["sysctl", "-q", "-w",
                        "net.ipv4.ip_local_port_range=1024 65535",
                        "net.ipv4.tcp_tw_reuse=1"]))


def wait_until_listening(ns: str, proto: str, ports: list[int], timeout: float = 10.0) -> None:
    flag = "-tln" if proto == "tcp" else "-uln"
    deadline = time.monotonic() + timeout
    while True:
        out = run(netns_exec(ns, ["ss", "-H", flag]), check=False, quiet=True).stdout
        if all(f":{port} " in out for port in ports):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proto} ports {ports} not listening in {ns}:\n{out}")
        time.sleep(0.05)


# --- cgroup v2 (its mount point: socklb.dataplane.kernel.cgroup2_mount) --------

def make_cgroup(path: Path, teardown: Teardown) -> Path:
    path.mkdir()
    teardown.add(f"cgroup {path}", lambda: remove_cgroup(path))
    return path


def remove_cgroup(path: Path) -> None:
    """Our clients have all exited by now, but a just-killed one may take a
    moment to leave; past that, rmdir's own error says why."""
    if not rmdir_cgroup(path, tries=50):
        path.rmdir()


def rmdir_cgroup(path: Path, tries: int) -> bool:
    """rmdir fails while a process is inside: tries every 0.1 s. True once the
    cgroup is gone."""
    for _ in range(tries):
        try:
            path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            time.sleep(0.1)
    return False


def join_cgroup(path: Path, cpus: set[int] | None = None) -> Callable[[], None]:
    """A preexec_fn: the child moves itself into the cgroup before it execs
    `ip netns exec`, so all its CPU time is accounted there and (for a
    client) the cgroup's BPF programs see it from its first syscall.
    Optionally pins the child to CPUs first."""
    procs = str(path / "cgroup.procs")

    def _join() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        with open(procs, "w") as f:
            f.write("0")

    return _join


def cgroup_cpu_usec(path: Path) -> int:
    """CPU time used by the cgroup's processes so far (cgroup v2 cpu.stat,
    present without any controller enabled)."""
    for line in (path / "cpu.stat").read_text().splitlines():
        key, value = line.split()
        if key == "usage_usec":
            return int(value)
    raise RuntimeError(f"no usage_usec in {path}/cpu.stat")


# --- leftovers of a run that was killed with SIGKILL ------------------------

def _pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _owner_pid(name: str) -> int | None:
    rest = name[len(PREFIX):]
    digits = rest.split("-", 1)[0]
    return int(digits) if digits.isdigit() else None


def processes_with_args(*args: str) -> list[int]:
    """Pids whose command line contains these exact consecutive arguments."""
    want = [a.encode() for a in args]
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(argv[i:i + len(want)] == want for i in range(len(argv))):
            pids.append(int(proc.name))
    return pids


def remove_stale(cgroup_root: Path, bpf_root: Path, detach: Callable[[Path, Path], None]) -> None:
    """Remove what a previous run made and could not clean because it was
    SIGKILLed: its agent, namespaces (with the servers inside), pins,
    cgroups and temp dir. Only names with our prefix whose owner pid is gone
    are touched; the agent is found by its exact --pin-dir argument."""
    res = run(["ip", "netns", "list"], check=False, quiet=True)
    for line in res.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = _owner_pid(name) if name.startswith(PREFIX) else None
        if pid is not None and not _pid_alive(pid):
            log(f"removing stale netns {name}")
            delete_netns(name)
    for pins in sorted(bpf_root.glob(f"{PREFIX}*")):
        pid = _owner_pid(pins.name)
        if pid is None or _pid_alive(pid):
            continue
        for agent_pid in processes_with_args("--pin-dir", str(pins)):
            log(f"stopping stale agent {agent_pid}")
            os.kill(agent_pid, signal.SIGKILL)
        log(f"detaching stale programs {pins}")
        # bench.datapath's extra agents pin at <prefix><pid>-base etc., for
        # the cgroup socklb-base etc.
        suffix = pins.name[len(f"{PREFIX}{pid}"):]
        detach(pins, cgroup_root / f"{PREFIX}{pid}" / f"socklb{suffix}")
        shutil.rmtree(pins, ignore_errors=True)
    for parent in sorted(cgroup_root.glob(f"{PREFIX}*")):
        pid = _owner_pid(parent.name)
        if pid is not None and not _pid_alive(pid) and parent.is_dir():
            log(f"removing stale cgroup {parent}")
            for child in parent.iterdir():
                if child.is_dir():
                    remove_cgroup(child)
            remove_cgroup(parent)
    for tmp in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid = _owner_pid(tmp.name)
        if pid is not None and not _pid_alive(pid) and tmp.is_dir():
            log(f"removing stale temp dir {tmp}")
            shutil.rmtree(tmp, ignore_errors=True)
