#!/usr/bin/env python3
"""Test client: joins a cgroup (and a network namespace) before it creates any
socket, then runs JSON commands, one per stdin line, answering one JSON line
each on stdout. Standard library only.

    client.py [--cgroup /sys/fs/cgroup/.../socklb-test-1-0] [--netns /run/netns/NAME] [--wait-go]

--wait-go: first output line {"pre": pid}, then nothing until a line on
stdin (a client started by `ip netns exec` is moved into the test cgroup
meanwhile). Then {"pid", "cgroup", "netns"}. Commands (``op``):

- tcp_many {addr, port, n, detail?, interval?}: n times connect, getpeername, send a line,
  read the backend's name, close. -> {counts, peers, errors, [conns]}
- tcp_open {id, addr, port}: a connection that stays open. -> {peer, backend}
- tcp_ping {id}: one more request on it. -> {backend} or {error}
- close {id}
- udp_sendto {addr, port, n}: unconnected socket, n times sendto + recvfrom.
  -> {counts, sources, errors}
- udp_connected {addr, port, n}: connect, getpeername, n times send/recv (and
  recvfrom, to see the source). -> {peer, counts, sources, errors}
- udp_reconnect {id, addr, port}: connect a udp_open socket again, one exchange.
  -> {peer, backend} or {error}
- connect_error {addr, port, proto}: -> {error} (null if it connected)
- udp_multi {targets: [[addr, port], ...], n}: one unconnected socket, n rounds
  of sendto/recvfrom to each target in turn.
- loop_start {addr, port, max, interval}: a thread doing tcp requests back to back.
- loop_status: -> {ok, failed, errors, counts}
- loop_stop: stops it and returns the final loop_status.
- cookies: -> {id: SO_COOKIE} of every open socket
- tcp_open_many {prefix, addr, port, n}: n connections kept as prefix0, prefix1, ...
  -> {opened, errors}
- close_many {prefix}: closes those.

A test's extra script (run with -c, this directory on sys.path) adds
commands of its own: it defines op_* functions and calls main(globals()).
"""

import argparse
import ctypes
import errno
import json
import os
import resource
import socket
import sys
import threading
import time

CLONE_NEWNET = 0x40000000
IO_TIMEOUT = 20.0  # a hang guard only
SO_COOKIE = getattr(socket, "SO_COOKIE", 57)


def join(cgroup, netns):
    # A copy of what socklb.dataplane.netns does (open, setns), on purpose:
    # this script is run by file path as a process of its own (also through
    # `ip netns exec`) and is kept standard library only, so that it runs
    # without the socklb package; udp_dns_client.py and the tests' EXTRA
    # scripts join through it too.
    if cgroup:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    if netns:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(netns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
        finally:
            os.close(fd)


def my_cgroup():
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return ""


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def errname(e):
    if isinstance(e, socket.timeout):
        return "TIMEOUT"
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def peer_str(p):
    return [p[0], p[1]]


def readline(s):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "closed by peer")
        buf += chunk
    return buf.decode().strip()


def connect(addr, port, kind=socket.SOCK_STREAM):
    """(socket, None) connected to (addr, port), or (None, error name); a
    socket that did not connect is closed."""
    s = socket.socket(family(addr), kind)
    s.settimeout(IO_TIMEOUT)
    try:
        s.connect((addr, port))
    except Exception as e:
        s.close()
        return None, errname(e)
    return s, None


class Counter(dict):
    def add(self, key):
        self[key] = self.get(key, 0) + 1


def tcp_request(addr, port):
    """One connection: returns (backend, peer, t_before, t_after_connect)."""
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    try:
        s.settimeout(IO_TIMEOUT)
        t0 = time.monotonic()
        s.connect((addr, port))
        t1 = time.monotonic()
        peer = s.getpeername()
        s.sendall(b"ping\n")
        return readline(s), peer_str(peer), t0, t1
    finally:
        s.close()


