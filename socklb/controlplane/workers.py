"""--workers N: node streams spread over N processes on one host.

One Python process serves its streams on one event loop under one GIL, so a
control-plane host converges no faster than one core lets it, however many
it has. With --workers N the process starts N-1 more copies of itself, each
a replica of its own (`<replica>-w<k>`: its own store connection and watch
of the configuration, its own snapshot cache, node registry and metrics),
all listening on the same port with SO_REUSEPORT: the kernel spreads the
nodes' connections (and the API calls) over them by their addresses' hash.
That is what several replicas already are, so nothing new has to be kept
consistent: a node is served by whichever worker its connection reached,
each worker writes its nodes' status under its own replica name, one of
them holds the leader duties.

Every worker opens the store itself, so the store must be one that several
processes share (etcd): the embedded store is one process's.
"""
from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys

from socklb.lb.addresses import split_host_port

log = logging.getLogger(__name__)


def check(workers: int, listen: str, store: str) -> str:
    """Why these flags cannot run `workers` processes ("" if they can)."""
    if workers < 1:
        return f"--workers {workers}: at least 1"
    if workers == 1:
        return ""
    if not store.startswith("etcd://"):
        return (f"--workers {workers}: every worker opens the store, and {store.split(':', 1)[0]}:// is one "
                "process's; use an etcd:// store")
    if listen.startswith("unix:"):
        return f"--workers {workers}: a unix socket cannot be shared; listen on HOST:PORT"
    _, port = split_host_port(listen)
    if port in (None, "0"):
        return f"--workers {workers}: the workers share one port; give it (not 0)"
    return ""


def worker_argv(argv: list[str], k: int, replica: str) -> list[str]:
    """The command line of worker k: the same flags, the last occurrence of
    each winning (argparse), as one worker that shares the port, under its
    own replica name and without the metrics port (the first process has it)."""
    return [sys.executable, "-m", "socklb.controlplane.server", *argv, "--workers", "1", "--reuse-port",
            "--replica-id", f"{replica}-w{k}", "--metrics-listen", ""]


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the first process dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], workers: int, replica: str) -> list[subprocess.Popen]:
    return [subprocess.Popen(worker_argv(argv, k, replica), preexec_fn=_die_with_parent)
            for k in range(1, workers)]


def stop(procs: list[subprocess.Popen], timeout: float = 10.0) -> None:
    """SIGTERM to every worker (they end their streams and flush), then wait."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("worker %d did not stop in %.0fs; killing it", p.pid, timeout)
            p.kill()
            p.wait()
