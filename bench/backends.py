"""Backends in the backend namespace: nginx-light for TCP, udp_rr for UDP."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from bench.lab import (BACKEND_ADDR, Teardown, join_cgroup, log, netns_exec, run,
                       wait_until_listening)

NGINX_CONF = """\
# Written by bench/datapath.py for one run; nothing outside {root} is touched.
worker_processes {workers};
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    # A tiny static answer (the port that served it, so a probe can see the
    # spread over backends): the benchmark is about connection set-up, so
    # the server should do as little else as possible.
    server {{
{listens}
        location / {{
            return 200 "$server_port\\n";
        }}
    }}
}}
"""


def write_nginx_conf(root: Path, ports: list[int], workers: int) -> Path:
    root.mkdir(mode=0o755)
    # Wildcard listeners: every backend address of the namespace is served
    # by the same listening sockets, so no variant gets a different server.
    listens = "\n".join(f"        listen {p} backlog=4096;" for p in ports)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(root=root, listens=listens, workers=workers))
    return conf


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one child we started, by its pid; escalate to SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_nginx(ns: str, workdir: Path, ports: list[int], workers: int, cgroup: Path,
                cpus: set[int] | None, teardown: Teardown) -> subprocess.Popen:
    root = workdir / "nginx"
    conf = write_nginx_conf(root, ports, workers)
    # -e: nginx 1.22 opens its compiled-in error log before reading the
    # config; point that at our dir too.
    args = ["-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
    run(netns_exec(ns, ["nginx", "-t", "-q", *args]))
    cmd = netns_exec(ns, ["nginx", *args])
    # `ip netns exec` execs nginx, so this pid is the nginx master; with
    # daemon off it stays in the foreground and SIGQUIT ends it gracefully.
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=join_cgroup(cgroup, cpus),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    teardown.add("nginx", lambda: stop_process(proc, signal.SIGQUIT))
    wait_until_listening(ns, "tcp", ports)
    log(f"nginx (pid {proc.pid}, {workers} workers) on ports {ports}")
    return proc


def compile_c(src: Path, workdir: Path) -> Path:
    exe = workdir / src.stem
    run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src)])
    return exe


def start_udp_server(ns: str, exe: Path, ports: list[int], cgroup: Path, cpus: set[int] | None,
                     teardown: Teardown) -> subprocess.Popen:
    # Bound to one address, not the wildcard: an unconnected wildcard socket
    # would answer from the route's preferred source, not the address asked.
    cmd = netns_exec(ns, [str(exe), "server", BACKEND_ADDR, *map(str, ports)])
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, preexec_fn=join_cgroup(cgroup, cpus),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    teardown.add("udp server", lambda: stop_process(proc))
    wait_until_listening(ns, "udp", ports)
    log(f"udp_rr server (pid {proc.pid}) on {BACKEND_ADDR} ports {ports}")
    return proc
