"""mTLS and tokens on the control plane: unauthenticated, wrong-role and
wrong-node callers are refused with the right status and change nothing;
certificates rotate by replacing the files."""
import asyncio
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from socklb import grpcauth
from socklb.controlplane import auth
from socklb.controlplane.server import ControlPlane
from socklb.controlplane.store import open_store
from socklb.v1 import api_pb2, api_pb2_grpc, sync_pb2, sync_pb2_grpc

RW_TOKEN = "rw-token-0123456789abcdef"
RO_TOKEN = "ro-token-0123456789abcdef"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "1", "-subj", f"/CN={name}", cwd=d)


def make_cert(d: Path, ca: str, name: str, cn: str, server: bool = False) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if server else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", ext.name, cwd=d)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_cert(d, "ca", "server", "localhost", server=True)
    for name in ("node-1", "ops", "stranger"):
        make_cert(d, "ca", name, name)
    make_ca(d, "ca2")
    make_cert(d, "ca2", "server2", "localhost", server=True)
    (d / "clients.yaml").write_text(f"""
clients:
  - {{name: ops, role: read-write, cn: ops}}
  - {{name: ops-token, role: read-write, token: {RW_TOKEN}}}
  - {{name: viewer, role: read-only, token: {RO_TOKEN}}}
  - {{name: node-1, role: node, cn: node-1}}
""")
    return d


