"""The control plane refuses to start where it would answer next to another
one (a port already taken: gRPC's SO_REUSEPORT would share it) or on a port
that does not exist, with a clear error and a non-zero exit; the running one
keeps serving alone."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from support import free_port

from socklb.v1 import api_pb2, api_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
CP = [sys.executable, "-m", "socklb.controlplane.server"]


def run_cp(tmp_path: Path, name: str, listen: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*CP, "--listen", listen, "--store", f"embedded://{tmp_path / name}"], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def start_cp(tmp_path: Path, name: str) -> tuple[subprocess.Popen, int, grpc.Channel]:
    """A control plane on a free loopback port, once it answers: (process, port, channel)."""
    port = free_port()
    proc = subprocess.Popen([*CP, "--listen", f"127.0.0.1:{port}", "--store", f"embedded://{tmp_path / name}"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=60)
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise
    return proc, port, channel


def test_a_second_control_plane_on_a_taken_port_refuses(tmp_path):
    first, port, channel = start_cp(tmp_path, "a")
    try:
        api = api_pb2_grpc.LoadBalancerStub(channel)
        api.PutService(api_pb2.PutServiceRequest(service=api_pb2.Service(
            name="only-in-a", frontends=[{"address": "127.96.0.10", "port": 80}])), timeout=30)

        second = run_cp(tmp_path, "b", f"127.0.0.1:{port}")
        assert second.returncode != 0, second.stderr
        assert f"cannot listen on 127.0.0.1:{port}: the address is in use" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        # Every call reaches the first one's store.
        for _ in range(12):
            names = [s.name for s in api.ListServices(api_pb2.ListServicesRequest(), timeout=30).services]
            assert names == ["only-in-a"]
        channel.close()
    finally:
        first.terminate()
        first.wait(30)


@pytest.mark.parametrize("listen,why", [
    ("127.0.0.1:99999", "port 99999 is out of range (0..65535)"),
    ("127.0.0.1:65536", "port 65536 is out of range (0..65535)"),
    ("127.0.0.1", "expected HOST:PORT"),
    ("127.0.0.1:http", "expected HOST:PORT"),
])
def test_a_listen_address_that_does_not_exist_is_refused(tmp_path, listen, why):
    r = run_cp(tmp_path, "s", listen)
    assert r.returncode == 2, r.stderr
    assert why in r.stderr, r.stderr
    assert not (tmp_path / "s").exists()  # refused before the store was opened


def test_serving_beyond_loopback_unauthenticated_is_refused_unless_asked(tmp_path):
    """Secure by default: a --listen other nodes can reach, with no clients
    file, would let any of them change every service. Refused before the
    store is opened; allowed with --allow-unauthenticated or a clients file."""
    refused = run_cp(tmp_path, "open", "0.0.0.0:0")
    assert refused.returncode == 2, refused.stderr
    assert "--listen 0.0.0.0:0: refusing to serve beyond loopback without --clients-file" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (tmp_path / "open").exists(), "nothing was created"
    from socklb.controlplane import server
    for listen, args, ok in (("[::]:7400", [], False), ("10.1.2.3:7400", [], False), ("node-1:7400", [], False),
                             ("127.0.0.2:7400", [], True), ("[::1]:7400", [], True), ("localhost:7400", [], True),
                             ("unix:/run/socklb.sock", [], True),
                             ("0.0.0.0:7400", ["--allow-unauthenticated"], True)):
        ns = server.build_parser().parse_args(["--listen", listen, *args])
        if ok:
            server.security(ns)
        else:
            with pytest.raises(ValueError, match="refusing to serve beyond loopback"):
                server.security(ns)
    clients = tmp_path / "clients.yaml"
    clients.write_text("clients: [{name: ops, role: read-write, token: 0123456789abcdef0123}]")
    ns = server.build_parser().parse_args(["--listen", "0.0.0.0:7400", "--clients-file", str(clients)])
    creds, interceptors = server.security(ns)
    assert creds is None and len(interceptors) == 1


def test_sigterm_with_node_streams_open_ends_them_cleanly(tmp_path):
    """Stopping a control plane ends its node streams normally (OK, the node
    reconnects elsewhere), without a cancelled-handler traceback per node."""
    from socklb.v1 import sync_pb2, sync_pb2_grpc

    cp, _, channel = start_cp(tmp_path, "s")
    try:
        streams, hang_up = [], threading.Event()

        def requests(node):  # a node that keeps its side open until the test ends
            yield sync_pb2.NodeMessage(hello=sync_pb2.Hello(node=node))
            hang_up.wait(60)

        for node in ("n1", "n2"):
            s = sync_pb2_grpc.NodeSyncStub(channel).Sync(requests(node), timeout=60)
            assert next(s).WhichOneof("msg") == "snapshot"
            streams.append(s)
        cp.terminate()
        for s in streams:
            rest = list(s)  # ends: normally, not with an error
            assert rest == [] and s.code() == grpc.StatusCode.OK, (rest, s.code(), s.details())
        out, _ = cp.communicate(timeout=30)
        assert cp.returncode == 0, out
        assert "Traceback" not in out and "Exception not handled" not in out, out
        channel.close()
    finally:
        hang_up.set()
        if cp.poll() is None:
            cp.kill()
            cp.wait(10)
