"""Fixtures of the kernel tests (root, real BPF, cgroup v2, network namespaces).

Every kernel test checks what it needs through ``require()``: a missing piece
(not root, no cgroup2, no bcc, ...) skips the test on a developer's machine and
FAILS it when CI=true, so that CI never goes green by skipping everything.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import netenv
from netenv import require


def pytest_configure(config):
    config.addinivalue_line("markers", "kernel: needs root, real BPF, cgroup v2 and network namespaces")
    config.addinivalue_line("markers", "pure: harness logic that needs no privileges")
    config.addinivalue_line("markers", "agent: needs the socklb dataplane agent and bcc")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents and not item.get_closest_marker("pure"):
            item.add_marker(pytest.mark.kernel)


def check_base() -> None:
    require(os.geteuid() == 0, "root (euid 0)")
    require(netenv.cgroup2_mount() is not None, "a cgroup2 mount in /proc/mounts")
    require(shutil.which("ip") is not None, "iproute2 `ip`")
    require(os.path.isdir("/proc/self/ns") and os.path.exists("/proc/self/ns/net"), "network namespaces")


def check_agent() -> None:
    check_base()
    require(netenv.have_bcc(), "python module bcc (python3-bpfcc; run scripts/setup.sh)")
    require(shutil.which("bpftool") is not None, "bpftool")
    require(os.path.exists("/sys/kernel/btf/vmlinux"), "kernel BTF")
    require(netenv.ensure_bpffs(), "bpffs mounted at /sys/fs/bpf")
    require(netenv.have_agent(), "socklb/dataplane/cli.py (the dataplane agent)")


@pytest.fixture(autouse=True)
def kernel_requirements(request):
    """Autouse: the one place every kernel test checks its prerequisites."""
    if request.node.get_closest_marker("pure"):
        return
    if request.node.get_closest_marker("agent") or "agent" in request.fixturenames:
        check_agent()
    else:
        check_base()


@pytest.fixture(scope="session", autouse=True)
def sweep_leftovers():
    """Remove objects of earlier runs whose process is gone (a killed run
    cannot clean up after itself). Only names of the form socklb-test-<pid>-<n>."""
    if os.geteuid() != 0:
        yield
        return
    mount = netenv.cgroup2_mount()
    for pid in netenv.stale_agent_pids():
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    if netenv.NETNS_DIR.is_dir():
        for p in netenv.NETNS_DIR.iterdir():
            if netenv.stale(p.name):
                ns = netenv.NetNS.__new__(netenv.NetNS)
                ns.name = p.name
                ns.remove()
    for p in Path(tempfile.gettempdir()).glob(netenv.PREFIX + "-*"):
        if netenv.stale(p.name):
            shutil.rmtree(p, ignore_errors=True)
    if netenv.BPFFS.is_dir():
        for p in netenv.BPFFS.iterdir():
            if netenv.stale(p.name):
                shutil.rmtree(p, ignore_errors=True)
    if mount is not None:
        for p in mount.iterdir():
            if p.is_dir() and netenv.stale(p.name):
                if shutil.which("bpftool"):
                    for prog in netenv.cgroup_progs(p):
                        netenv.run(["bpftool", "cgroup", "detach", str(p), prog["attach_type"],
                                    "id", str(prog["id"])], check=False)
                cg = netenv.TestCgroup.__new__(netenv.TestCgroup)._adopt(mount, p)
                try:
                    cg.remove()
                except Exception:
                    pass
    yield


# --------------------------------------------------------------------------


@pytest.fixture
def cgroup():
    cg = netenv.TestCgroup()
    try:
        yield cg
    finally:
        cg.remove()


@pytest.fixture
def netns_factory():
    yield from netenv.factory(netenv.NetNS, netenv.NetNS.remove)


@pytest.fixture
def netns(netns_factory):
    return netns_factory()


@pytest.fixture
def backends():
    """backends(name, addr, port=0, proto="tcp", netns=None) -> Backend; all stopped at the end."""
    yield from netenv.factory(netenv.Backend, netenv.Backend.stop)


@pytest.fixture
def clients(cgroup):
    """clients(netns=None, in_cgroup=True, cg=None, extra=None, netns_exec=False) -> Client (a
    client.py process) in the test cgroup, or in `cg` (e.g. a cgroup.child()); extra,
    netns_exec: see netenv.Client."""
    def make(netns=None, in_cgroup=True, cg=None, **kw) -> netenv.Client:
        return netenv.Client(cg or (cgroup if in_cgroup else None), netns, **kw)

    yield from netenv.factory(make, netenv.Client.close)


@pytest.fixture
def workdir():
    # short: the admin socket path must fit in sun_path (108 bytes)
    d = Path(tempfile.gettempdir()) / netenv.unique_name("wd")
    d.mkdir(mode=0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def agent(cgroup, workdir, request):
    """agent(state, extra_args=()) -> a started Agent. Always stopped,
    detached (``cli detach``) and its pins removed at the end; what detach
    failed to remove is reported as a teardown error."""
    made: list[netenv.Agent] = []

    def start(state, extra_args=()) -> netenv.Agent:
        a = netenv.Agent(cgroup, workdir, state, extra_args)
        made.append(a)
        return a.start()

    problems = []
    try:
        yield start
    finally:
        for a in made:
            problems += a.cleanup()
            rep = getattr(request.node, "rep_call", None)
            if rep is not None and rep.failed:
                print(f"---- agent log ({a.pin_dir.name}) ----\n{a.log_text()}")
    assert not problems, "agent cleanup: " + "; ".join(problems)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
