"""A TCP connect loop and the loopback server it connects to, as processes
of their own (so neither takes CPU or the GIL from the process applying a
state):

    python connect_loop.py serve            prints its port, then accepts on
                                            127.0.0.1, sending one byte per
                                            connection, until killed
    python connect_loop.py connect ADDR PORT [INTERVAL]
                                            prints "started", then connects
                                            (and reads the byte) every INTERVAL
                                            seconds (default: back to back)
                                            until stdin closes; then prints
                                            {"ok": n, "failed": n, "errors": {message: count}}

Used where a map update must never break a connect (make-before-break):
tests/kernel/test_kernel_map_batch.py and bench/snapshot_worker.py (the
client started inside the cgroup).
"""
import json
import select
import socket
import sys


def serve() -> None:
    srv = socket.create_server(("127.0.0.1", 0), backlog=4096)
    print(srv.getsockname()[1], flush=True)
    while True:
        c, _ = srv.accept()
        try:
            c.send(b"x")
        except OSError:
            pass
        c.close()


def connect(addr: str, port: int, interval: float) -> None:
    ok = failed = 0
    errors: dict[str, int] = {}
    print("started", flush=True)
    while not select.select([sys.stdin], [], [], interval)[0]:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((addr, port))
            if s.recv(1) != b"x":
                raise OSError("no byte from the backend")
            ok += 1
        except OSError as e:
            failed += 1
            errors[str(e)] = errors.get(str(e), 0) + 1
        finally:
            s.close()
    print(json.dumps({"ok": ok, "failed": failed, "errors": errors}))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve()
    else:
        connect(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
