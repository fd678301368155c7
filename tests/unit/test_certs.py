"""socklb-certs: the set a secure install starts with. Made for real (keys,
certificates, clients file), then used for real: a control plane serving
mTLS with them admits each identity in its role and nobody else, and the
Kubernetes way writes the same set as Secrets (against a local stand-in of
the API's two Secret endpoints: no cluster runs here)."""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from socklb import certs
from socklb import grpcauth
from socklb.controlplane import auth
from socklb.controlplane.server import ControlPlane
from socklb.controlplane.store import open_store
from socklb.v1 import api_pb2, api_pb2_grpc, sync_pb2, sync_pb2_grpc


def cert_of(d: Path, secret: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((d / secret / "tls.crt").read_bytes())


def test_init_makes_the_set_once_and_reissues_only_what_is_missing(tmp_path, capsys):
    d = tmp_path / "pki"
    assert certs.main(["init", str(d)]) == 0
    assert set(p.name for p in d.iterdir()) == {certs.CA, certs.CLIENTS, *(leaf.secret for leaf in certs.LEAVES)}
    assert (d / certs.CA / "ca.key").stat().st_mode & 0o077 == 0, "the CA key is private"
    assert (d / "socklb-node-tls" / "tls.key").stat().st_mode & 0o077 == 0
    ca = x509.load_pem_x509_certificate((d / certs.CA / "ca.crt").read_bytes())
    for leaf in certs.LEAVES:
        c = cert_of(d, leaf.secret)
        assert c.issuer == ca.subject
        assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == leaf.cn
        usages = set(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert (ExtendedKeyUsageOID.SERVER_AUTH in usages) == leaf.server, leaf
    first = {leaf.secret: cert_of(d, leaf.secret).serial_number for leaf in certs.LEAVES}
    capsys.readouterr()
    assert certs.main(["init", str(d)]) == 0
    assert "nothing created" in capsys.readouterr().out
    # A deleted certificate is re-issued by the same CA; the others are kept.
    for f in (d / "socklb-admin-tls").iterdir():
        f.unlink()
    (d / "socklb-admin-tls").rmdir()
    assert certs.main(["init", str(d)]) == 0
    assert capsys.readouterr().out.strip().endswith("created socklb-admin-tls")
    assert cert_of(d, "socklb-admin-tls").issuer == ca.subject
    assert cert_of(d, "socklb-admin-tls").serial_number != first["socklb-admin-tls"]
    assert all(cert_of(d, s).serial_number == n for s, n in first.items() if s != "socklb-admin-tls")


def test_bad_input_is_refused_clearly(tmp_path, capsys, monkeypatch):
    assert certs.main(["init", str(tmp_path / "a"), "--days", "0"]) == 2
    assert "--days" in capsys.readouterr().err
    (tmp_path / "b" / certs.CA).mkdir(parents=True)
    (tmp_path / "b" / certs.CA / "ca.crt").write_text("half a CA")
    assert certs.main(["init", str(tmp_path / "b")]) == 1
    assert "without ca.crt and ca.key" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "b").iterdir()] == [certs.CA], "nothing else written"
    assert certs.main(["issue", str(tmp_path / "none"), "node-1", "--cn", "node-1"]) == 1
    assert "no CA here" in capsys.readouterr().err
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert certs.main(["kubernetes"]) == 1  # outside a pod
    assert "KUBERNETES_SERVICE_HOST" in capsys.readouterr().err


def test_issue_signs_a_per_node_certificate(tmp_path):
    d = tmp_path / "pki"
    certs.main(["init", str(d)])
    assert certs.main(["issue", str(d), "node-7", "--cn", "node-7"]) == 0
    c = cert_of(d, "node-7")
    assert c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "node-7"
    assert certs.main(["issue", str(d), "node-7", "--cn", "node-7"]) == 1, "an existing one is not overwritten"


