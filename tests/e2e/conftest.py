"""Fixtures of the end-to-end tests: real etcd, control-plane and dataplane
processes on this machine (root, real BPF, cgroup v2).

The kernel tests' harness (tests/kernel/netenv.py, client.py) is imported,
not copied: test cgroups, backend servers, clients that join a cgroup before
they make a socket, the agent wrapper, and the rule that a missing
prerequisite skips on a developer machine but FAILS under CI=true.

One cluster per store kind ("embedded", "etcd") lives for the whole session
(starting a node compiles its BPF programs); each test gets it through the
``cluster`` fixture, which first brings back anything an earlier test left
stopped, and afterwards removes what the test made (services, backends,
clients, extra replicas and nodes). Tests pick the store with
``@pytest.mark.parametrize("cluster", [...], indirect=True)``: "embedded",
"etcd" (the default; one member) or "etcd3" (three members, started only if a
test asks for it).

SOCKLB_E2E_LOGS=DIR keeps a copy of every process's log in DIR (the work dir
itself is removed); a failing test shows the logs' tails in its report.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
KERNEL_TESTS = HERE.parent / "kernel"
if str(KERNEL_TESTS) not in sys.path:
    sys.path.insert(0, str(KERNEL_TESTS))

import netenv  # noqa: E402  (tests/kernel/netenv.py)

import e2e_cluster as e2e  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end with real processes (root, BPF, etcd)")
    config.addinivalue_line("markers", "kernel: needs root, real BPF, cgroup v2 and network namespaces")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.kernel)


def check_prerequisites(kind: str) -> None:
    """As the kernel tests' check_agent(), plus etcd for the etcd store."""
    require = netenv.require
    require(os.geteuid() == 0, "root (euid 0)")
    require(netenv.cgroup2_mount() is not None, "a cgroup2 mount in /proc/mounts")
    require(netenv.have_bcc(), "python module bcc (python3-bpfcc; run scripts/setup.sh)")
    require(shutil.which("bpftool") is not None, "bpftool")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "kernel BTF")
    require(netenv.ensure_bpffs(), "bpffs mounted at /sys/fs/bpf")
    require(netenv.have_agent(), "socklb/dataplane/cli.py (the dataplane agent)")
    require((netenv.REPO / "socklb" / "controlplane" / "server.py").is_file(),
            "socklb/controlplane/server.py (the control plane)")
    if kind in ("etcd", "etcd3"):
        require(e2e.etcd_binary() is not None, "etcd (Debian package etcd-server)")


@pytest.fixture(scope="session")
def e2e_root():
    """The session's work dir (short: admin sockets must fit in sun_path),
    after sweeping what killed runs left behind."""
    if os.geteuid() == 0:
        e2e.sweep_leftovers()
    d = Path(tempfile.gettempdir()) / e2e.OWNER
    d.mkdir(mode=0o700)
    # Inherited by every process started during the session, also by those
    # whose environment is not ours to set (the integration tests' etcd).
    os.environ[e2e.OWNER_ENV] = e2e.OWNER
    try:
        yield d
    finally:
        os.environ.pop(e2e.OWNER_ENV, None)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster_factory(e2e_root):
    """cluster_factory(kind) -> the session's Cluster of that kind (started once).
    Everything is torn down at the end of the session, even after failures;
    what could not be cleaned up is reported as an error."""
    made: dict[str, e2e.Cluster] = {}
    failed: dict[str, BaseException] = {}

    def get(kind: str) -> e2e.Cluster:
        if kind in failed:
            pytest.fail(f"the {kind} cluster failed to start earlier: {failed[kind]}", pytrace=False)
        if kind not in made:
            c = e2e.Cluster(kind, e2e_root, index=len(made) + 1)
            made[kind] = c
            try:
                c.start()
            except BaseException as e:
                failed[kind] = e
                raise
        return made[kind]

    problems: list[str] = []
    try:
        yield get
    finally:
        keep = os.environ.get("SOCKLB_E2E_LOGS")  # a directory to copy every log to
        for c in made.values():
            if keep:
                try:
                    c.save_logs(Path(keep))
                except Exception as e:
                    problems.append(f"saving logs to {keep}: {e!r}")
            try:
                problems += c.destroy()
            except Exception as e:
                problems.append(f"{c.kind} cluster teardown: {e!r}")
    assert not problems, "e2e cleanup: " + "; ".join(problems)


@pytest.fixture
def cluster(request, cluster_factory):
    """The session cluster of the requested store kind, healthy: etcd and the
    main control plane running, both nodes connected and READY."""
    kind = getattr(request, "param", "etcd")
    check_prerequisites(kind)
    c = cluster_factory(kind)
    c.ensure()
    problems: list[str] = []
    try:
        yield c
    finally:
        problems = c.end_test()
    assert not problems, "test cleanup: " + "; ".join(problems)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the logs of etcd, the control planes and the nodes."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        c = getattr(item, "funcargs", {}).get("cluster")
        if c is not None:
            try:
                rep.sections.append(("socklb e2e logs", c.logs()))
            except Exception as e:  # never hide the real failure
                rep.sections.append(("socklb e2e logs", f"could not collect logs: {e!r}"))
