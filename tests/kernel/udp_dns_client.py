#!/usr/bin/env python3
"""A DNS-like test client: one connected UDP socket to a VIP, a query every
``--interval`` seconds, the reply read back (it names the backend). On any
error (send, recv, connect, or a recv timeout) the socket is closed and a
new one is connected to the VIP at once, the way a resolver retries.

Joins the cgroup (and network namespace) before it creates any socket, like
client.py. Standard library only. Runs until stdin is closed.

    udp_dns_client.py --addr VIP --port 53 [--cgroup DIR] [--netns PATH]
                      [--interval 0.1] [--timeout 5]

Every event is one JSON line on stdout, with ``t`` = time.monotonic() of
this process (CLOCK_MONOTONIC, comparable with the test's own clock):

    {"ev": "hello", "pid", "cgroup", "netns"}
    {"ev": "connect", "t", "conn", "peer"}              conn: 0, 1, 2, ...
    {"ev": "reply", "t", "conn", "seq", "backend", "src", "rtt"}
    {"ev": "error", "t", "conn", "seq", "op", "error"}  op: connect|send|recv
    {"ev": "stopped", "t"}
"""

import argparse
import json
import os
import socket
import sys
import threading
import time

import client  # same directory: join(), errname(), family()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cgroup")
    ap.add_argument("--netns")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args()
    client.join(args.cgroup, args.netns)

    out_lock = threading.Lock()

    def emit(ev, **kw):
        line = json.dumps({"ev": ev, "t": time.monotonic(), **kw})
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    emit("hello", pid=os.getpid(), cgroup=client.my_cgroup(), netns=os.readlink("/proc/self/ns/net"))

    stop = threading.Event()

    def watch_stdin():
        for _ in sys.stdin:
            pass
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()

    sock = None
    conn = -1
    seq = 0
    next_at = time.monotonic()
    while not stop.is_set():
        if sock is None:
            conn += 1
            sock = socket.socket(client.family(args.addr), socket.SOCK_DGRAM)
            sock.settimeout(args.timeout)
            try:
                sock.connect((args.addr, args.port))
                emit("connect", conn=conn, peer=client.peer_str(sock.getpeername()))
            except OSError as e:
                emit("error", conn=conn, seq=seq, op="connect", error=client.errname(e))
                sock.close()
                sock = None
                stop.wait(args.interval)  # a refused connect would otherwise spin
                continue
        seq += 1
        op = "send"
        t0 = time.monotonic()
        try:
            sock.send(b"q%d" % seq)
            op = "recv"
            data, src = sock.recvfrom(512)
            emit("reply", conn=conn, seq=seq, backend=data.decode(), src=client.peer_str(src),
                 rtt=time.monotonic() - t0)
        except OSError as e:  # socket.timeout is an OSError too
            emit("error", conn=conn, seq=seq, op=op, error=client.errname(e))
            sock.close()
            sock = None
            continue  # reconnect and ask again at once
        next_at = max(next_at + args.interval, time.monotonic())
        stop.wait(max(0.0, next_at - time.monotonic()))
    if sock is not None:
        sock.close()
    emit("stopped")


if __name__ == "__main__":
    main()
