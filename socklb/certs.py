"""socklb-certs: the certificate authority, certificates and clients file a
secure deployment starts with, generated at install.

    socklb-certs init DIR            # compose, a single machine: DIR/<secret>/<file>
    socklb-certs kubernetes          # in the install Job: Secrets of the namespace
    socklb-certs issue DIR NAME --cn CN [--server-name NAME ...]

Both `init` and `kubernetes` write the same set (SECRETS below) through one
interface, and keep what already exists: re-running creates only what is
missing (delete a Secret or directory and re-run to re-issue it, signed by the
same CA). Identities, as the clients file names them:

    socklb-admin   read-write   operators and platform services (socklb CLI)
    socklb-viewer  read-only    health checks, dashboards
    socklb-node    node         every dataplane; may sync as any node name

Keys are ECDSA P-256; every certificate is signed by the one CA.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import os
import ssl
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from socklb.lb.addresses import join_host_port

CA = "socklb-ca"
CLIENTS = "socklb-clients"
DEFAULT_DAYS = 365
LABELS = {"app.kubernetes.io/name": "socklb", "app.kubernetes.io/component": "certs"}


@dataclass(frozen=True)
class Leaf:
    secret: str
    cn: str
    server: bool = False  # serverAuth too (with the subject alternative names)


LEAVES = [Leaf("socklb-controlplane-tls", "socklb-controlplane", server=True),  # also etcd's client
          Leaf("socklb-etcd-tls", "socklb-etcd", server=True),                 # also its peers' client
          Leaf("socklb-node-tls", "socklb-node"),
          Leaf("socklb-admin-tls", "socklb-admin"),
          Leaf("socklb-viewer-tls", "socklb-viewer")]


def server_names(cn: str, namespace: str, extra: list[str]) -> list[str]:
    """Where a server is reached: its Service (and, for a StatefulSet, each
    pod under the headless Service), the compose service name, loopback."""
    svc = f"{cn}.{namespace}.svc"
    return [cn, f"{cn}.{namespace}", svc, f"{svc}.cluster.local", f"*.{svc}", f"*.{svc}.cluster.local",
            "localhost", "127.0.0.1", "::1", *extra]


def clients_yaml() -> str:
    return ("# Who may call the control plane (socklb-certs). Add a caller: a certificate\n"
            "# CN signed by socklb-ca (socklb-certs issue), or a token of >= 16 characters.\n"
            + yaml.safe_dump({"clients": [
                {"name": "socklb-admin", "role": "read-write", "cn": "socklb-admin"},
                {"name": "socklb-viewer", "role": "read-only", "cn": "socklb-viewer"},
                {"name": "socklb-node", "role": "node", "cn": "socklb-node", "any_node": True},
            ]}, sort_keys=False))


# --- certificates (pure: bytes in, bytes out) --------------------------------

def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def new_ca(days: int) -> dict[str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "socklb-ca")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return {"ca.crt": cert.public_bytes(serialization.Encoding.PEM), "ca.key": _pem_key(key)}


def issue(ca: dict[str, bytes], cn: str, names: list[str] | None, days: int) -> dict[str, bytes]:
    """A certificate for `cn` signed by `ca`: a client certificate, and a
    server one too when `names` (its subject alternative names) are given."""
    ca_cert = x509.load_pem_x509_certificate(ca["ca.crt"])
    ca_key = serialization.load_pem_private_key(ca["ca.key"], password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if names else [])
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if names:
        b = b.add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    return {"ca.crt": ca["ca.crt"], "tls.crt": cert.public_bytes(serialization.Encoding.PEM),
            "tls.key": _pem_key(key)}


# --- where the set is kept ---------------------------------------------------

class Secrets(Protocol):
    def get(self, name: str) -> dict[str, bytes] | None: ...
    def create(self, name: str, data: dict[str, bytes]) -> None: ...


class CertsError(Exception):
    pass


class DirSecrets:
    """One directory per secret, one file per key. A directory appears whole
    (written aside, then renamed) so a crash never leaves half a secret."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def get(self, name: str) -> dict[str, bytes] | None:
        d = self.root / name
        if not d.is_dir():
            return None
        return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}

    def create(self, name: str, data: dict[str, bytes]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        for key, value in data.items():
            # Keys readable by the owner only; the rest by everyone (certificates).
            fd = os.open(tmp / key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if key.endswith(".key") else 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(value)
        tmp.chmod(0o755)
        try:
            tmp.rename(self.root / name)
        except OSError as e:
            raise CertsError(f"{self.root / name}: {e.strerror}") from None


class KubeSecrets:
    """Secrets of one namespace through the Kubernetes API, with the pod's
    service account (the install Job's: get and create Secrets, nothing else)."""

    SA = Path("/var/run/secrets/kubernetes.io/serviceaccount")

    def __init__(self, namespace: str, server: str | None = None, token: str | None = None,
                 context: ssl.SSLContext | None = None):
        if server is None:
            host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise CertsError("not in a Kubernetes pod (KUBERNETES_SERVICE_HOST unset): use `socklb-certs init DIR`")
            server = f"https://{join_host_port(host, port)}"
            token = (self.SA / "token").read_text().strip()
            context = ssl.create_default_context(cafile=str(self.SA / "ca.crt"))
        self.base = f"{server}/api/v1/namespaces/{namespace}/secrets"
        self.namespace = namespace
        self.token = token
        self.context = context

    def _call(self, method: str, url: str, body: dict | None = None) -> dict | None:
        req = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json", "Accept": "application/json",
                                              **({"Authorization": f"Bearer {self.token}"} if self.token else {})})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.context) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            if e.code in (404, 409):
                return None if e.code == 404 else {"conflict": True}
            raise CertsError(f"{method} {url}: HTTP {e.code}: {e.read()[:300]!r}") from None
        except OSError as e:
            raise CertsError(f"{method} {url}: {e}") from None

    def get(self, name: str) -> dict[str, bytes] | None:
        got = self._call("GET", f"{self.base}/{name}")
        return None if got is None else {k: base64.b64decode(v) for k, v in (got.get("data") or {}).items()}

    def create(self, name: str, data: dict[str, bytes]) -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": name, "namespace": self.namespace, "labels": LABELS},
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        got = self._call("POST", self.base, body)
        if got and got.get("conflict"):
            # Another run created it meanwhile: theirs is kept, which is what
            # `ensure` wants; a CA made here would be thrown away unused.
            raise CertsError(f"secret {name} was created concurrently: run again")