class Server:
    """A control plane serving mTLS with the set, as deploy/k8s runs it."""

    def __init__(self, tmp: Path, pki: Path, clients: Path):
        self.store = open_store(f"embedded://{tmp}/store")
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        tls = pki / "socklb-controlplane-tls"
        creds = auth.server_credentials(str(tls / "tls.crt"), str(tls / "tls.key"), str(tls / "ca.crt"))
        self.cp = ControlPlane(self.store, "secure", duty_interval=0.5)
        port = asyncio.run_coroutine_threadsafe(
            self.cp.start("127.0.0.1:0", creds, [auth.AuthInterceptor(auth.Clients.load(clients))]),
            self.loop).result(30)
        self.addr = f"127.0.0.1:{port}"

    def close(self):
        asyncio.run_coroutine_threadsafe(self.cp.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.store.close()


def channel(addr: str, pki: Path, who: str | None):
    d = pki / (who or certs.CA)
    creds = grpcauth.channel_credentials(str(d / "ca.crt"), str(d / "tls.crt") if who else None,
                                     str(d / "tls.key") if who else None)
    return grpc.secure_channel(addr, creds)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code()


def test_a_control_plane_with_the_set_admits_each_identity_in_its_role(tmp_path):
    pki = tmp_path / "pki"
    certs.main(["init", str(pki)])
    other = tmp_path / "other"  # a second, unrelated CA
    certs.main(["init", str(other)])
    srv = Server(tmp_path, pki, pki / certs.CLIENTS / "clients.yaml")
    svc = api_pb2.Service(name="web", frontends=[{"address": "127.96.0.10", "port": 80}],
                          backends=[{"address": "127.0.0.2", "port": 80}])
    put = api_pb2.PutServiceRequest(service=svc)
    try:
        with channel(srv.addr, pki, "socklb-admin-tls") as ch:
            api_pb2_grpc.LoadBalancerStub(ch).PutService(put, timeout=10)
        with channel(srv.addr, pki, "socklb-viewer-tls") as ch:
            api = api_pb2_grpc.LoadBalancerStub(ch)
            assert [s.name for s in api.ListServices(api_pb2.ListServicesRequest(), timeout=10).services] == ["web"]
            assert code_of(lambda: api.PutService(put, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        # The shared node identity syncs as any node, and may call nothing else.
        with channel(srv.addr, pki, "socklb-node-tls") as ch:
            stub = sync_pb2_grpc.NodeSyncStub(ch)
            for node in ("node-a", "node-b"):
                first = next(stub.Sync(iter([sync_pb2.NodeMessage(hello=sync_pb2.Hello(node=node))]), timeout=10))
                assert first.WhichOneof("msg") == "snapshot"
                assert [s.name for s in first.snapshot.services] == ["web"]
            api = api_pb2_grpc.LoadBalancerStub(ch)
            assert code_of(lambda: api.ListServices(api_pb2.ListServicesRequest(), timeout=10)) == \
                grpc.StatusCode.PERMISSION_DENIED
        # The servers' own certificates are no callers; no certificate, or one of another CA, cannot connect.
        with channel(srv.addr, pki, "socklb-etcd-tls") as ch:
            assert code_of(lambda: api_pb2_grpc.LoadBalancerStub(ch).ListServices(
                api_pb2.ListServicesRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        # Refused in the TLS handshake: the call fails when the handshake does (wait_for_ready is off),
        # so the long deadline only bounds a hang, and a slow handshake is no DEADLINE_EXCEEDED.
        with channel(srv.addr, pki, None) as ch:
            assert code_of(lambda: api_pb2_grpc.LoadBalancerStub(ch).ListServices(
                api_pb2.ListServicesRequest(), timeout=60, wait_for_ready=False)) == grpc.StatusCode.UNAVAILABLE
        creds = grpcauth.channel_credentials(str(pki / certs.CA / "ca.crt"), str(other / "socklb-admin-tls" / "tls.crt"),
                                         str(other / "socklb-admin-tls" / "tls.key"))
        with grpc.secure_channel(srv.addr, creds) as ch:
            assert code_of(lambda: api_pb2_grpc.LoadBalancerStub(ch).PutService(
                put, timeout=60, wait_for_ready=False)) == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.close()


def test_any_node_is_only_for_the_node_role(tmp_path):
    f = tmp_path / "clients.yaml"
    f.write_text("clients: [{name: x, role: read-write, cn: x, any_node: true}]")
    with pytest.raises(auth.ClientsFileError, match="any_node"):
        auth.Clients.load(f)
    f.write_text("clients: [{name: x, role: node, cn: x, any_node: 'yes'}]")
    with pytest.raises(auth.ClientsFileError, match="any_node"):
        auth.Clients.load(f)


class FakeApiServer:
    """The two calls socklb-certs makes to the Kubernetes API (GET and POST of
    a Secret in one namespace), kept in a dict; `deny` answers 403."""

    def __init__(self):
        self.secrets: dict[str, dict] = {}
        self.deny = False
        self.requests: list[tuple[str, str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                outer.requests.append(("GET", self.path, self.headers.get("Authorization")))
                if outer.deny:
                    return self._send(403, {"reason": "Forbidden"})
                name = self.path.rsplit("/", 1)[-1]
                if name in outer.secrets:
                    return self._send(200, outer.secrets[name])
                return self._send(404, {"reason": "NotFound"})

            def do_POST(self):
                outer.requests.append(("POST", self.path, self.headers.get("Authorization")))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                name = body["metadata"]["name"]
                if name in outer.secrets:
                    return self._send(409, {"reason": "AlreadyExists"})
                outer.secrets[name] = body
                return self._send(201, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_kubernetes_way_creates_the_same_set_as_secrets_once():
    api = FakeApiServer()
    try:
        kube = certs.KubeSecrets("socklb", server=api.url, token="sa-token")
        made = certs.ensure(kube, "socklb")
        assert set(made) == set(api.secrets) == {certs.CA, certs.CLIENTS, *(leaf.secret for leaf in certs.LEAVES)}
        assert all(path.startswith("/api/v1/namespaces/socklb/secrets") and auth_ == "Bearer sa-token"
                   for _, path, auth_ in api.requests)
        node = api.secrets["socklb-node-tls"]
        assert node["metadata"]["namespace"] == "socklb" and node["type"] == "Opaque"
        crt = x509.load_pem_x509_certificate(base64.b64decode(node["data"]["tls.crt"]))
        assert crt.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "socklb-node"
        # A second run (the Job re-applied) creates nothing; a deleted Secret is re-issued by the same CA.
        before = dict(api.secrets)
        assert certs.ensure(kube, "socklb") == []
        del api.secrets["socklb-viewer-tls"]
        assert certs.ensure(kube, "socklb") == ["socklb-viewer-tls"]
        assert api.secrets[certs.CA] == before[certs.CA]
        # The server names are the namespace's.
        ctl = x509.load_pem_x509_certificate(base64.b64decode(api.secrets["socklb-controlplane-tls"]["data"]["tls.crt"]))
        names = ctl.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
        assert "socklb-controlplane.socklb.svc" in names
        # Refused by the API: a clear error, nothing half made.
        api.deny = True
        with pytest.raises(certs.CertsError, match="HTTP 403"):
            certs.ensure(kube, "socklb")
    finally:
        api.close()


def test_the_set_verifies_as_tls_expects(tmp_path):
    """A real handshake with Python's TLS stack: the control-plane certificate
    is accepted for its Service name in the chosen namespace (and loopback),
    refused for another name; the server accepts the node's client certificate."""
    import socket
    d = tmp_path / "pki"
    certs.main(["init", str(d), "--namespace", "prod-lb"])
    srv_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(d / certs.CA / "ca.crt"))
    srv_ctx.load_cert_chain(d / "socklb-controlplane-tls" / "tls.crt", d / "socklb-controlplane-tls" / "tls.key")
    srv_ctx.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    peers = []

    def serve():
        for _ in range(3):
            conn, _ = listener.accept()
            try:
                with srv_ctx.wrap_socket(conn, server_side=True) as tls:
                    peers.append(tls.getpeercert()["subject"])
            except (ssl.SSLError, OSError):
                peers.append(None)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    node = d / "socklb-node-tls"
    for name, ok in (("socklb-controlplane.prod-lb.svc", True), ("127.0.0.1", True),
                     ("socklb-controlplane.socklb.svc", False)):
        ctx = ssl.create_default_context(cafile=str(node / "ca.crt"))
        ctx.load_cert_chain(node / "tls.crt", node / "tls.key")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            if ok:
                with ctx.wrap_socket(raw, server_hostname=name) as tls:
                    tls.recv(1)  # the server's handshake completes (and it closes)
            else:
                with pytest.raises(ssl.SSLCertVerificationError):
                    ctx.wrap_socket(raw, server_hostname=name)
    t.join(10)
    listener.close()
    assert ((("commonName", "socklb-node"),),) in peers