class Loop(threading.Thread):
    def __init__(self, addr, port, maximum, interval):
        super().__init__(daemon=True)
        self.addr, self.port, self.max, self.interval = addr, port, maximum, interval
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.errors = Counter()
        self.counts = Counter()

    def run(self):
        for _ in range(self.max):
            if self.stop_flag.is_set():
                break
            try:
                backend, _, _, _ = tcp_request(self.addr, self.port)
                with self.lock:
                    self.ok += 1
                    self.counts.add(backend)
            except Exception as e:
                with self.lock:
                    self.failed += 1
                    self.errors.add(errname(e))
            if self.interval:
                self.stop_flag.wait(self.interval)

    def status(self):
        with self.lock:
            return {
                "ok": self.ok,
                "failed": self.failed,
                "errors": dict(self.errors),
                "counts": dict(self.counts),
                "running": self.is_alive(),
            }


class Server:
    def __init__(self):
        self.socks = {}
        self.loop = None
        self.active = {}  # id -> state of a loop that an extra script's op runs on a socket

    def op_tcp_many(self, addr, port, n, detail=False, interval=0.0):
        counts, peers, errors, conns = Counter(), Counter(), Counter(), []
        for i in range(n):
            if interval and i:
                time.sleep(interval)
            try:
                backend, peer, t0, t1 = tcp_request(addr, port)
                counts.add(backend)
                peers.add(json.dumps(peer))
                if detail:
                    conns.append({"backend": backend, "t0": t0, "t1": t1})
            except Exception as e:
                errors.add(errname(e))
                if detail:
                    conns.append({"error": errname(e)})
        res = {"counts": counts, "peers": {k: v for k, v in peers.items()}, "errors": errors}
        if detail:
            res["conns"] = conns
        return res

    def op_tcp_open(self, id, addr, port):
        s, err = connect(addr, port)
        if err:
            return {"error": err}
        self.socks[id] = s
        peer = s.getpeername()
        s.sendall(b"ping\n")
        return {"peer": peer_str(peer), "backend": readline(s)}

    def op_tcp_ping(self, id):
        s = self.socks[id]
        try:
            s.sendall(b"ping\n")
            return {"backend": readline(s), "peer": peer_str(s.getpeername())}
        except Exception as e:
            return {"error": errname(e)}

    def op_udp_open(self, id, addr, port):
        """A connected UDP socket that stays open (one exchange to prove it works)."""
        s = socket.socket(family(addr), socket.SOCK_DGRAM)
        s.settimeout(IO_TIMEOUT)
        try:
            s.connect((addr, port))
            s.send(b"ping")
            data = s.recv(65535)
        except Exception as e:
            s.close()
            return {"error": errname(e)}
        self.socks[id] = s
        return {"peer": peer_str(s.getpeername()), "backend": data.decode()}

    def op_udp_reconnect(self, id, addr, port):
        """connect() a udp_open socket again, elsewhere, and exchange once."""
        s = self.socks[id]
        try:
            s.connect((addr, port))
            s.send(b"ping")
            return {"peer": peer_str(s.getpeername()), "backend": s.recv(65535).decode()}
        except Exception as e:
            return {"error": errname(e)}

    def op_udp_ping(self, id):
        """One more exchange on a connected UDP socket opened with udp_open."""
        s = self.socks[id]
        try:
            s.send(b"ping")
            return {"backend": s.recv(65535).decode(), "peer": peer_str(s.getpeername())}
        except Exception as e:
            return {"error": errname(e)}

    def op_close(self, id):
        s = self.socks.pop(id, None)
        if s:
            s.close()
        return {}

    def _udp_exchange(self, s, send, n):
        counts, sources, errors = Counter(), Counter(), Counter()
        for _ in range(n):
            try:
                send()
                data, src = s.recvfrom(65535)
                counts.add(data.decode())
                sources.add(json.dumps(peer_str(src)))
            except Exception as e:
                errors.add(errname(e))
        return counts, sources, errors

    def op_udp_sendto(self, addr, port, n):
        s = socket.socket(family(addr), socket.SOCK_DGRAM)
        s.settimeout(IO_TIMEOUT)
        try:
            counts, sources, errors = self._udp_exchange(
                s, lambda: s.sendto(b"ping", (addr, port)), n)
        finally:
            s.close()
        return {"counts": counts, "sources": sources, "errors": errors}

    def op_udp_multi(self, targets, n):
        """One unconnected socket talking to several addresses in turn:
        -> {replies: {"[addr, port]": {"<source>": {"<backend>": count}}}, errors}"""
        fam = family(targets[0][0])
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(IO_TIMEOUT)
        replies, errors = {}, Counter()
        try:
            for _ in range(n):
                for addr, port in targets:
                    try:
                        s.sendto(b"ping", (addr, port))
                        data, src = s.recvfrom(65535)
                        per = replies.setdefault(json.dumps([addr, port]), {})
                        Counter.add(per.setdefault(json.dumps(peer_str(src)), Counter()), data.decode())
                    except Exception as e:
                        errors.add(errname(e))
        finally:
            s.close()
        return {"replies": replies, "errors": errors}

    def op_udp_connected(self, addr, port, n):
        s = socket.socket(family(addr), socket.SOCK_DGRAM)
        s.settimeout(IO_TIMEOUT)
        try:
            try:
                s.connect((addr, port))
            except Exception as e:
                return {"error": errname(e)}
            peer = peer_str(s.getpeername())
            counts, sources, errors = self._udp_exchange(s, lambda: s.send(b"ping"), n)
            # plain recv() on the connected socket as well
            try:
                s.send(b"ping")
                counts.add(s.recv(65535).decode())
            except Exception as e:
                errors.add(errname(e))
        finally:
            s.close()
        return {"peer": peer, "counts": counts, "sources": sources, "errors": errors}

    def op_connect_error(self, addr, port, proto="tcp"):
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(family(addr), kind)
        s.settimeout(IO_TIMEOUT)
        try:
            s.connect((addr, port))
            if proto == "udp":
                # connect() of UDP does not talk to anyone; sending does
                s.send(b"ping")
            return {"error": None, "peer": peer_str(s.getpeername())}
        except Exception as e:
            return {"error": errname(e)}
        finally:
            s.close()

    def op_sendto_error(self, addr, port):
        s = socket.socket(family(addr), socket.SOCK_DGRAM)
        try:
            s.sendto(b"ping", (addr, port))
            return {"error": None}
        except Exception as e:
            return {"error": errname(e)}
        finally:
            s.close()

    def op_cookies(self):
        return {k: int.from_bytes(s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8), sys.byteorder)
                for k, s in self.socks.items()}

    def op_tcp_open_many(self, prefix, addr, port, n):
        # thousands of sockets: past the usual soft limit of open files
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        errors = Counter()
        for i in range(n):
            s, err = connect(addr, port)
            if err:
                errors.add(err)
                continue
            self.socks[f"{prefix}{i}"] = s
        return {"opened": n - sum(errors.values()), "errors": errors}

    def op_close_many(self, prefix):
        for k in [k for k in self.socks if k.startswith(prefix)]:
            self.socks.pop(k).close()
        return {}

    def op_loop_start(self, addr, port, max=100000, interval=0.0):
        self.loop = Loop(addr, port, max, interval)
        self.loop.start()
        return {}

    def op_loop_status(self):
        return self.loop.status()

    def op_loop_stop(self):
        self.loop.stop_flag.set()
        self.loop.join(IO_TIMEOUT * 2)
        return self.loop.status()


def main(extra=None):
    """extra: an extra script's globals(); its op_* functions become commands too."""
    for name, f in (extra or {}).items():
        if name.startswith("op_"):
            setattr(Server, name, f)
    ap = argparse.ArgumentParser()
    ap.add_argument("--cgroup")
    ap.add_argument("--netns")
    ap.add_argument("--wait-go", action="store_true")
    args = ap.parse_args()
    out = sys.stdout
    if args.wait_go:
        out.write(json.dumps({"pre": os.getpid()}) + "\n")
        out.flush()
        sys.stdin.readline()
    join(args.cgroup, args.netns)
    out.write(json.dumps({
        "pid": os.getpid(),
        "cgroup": my_cgroup(),
        "netns": os.readlink("/proc/self/ns/net"),
    }) + "\n")
    out.flush()
    srv = Server()
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        op = req.pop("op")
        try:
            res = getattr(srv, "op_" + op)(**req)
        except Exception as e:  # report, keep serving
            res = {"exception": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
