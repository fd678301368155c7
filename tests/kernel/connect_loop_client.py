"""Connect to ADDR PORT over TCP in a loop, each connection reading the one
byte the backend sends, until stdin closes; then print
{"ok": n, "failed": n, "errors": {message: count}}.

    python connect_loop_client.py ADDR PORT    (started inside a cgroup)

Used where a map update must never break a connect (make-before-break):
tests/kernel/test_kernel_map_batch.py and bench/snapshot_apply.py.
"""
import json
import select
import socket
import sys


def main() -> None:
    addr, port = sys.argv[1], int(sys.argv[2])
    ok = failed = 0
    errors: dict[str, int] = {}
    sys.stdout.write("started\n")
    sys.stdout.flush()
    while not select.select([sys.stdin], [], [], 0)[0]:
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
    main()
