"""Fixtures of the integration tests: a REAL etcd (Debian's etcd-server,
/usr/bin/etcd) on 127.0.0.1 with free ports and a temporary data directory,
stopped and removed afterwards; and a TCP proxy that can cut connections.

etcd missing: the tests FAIL when CI=true (CI must never go green by
skipping) and are skipped otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from support import free_ports, in_ci

ETCD = os.environ.get("SOCKLB_TEST_ETCD", "/usr/bin/etcd")


class EtcdServer:
    """One single-member etcd. start()/stop() may be repeated: the data dir and
    the ports stay the same, so a restart is the same member with its data.
    With `tls` (a directory written by `socklb-certs init`): clients and peers
    speak TLS with socklb-etcd-tls, and clients must present a certificate of
    the same CA (--client-cert-auth), as deploy/k8s/etcd.yaml runs it."""

    def __init__(self, binary: str, tls: Path | None = None):
        self.binary = binary
        self.tls = Path(tls) / "socklb-etcd-tls" if tls else None
        self.dir = Path(tempfile.mkdtemp(prefix="socklb-etcd-"))
        self.data_dir = self.dir / "data"
        self.log_path = self.dir / "etcd.log"
        self.client_port, self.peer_port = free_ports(2)
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def url(self) -> str:
        return f"etcd://{self.endpoint}"

    def _cmd(self) -> list[str]:
        scheme = "https" if self.tls else "http"
        client = f"{scheme}://127.0.0.1:{self.client_port}"
        peer = f"{scheme}://127.0.0.1:{self.peer_port}"
        tls = [] if not self.tls else [
            f"--cert-file={self.tls}/tls.crt", f"--key-file={self.tls}/tls.key",
            f"--trusted-ca-file={self.tls}/ca.crt", "--client-cert-auth",
            f"--peer-cert-file={self.tls}/tls.crt", f"--peer-key-file={self.tls}/tls.key",
            f"--peer-trusted-ca-file={self.tls}/ca.crt", "--peer-client-cert-auth"]
        return [self.binary, *tls, "--name", "test", "--data-dir", str(self.data_dir),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"test={peer}", "--initial-cluster-state", "new",
                # fast elections: a single member is ready sooner, and leases
                # as short as 1 s are allowed (minimum TTL = 1.5 election timeouts)
                "--heartbeat-interval", "50", "--election-timeout", "500"]

    def _healthy(self) -> bool:
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.tls / "ca.crt"))
            ctx.load_cert_chain(self.tls / "tls.crt", self.tls / "tls.key")
        try:
            with urllib.request.urlopen(f"{'https' if self.tls else 'http'}://{self.endpoint}/health", timeout=0.5,
                                        context=ctx) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def start(self, timeout: float = 20.0) -> None:
        assert self.proc is None, "already running"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self._cmd(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd did not become healthy on {self.endpoint}; log:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def etcd_binary() -> str:
    if not (os.path.isfile(ETCD) and os.access(ETCD, os.X_OK)):
        msg = f"etcd not found at {ETCD} (Debian package etcd-server; scripts/setup.sh installs it)"
        if in_ci():
            pytest.fail(f"{msg}; CI=true, so not skipping", pytrace=False)
        pytest.skip(msg)
    return ETCD


def _started(binary: str, tls: Path | None = None) -> EtcdServer:
    for attempt in range(3):  # the free ports may be taken between picking and binding
        srv = EtcdServer(binary, tls)
        try:
            srv.start()
            return srv
        except RuntimeError:
            srv.remove()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def etcd_server(etcd_binary):
    """One etcd shared by the tests that only need a working store (each test
    writes under its own prefix)."""
    srv = _started(etcd_binary)
    yield srv
    srv.remove()


@pytest.fixture
def etcd_factory(etcd_binary):
    """Dedicated etcd servers for tests that stop/restart them."""
    made: list[EtcdServer] = []

    def make(tls: Path | None = None) -> EtcdServer:
        srv = _started(etcd_binary, tls)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.remove()


class TcpProxy:
    """127.0.0.1:<port> -> target. unplug() drops every connection and refuses
    new ones (they are accepted and closed at once) until plug()."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.plugged = True
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            if not self.plugged:
                c.close()
                continue
            try:
                u = socket.create_connection(self.target, timeout=2)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns |= {c, u}
            threading.Thread(target=self._pump, args=(c, u), daemon=True).start()
            threading.Thread(target=self._pump, args=(u, c), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self.lock:
                self.conns.discard(src)
            src.close()

    def unplug(self) -> None:
        self.plugged = False
        with self.lock:
            conns, self.conns = self.conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def plug(self) -> None:
        self.plugged = True

    def close(self) -> None:
        self.unplug()
        self.listener.close()


@pytest.fixture
def tcp_proxy():
    made: list[TcpProxy] = []

    def make(target: tuple[str, int]) -> TcpProxy:
        p = TcpProxy(target)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()