def ensure(secrets: Secrets, namespace: str = "socklb", days: int = DEFAULT_DAYS,
           extra_names: list[str] | None = None) -> list[str]:
    """Create what is missing of the set; return the names created."""
    made = []
    ca = secrets.get(CA)
    if ca is None:
        ca = new_ca(days * 10)
        secrets.create(CA, ca)
        made.append(CA)
    elif not {"ca.crt", "ca.key"} <= set(ca):
        raise CertsError(f"{CA} exists without ca.crt and ca.key: delete it to start a new CA")
    for leaf in LEAVES:
        if secrets.get(leaf.secret) is None:
            names = server_names(leaf.cn, namespace, extra_names or []) if leaf.server else None
            secrets.create(leaf.secret, issue(ca, leaf.cn, names, days))
            made.append(leaf.secret)
    if secrets.get(CLIENTS) is None:
        secrets.create(CLIENTS, {"clients.yaml": clients_yaml().encode()})
        made.append(CLIENTS)
    return made


# --- command line ------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="socklb-certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("init", "write the set into a directory (one subdirectory per secret)"),
                        ("kubernetes", "create the set as Secrets of the namespace (in-cluster)")):
        s = sub.add_parser(name, help=help_, allow_abbrev=False)
        if name == "init":
            s.add_argument("dir")
        s.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "socklb"),
                       help="Kubernetes namespace: the Secrets' and the server names' (default socklb)")
        s.add_argument("--days", type=int, default=DEFAULT_DAYS, help="validity of the certificates")
        s.add_argument("--server-name", action="append", default=[],
                       help="one more name or address of the servers (repeatable)")
    i = sub.add_parser("issue", help="one more client certificate (e.g. per node: --cn NODE) signed by DIR's CA",
                       allow_abbrev=False)
    i.add_argument("dir", help="a directory written by init (its socklb-ca is used)")
    i.add_argument("name", help="the new subdirectory")
    i.add_argument("--cn", required=True, help="the identity the clients file names (cn:)")
    i.add_argument("--server-name", action="append", default=[], help="also a server certificate for these names")
    i.add_argument("--days", type=int, default=DEFAULT_DAYS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.days <= 0:
        print("socklb-certs: --days must be > 0", file=sys.stderr)
        return 2
    try:
        if args.cmd == "issue":
            store = DirSecrets(args.dir)
            ca = store.get(CA)
            if ca is None or "ca.key" not in ca:
                raise CertsError(f"{args.dir}/{CA}: no CA here (run `socklb-certs init {args.dir}` first)")
            if store.get(args.name) is not None:
                raise CertsError(f"{args.dir}/{args.name} exists: remove it to re-issue")
            store.create(args.name, issue(ca, args.cn, args.server_name or None, args.days))
            print(f"{args.dir}/{args.name}: CN={args.cn}")
            return 0
        store = DirSecrets(args.dir) if args.cmd == "init" else KubeSecrets(args.namespace)
        made = ensure(store, args.namespace, args.days, args.server_name)
    except (CertsError, OSError) as e:
        print(f"socklb-certs: {e}", file=sys.stderr)
        return 1
    where = args.dir if args.cmd == "init" else f"namespace {args.namespace}"
    print(f"{where}: created {', '.join(made)}" if made else f"{where}: everything exists, nothing created")
    return 0


if __name__ == "__main__":
    sys.exit(main())