class SecureServer:
    def __init__(self, tmp: Path, pki: Path):
        self.store = open_store(f"embedded://{tmp}/store")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        # The server's files live in their own directory so the rotation test can replace them.
        self.files = tmp / "tls"
        self.files.mkdir()
        for f in ("server.pem", "server.key", "ca.pem"):
            (self.files / f).write_bytes((pki / f).read_bytes())
        creds = auth.server_credentials(str(self.files / "server.pem"), str(self.files / "server.key"),
                                        str(self.files / "ca.pem"))
        interceptor = auth.AuthInterceptor(auth.Clients.load(pki / "clients.yaml"))
        self.cp = ControlPlane(self.store, "secure", duty_interval=0.5)
        self.port = asyncio.run_coroutine_threadsafe(
            self.cp.start("127.0.0.1:0", creds, [interceptor]), self.loop).result(30)
        self.addr = f"127.0.0.1:{self.port}"

    def close(self):
        asyncio.run_coroutine_threadsafe(self.cp.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.store.close()


@pytest.fixture
def server(tmp_path, pki):
    s = SecureServer(tmp_path, pki)
    yield s
    s.close()


def channel(server, pki, cert=None, ca="ca"):
    creds = grpcauth.channel_credentials(str(pki / f"{ca}.pem"), str(pki / f"{cert}.pem") if cert else None,
                                     str(pki / f"{cert}.key") if cert else None)
    return grpc.secure_channel(server.addr, creds)


def token(t):
    return (("authorization", f"Bearer {t}"),)


SVC = api_pb2.Service(name="s", frontends=[{"address": "127.96.0.10", "port": 80}],
                      backends=[{"address": "10.0.0.1", "port": 80}])


def code_of(call):
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def revision(server, pki):
    with channel(server, pki, "ops") as ch:
        return api_pb2_grpc.LoadBalancerStub(ch).ListServices(api_pb2.ListServicesRequest()).revision


def test_roles_and_credentials(server, pki):
    with channel(server, pki, "ops") as ch:
        api = api_pb2_grpc.LoadBalancerStub(ch)
        api.PutService(api_pb2.PutServiceRequest(service=SVC))  # read-write by certificate
    before = revision(server, pki)
    changed = api_pb2.PutServiceRequest(service=api_pb2.Service(name="s2", frontends=[{"address": "127.96.0.11",
                                                                                     "port": 80}]))
    # A certificate the clients file does not know, without a token: UNAUTHENTICATED.
    with channel(server, pki, "stranger") as ch:
        api = api_pb2_grpc.LoadBalancerStub(ch)
        assert code_of(lambda: api.PutService(changed)) == grpc.StatusCode.UNAUTHENTICATED
        assert code_of(lambda: api.GetService(api_pb2.GetServiceRequest(name="s"))) == \
            grpc.StatusCode.UNAUTHENTICATED
        # ... and a wrong token is no better.
        assert code_of(lambda: api.PutService(changed, metadata=token("x" * 24))) == grpc.StatusCode.UNAUTHENTICATED
        # Read-only: reads work, writes are PERMISSION_DENIED.
        assert api.GetService(api_pb2.GetServiceRequest(name="s"), metadata=token(RO_TOKEN)).name == "s"
        assert code_of(lambda: api.PutService(changed, metadata=token(RO_TOKEN))) == \
            grpc.StatusCode.PERMISSION_DENIED
        assert code_of(lambda: api.DeleteService(api_pb2.DeleteServiceRequest(name="s"),
                                                 metadata=token(RO_TOKEN))) == grpc.StatusCode.PERMISSION_DENIED
        # A node identity cannot use the API.
    with channel(server, pki, "node-1") as ch:
        api = api_pb2_grpc.LoadBalancerStub(ch)
        assert code_of(lambda: api.PutService(changed)) == grpc.StatusCode.PERMISSION_DENIED
    assert revision(server, pki) == before  # nothing changed
    # Read-write by token works.
    with channel(server, pki, "stranger") as ch:
        api_pb2_grpc.LoadBalancerStub(ch).PutService(changed, metadata=token(RW_TOKEN))
    assert revision(server, pki) > before


# A refusal in the TLS handshake fails the call as soon as the handshake fails
# (wait_for_ready is off): the deadline only bounds a hang, so a slow handshake
# on a busy machine still ends in UNAVAILABLE, never in DEADLINE_EXCEEDED.
REFUSAL_BOUND = 60


def test_client_certificate_is_required(server, pki):
    list_services = api_pb2.ListServicesRequest()
    with channel(server, pki, cert=None) as ch:
        api = api_pb2_grpc.LoadBalancerStub(ch)
        assert code_of(lambda: api.ListServices(list_services, metadata=token(RW_TOKEN), timeout=REFUSAL_BOUND,
                                                wait_for_ready=False)) == grpc.StatusCode.UNAVAILABLE
    # The same call with a certificate (one the clients file does not know: the token decides) is
    # served: what was refused above is the missing certificate, not the server or the token.
    with channel(server, pki, "stranger") as ch:
        api_pb2_grpc.LoadBalancerStub(ch).ListServices(list_services, metadata=token(RW_TOKEN), timeout=30)


def hello(node, kernel=""):
    return iter([sync_pb2.NodeMessage(hello=sync_pb2.Hello(node=node, kernel=kernel))])


def test_a_node_syncs_only_as_itself(server, pki):
    with channel(server, pki, "node-1") as ch:
        stub = sync_pb2_grpc.NodeSyncStub(ch)
        first = next(stub.Sync(hello("node-1")))  # its snapshot
        assert first.WhichOneof("msg") == "snapshot"
        with pytest.raises(grpc.RpcError) as e:
            list(stub.Sync(hello("node-2")))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "node-1" in e.value.details()
    with channel(server, pki, "ops") as ch:  # an operator is not a node
        with pytest.raises(grpc.RpcError) as e:
            list(sync_pb2_grpc.NodeSyncStub(ch).Sync(hello("node-1", kernel="as ops")))
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # node-1 says hello once more, with a mark, after the refused ones. Node records are written in
    # batches of everything connected until then, so once the marked record is listed, a record of
    # node-2 (or of ops' hello) would be listed too had either been let in.
    with channel(server, pki, "node-1") as ch:
        again = next(sync_pb2_grpc.NodeSyncStub(ch).Sync(hello("node-1", kernel="after the refusals")))
        assert again.WhichOneof("msg") == "snapshot"
    with channel(server, pki, "ops") as ch:
        api = api_pb2_grpc.LoadBalancerStub(ch)
        end = time.monotonic() + 30
        while not any(n.kernel == "after the refusals" for n in api.ListNodes(api_pb2.ListNodesRequest()).nodes):
            assert time.monotonic() < end, "node-1's second hello was never recorded"
            time.sleep(0.05)
        (node,) = api.ListNodes(api_pb2.ListNodesRequest()).nodes
        assert node.name == "node-1" and node.kernel == "after the refusals"


def test_health_is_open_and_certificates_rotate(server, pki):
    # Health answers a caller the clients file does not know, on the very channel where that
    # caller's API call is UNAUTHENTICATED: no authentication is applied to Health.
    with channel(server, pki, "stranger") as ch:
        assert code_of(lambda: api_pb2_grpc.LoadBalancerStub(ch).ListServices(
            api_pb2.ListServicesRequest())) == grpc.StatusCode.UNAUTHENTICATED
        h = health_pb2_grpc.HealthStub(ch)
        assert h.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    # Replace the server's certificate with one from another CA: new connections
    # must present it (clients of the old CA fail, of the new CA succeed).
    for src, dst in (("server2.pem", "server.pem"), ("server2.key", "server.key")):
        (server.files / dst).write_bytes((pki / src).read_bytes())
    # A handshake that met the pair half-written (new certificate, old key) fails; the next one
    # reads both files again.
    end = time.monotonic() + 60
    while True:
        with channel(server, pki, "ops", ca="ca2") as ch:
            try:
                api_pb2_grpc.LoadBalancerStub(ch).ListServices(api_pb2.ListServicesRequest(), timeout=REFUSAL_BOUND,
                                                               wait_for_ready=False)
                break
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                assert time.monotonic() < end, f"the rotated certificate was not served: {e.details()}"
                time.sleep(0.2)
    with channel(server, pki, "ops", ca="ca") as ch:
        with pytest.raises(grpc.RpcError) as e:
            api_pb2_grpc.LoadBalancerStub(ch).ListServices(api_pb2.ListServicesRequest(), timeout=REFUSAL_BOUND,
                                                           wait_for_ready=False)
        # Refused by the client's check of the server's certificate, not by a deadline.
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "CERTIFICATE_VERIFY_FAILED" in e.value.details()


def test_clients_file_errors_are_clear(tmp_path):
    bad = tmp_path / "c.yaml"
    for text, problem in (("clients: 3", "`clients` list"), ("clients: [{name: a, role: admin, token: x}]", "role"),
                          ("clients: [{name: a, role: node}]", "token"),
                          ("clients: [{name: a, role: node, token: short}]", "16 characters")):
        bad.write_text(text)
        with pytest.raises(auth.ClientsFileError, match=problem):
            auth.Clients.load(bad)
