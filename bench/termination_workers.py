"""Helper processes of bench/termination.py: accept-and-hold servers and
connection-holding clients. Standard library only (and the namespace
switch of socklb.dataplane.netns); each talks JSON lines on stdin/stdout (one answer
per command) and says {"ready": ...} first.

    python -m bench.termination_workers server SPEC.json
        SPEC: {"listeners": [[netns path or null, addr, port, tag], ...]}
        Listens on every (netns, addr, port); each accepted connection is sent
        one byte, its listener's tag (so the client knows which backend it
        reached), and held until the peer goes away (the server never reads
        data: a readable connection is a closed or reset one, and is closed).
        Commands: {"op": "stat"} -> {"held": n}; {"op": "quit"}.

    python -m bench.termination_workers client NETNS.json
        NETNS: a list of netns paths (index i = namespace i; index -1 = the
        process's own). The process must already be in the load-balanced
        cgroup (the parent puts it there before exec): every socket is
        created after that.
        {"op": "open", "addr", "port", "counts": {"<ns>": n}}
            n blocking connects to addr:port in namespace ns, each followed by
            reading the tag byte -> {"opened", "errors", "by_backend"}
        {"op": "reap"} close every connection that died (error/hang-up)
            -> {"dead": {"<ns>/<tag>": n}}
        {"op": "stat"} -> {"held", "by_backend", "cgroup"}
        {"op": "quit"}

Both raise RLIMIT_NOFILE to the hard limit first.
"""
from __future__ import annotations

import errno
import json
import os
import resource
import select
import socket
import sys

from socklb.dataplane.netns import Switch, open_netns


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def say(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def errname(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def own_cgroup() -> str:
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return ""


class NetnsSwitch:
    """Enter namespace i of paths (or go back to our own for -1) for the
    calling thread, through socklb.dataplane.netns."""

    def __init__(self, paths: list[str]):
        self.switch = Switch()
        self.nss = [open_netns([p])[0] for p in paths]  # one each, in order (a list would be deduplicated)
        self.cur = -1

    def enter(self, i: int) -> None:
        if i != self.cur:
            self.switch.enter(None if i < 0 else self.nss[i])
            self.cur = i


_LINGER0 = __import__("struct").pack("ii", 1, 0)


def abort(s: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0): no TIME_WAIT left behind for the
    next run's iterators and dumps to walk."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER0)
    except OSError:
        pass
    s.close()


# --- server ---------------------------------------------------------------------------

def server(spec_path: str) -> None:
    raise_nofile()
    spec = json.load(open(spec_path))
    paths = sorted({ns for ns, *_ in spec["listeners"] if ns})
    sw = NetnsSwitch(paths)
    index = {p: i for i, p in enumerate(paths)}
    ep = select.epoll()
    listeners: dict[int, tuple[socket.socket, bytes]] = {}
    for ns, addr, port, tag in spec["listeners"]:
        sw.enter(index[ns] if ns else -1)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(4096)
        s.setblocking(False)
        listeners[s.fileno()] = (s, bytes([tag]))
        ep.register(s.fileno(), select.EPOLLIN)
    sw.enter(-1)
    conns: dict[int, socket.socket] = {}
    stdin = sys.stdin.fileno()
    ep.register(stdin, select.EPOLLIN)
    say({"ready": True, "pid": os.getpid(), "listeners": len(listeners)})
    buf = b""
    while True:
        for fd, _ev in ep.poll(1.0, 1024):
            if fd in listeners:
                ls, tag = listeners[fd]
                while True:
                    try:
                        c, _ = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        break  # EMFILE, ECONNABORTED ...: the client will see it
                    try:
                        c.send(tag)
                    except OSError:
                        c.close()
                        continue
                    conns[c.fileno()] = c
                    ep.register(c.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
            elif fd == stdin:
                chunk = os.read(stdin, 65536)
                if not chunk:
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    cmd = json.loads(line)
                    if cmd["op"] == "stat":
                        say({"held": len(conns)})
                    elif cmd["op"] == "quit":
                        for c in list(conns.values()) + [ls for ls, _ in listeners.values()]:
                            abort(c)
                        say({"bye": True})
                        return
            else:
                c = conns.pop(fd, None)
                if c is not None:
                    ep.unregister(fd)
                    c.close()


# --- client ----------------------------------------------------------------------------

class Client:
    def __init__(self, paths: list[str]):
        self.sw = NetnsSwitch(paths)
        self.ep = select.epoll()
        self.conns: dict[int, tuple[socket.socket, int, int]] = {}  # fd -> (sock, ns, tag)

    def op_open(self, addr: str, port: int, counts: dict[str, int]) -> dict:
        opened, errors, by_backend = 0, {}, {}
        try:
            for ns_s, n in counts.items():
                ns = int(ns_s)
                self.sw.enter(ns)
                for _ in range(n):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.settimeout(20.0)  # a hang guard only
                    try:
                        s.connect((addr, port))
                        tag = s.recv(1)
                        if not tag:
                            raise ConnectionResetError(errno.ECONNRESET, "closed before the tag")
                    except OSError as e:
                        s.close()
                        errors[errname(e)] = errors.get(errname(e), 0) + 1
                        continue
                    fd = s.fileno()
                    self.conns[fd] = (s, ns, tag[0])
                    self.ep.register(fd, select.EPOLLRDHUP)  # + ERR, HUP, always reported
                    opened += 1
                    by_backend[tag[0]] = by_backend.get(tag[0], 0) + 1
        finally:
            self.sw.enter(-1)
        return {"opened": opened, "errors": errors, "by_backend": by_backend}

    def op_reap(self) -> dict:
        dead: dict[str, int] = {}
        while True:
            evs = self.ep.poll(0, 4096)
            if not evs:
                break
            for fd, _ev in evs:
                s, ns, tag = self.conns.pop(fd)
                self.ep.unregister(fd)
                s.close()
                k = f"{ns}/{tag}"
                dead[k] = dead.get(k, 0) + 1
        return {"dead": dead}

    def op_stat(self) -> dict:
        by_backend: dict[int, int] = {}
        for _s, _ns, tag in self.conns.values():
            by_backend[tag] = by_backend.get(tag, 0) + 1
        return {"held": len(self.conns), "by_backend": by_backend, "cgroup": own_cgroup()}


def client(netns_path: str) -> None:
    hard = raise_nofile()
    c = Client(json.load(open(netns_path)))
    say({"ready": True, "pid": os.getpid(), "cgroup": own_cgroup(), "nofile": hard})
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            for s, _ns, _tag in c.conns.values():
                abort(s)
            say({"bye": True})
            return
        try:
            say(getattr(c, f"op_{op}")(**cmd))
        except Exception as e:  # answer, so the parent never waits forever
            say({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](sys.argv[2])
