"""Faults under load, with figures (docs/reliability.md): while clients on
two nodes connect through a VIP in a loop and a writer keeps writing through
the API,

- the control plane is paused (SIGSTOP) or killed (SIGKILL) and restarted;
- with etcd, etcd is killed and restarted; with a 3-member etcd, a follower
  and then the leader are killed (SIGKILL) and restarted;
- a node's link to the control plane is cut (blackholed) and healed;
- the store runs out of space (the embedded store's disk fills up; etcd's
  NOSPACE alarm is raised) and gets it back.

Every case counts failed connections (must be 0: the nodes forward on their
own) and acknowledged writes missing afterwards (must be 0)."""
from __future__ import annotations

import collections
import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import grpc
import pytest

from figures import record
from e2e_cluster import (LOOP_INTERVAL, SYNC_TIMEOUT, Link, Tmpfs, etcd_nospace, poll, retry_unavailable,
                         tcp_frontend, wait_progress)
from socklb.v1 import api_pb2

STORES = pytest.mark.parametrize("cluster", ["embedded", "etcd"], indirect=True)
CYCLES = 3
PAUSE = 3.0  # seconds the control plane is stopped, a link cut, a disk full
ETCD3_ROUNDS = 2  # a follower, then the leader, killed in each


class Writer(threading.Thread):
    """PutService of a fresh service again and again (``interval`` seconds
    apart, default back to back); remembers what was acknowledged, and how
    each refusal was answered."""

    def __init__(self, cluster, prefix: str, interval: float = 0.0):
        super().__init__(daemon=True)
        self.cluster, self.prefix, self.interval = cluster, prefix, interval
        self.acked: dict[str, int] = {}
        self.refused = 0
        self.errors: collections.Counter[str] = collections.Counter()  # "CODE: details" -> count
        self.stop_flag = threading.Event()

    def latest(self) -> int:
        """The highest acknowledged resource_version."""
        return max(self.acked.values(), default=0)

    def run(self):
        i = 0
        while not self.stop_flag.is_set():
            name = f"{self.prefix}-{i}"
            svc = api_pb2.Service(name=name, frontends=[tcp_frontend(f"127.96.250.{i % 250 + 1}", 10000 + i)])
            try:
                got = self.cluster.cp.api.PutService(api_pb2.PutServiceRequest(service=svc), timeout=5)
                self.acked[name] = got.resource_version
                self.cluster.services.add(name)
                i += 1
                time.sleep(self.interval)
                continue
            except grpc.RpcError as e:
                self.errors[f"{e.code().name}: {e.details()}"] += 1
            except Exception as e:  # the channel is being replaced during a restart
                self.errors[repr(e)] += 1
            self.refused += 1
            time.sleep(0.05)

    def stop(self):
        self.stop_flag.set()
        self.join(30)


def lost(cluster, acked: dict[str, int]) -> list[str]:
    have, _ = retry_unavailable(cluster.list_services)
    return [n for n, v in acked.items() if n not in have or have[n].resource_version < v]


def start_loops(cluster, nodes=None):
    """A connect loop through a fresh VIP on each of the nodes (default: the cluster's two)."""
    nodes = cluster.nodes if nodes is None else nodes
    a = cluster.backend("backend-a", "127.0.0.31")
    vip, port = cluster.vip()
    svc = cluster.put_service("e2e-faults", vip, port, [a])
    cluster.wait_applied(svc.resource_version, nodes)
    clients = [cluster.client(n) for n in nodes]
    for c in clients:
        c.call("loop_start", addr=vip, port=port, max=1_000_000, interval=LOOP_INTERVAL)
    wait_progress(clients, 20)
    return clients


def stop_loops(clients) -> tuple[int, int]:
    ok = failed = 0
    for c in clients:
        r = c.call("loop_stop")
        ok += r["ok"]
        failed += r["failed"]
    return ok, failed


def report(probe: str, cases: int, ok: int, failed: int, writer: Writer, missing: list[str], **figures) -> None:
    """Record a probe's figures, then assert what must hold: no failed
    connection, no acknowledged write lost."""
    record(probe, cases, f"{failed} failed connections of {ok + failed}, {len(missing)} of {len(writer.acked)} "
                         "acknowledged writes lost", connections=ok + failed, failed_connections=failed,
           acknowledged_writes=len(writer.acked), lost_writes=len(missing), **figures)
    assert failed == 0, (ok, failed)
    assert missing == [], missing


@STORES
@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_control_plane_faults_fail_no_connection_and_lose_no_write(cluster, fault):
    clients = start_loops(cluster)
    writer = Writer(cluster, f"ack-{fault.lower()}")
    writer.start()
    try:
        for _ in range(CYCLES):
            assert poll(lambda: len(writer.acked) >= 5, 30)
            before = len(writer.acked)
            if fault == "SIGSTOP":
                os.kill(cluster.cp.pid, signal.SIGSTOP)
                time.sleep(PAUSE)
                os.kill(cluster.cp.pid, signal.SIGCONT)
            else:
                cluster.cp.kill()
                wait_progress(clients, 20)  # balanced by the nodes alone
                cluster.restart_cp()
            assert poll(lambda: len(writer.acked) >= before + 5, 60), "writes did not resume"
        wait_progress(clients, 20)
    finally:
        writer.stop()
        ok, failed = stop_loops(clients)
    missing = lost(cluster, writer.acked)
    cluster.wait_nodes_ready(cluster.nodes)
    report(f"control plane {fault} x{CYCLES} ({cluster.kind} store) under a connect loop on 2 nodes and a writer",
           CYCLES, ok, failed, writer, missing)


@pytest.mark.parametrize("cluster", ["etcd"], indirect=True)
def test_etcd_killed_fails_no_connection_and_loses_no_write(cluster):
    clients = start_loops(cluster)
    writer = Writer(cluster, "ack-etcd")
    writer.start()
    try:
        for _ in range(CYCLES):
            assert poll(lambda: len(writer.acked) >= 5, 30)
            before = len(writer.acked)
            os.kill(cluster.etcd.pid, signal.SIGKILL)
            cluster.etcd.stop()  # reaps the killed process (it cannot have exited on SIGTERM)
            wait_progress(clients, 20)  # nodes forward without a store behind the control plane
            cluster.etcd.start()
            assert poll(lambda: len(writer.acked) >= before + 5, 90), "writes did not resume"
    finally:
        writer.stop()
        ok, failed = stop_loops(clients)
    missing = lost(cluster, writer.acked)
    cluster.wait_nodes_ready(cluster.nodes)
    report(f"etcd SIGKILL x{CYCLES} under a connect loop on 2 nodes and a writer", CYCLES, ok, failed, writer,
           missing)


def acked_more(writer: Writer, n: int = 5, timeout: float = 60.0) -> bool:
    """The writer gets n more writes acknowledged (bounded)."""
    before = len(writer.acked)
    return poll(lambda: len(writer.acked) >= before + n, timeout)


def applied(node, version: int, timeout: float = SYNC_TIMEOUT) -> bool:
    """The node's agent applied ``version`` (bounded). While a writer writes,
    a node is always a little behind the latest desired version, so ListNodes
    rarely shows it READY: the tests wait for READY once the writer stopped."""
    return poll(lambda: node.applied() >= version, timeout)


@pytest.mark.parametrize("cluster", ["etcd3"], indirect=True)
def test_etcd_member_and_leader_killed_fail_no_connection_and_lose_no_write(cluster):
    """A 3-member etcd (the control plane's store URL lists all three): a
    follower is killed, writes go on, it comes back; then the leader is
    killed, writes go on once the others elected a new one, it comes back."""
    etcd = cluster.etcd
    clients = start_loops(cluster)
    writer = Writer(cluster, "ack-etcd3")
    writer.start()
    killed = []
    try:
        for _ in range(ETCD3_ROUNDS):
            for role in ("follower", "leader"):
                assert acked_more(writer)
                leader = etcd.leader()
                victim = leader if role == "leader" else next(m for m in etcd.members if m is not leader)
                victim.kill()
                killed.append(f"{role} {victim.member}")
                assert acked_more(writer), f"writes did not resume without the {role} ({victim.member})"
                wait_progress(clients, 20)
                victim.start()
                assert acked_more(writer), f"writes did not go on after the {role} ({victim.member}) came back"
    finally:
        writer.stop()
        ok, failed = stop_loops(clients)
    missing = lost(cluster, writer.acked)
    cluster.wait_applied(writer.latest())
    report(f"3-member etcd: a follower, then the leader SIGKILLed and restarted, x{ETCD3_ROUNDS} "
           "under a connect loop on 2 nodes and a writer", len(killed), ok, failed, writer, missing)


@STORES
def test_node_cut_off_from_the_control_plane_keeps_forwarding_and_catches_up(cluster):
    """One of the two nodes reaches the control plane through a Link; the
    link is cut (blackholed) while the writer goes on: the node forwards on
    its last state and gets none of the new writes; healed, it catches up with
    all of them: once with its connection surviving the cut, once with the
    connection dropped (as after a partition longer than the keepalives)."""
    other, cut_node = cluster.nodes
    link = Link(cluster.cp.addr)
    try:
        cluster.repoint(cut_node, [link.addr])
        clients = start_loops(cluster)
        # Paced: the writer runs through the whole test, and each of its
        # services is deleted one by one after it.
        writer = Writer(cluster, "ack-cut", interval=0.02)
        writer.start()
        during_cut = 0
        try:
            for reset in (False, True):
                assert acked_more(writer)
                link.cut()
                n = len(writer.acked)
                time.sleep(PAUSE)
                wait_progress(clients, 20)
                assert acked_more(writer), "writes stopped while a node was cut off"
                during_cut += len(writer.acked) - n
                latest = writer.latest()
                assert applied(other, latest), "the other node did not get the writes"
                assert cut_node.applied() < latest, "the cut node got writes made while it was cut off"
                connections = link.connections
                link.heal(reset=reset)
                assert applied(cut_node, latest), "the cut node did not catch up once healed"
                if reset:
                    assert link.connections > connections, "the node caught up without connecting again"
        finally:
            writer.stop()
            ok, failed = stop_loops(clients)
        missing = lost(cluster, writer.acked)
        cluster.wait_applied(writer.latest())
    finally:
        try:
            cluster.repoint(cut_node, [cluster.cp.addr])
        finally:
            link.close()
    report(f"a node's link to the control plane cut (blackholed) for {PAUSE:.0f} s and healed x2, once keeping "
           f"and once dropping its connection ({cluster.kind} store), under a connect loop on 2 nodes and a "
           "writer; the node caught up after each", 2, ok, failed, writer, missing, writes_while_cut=during_cut)


DISK_SIZE = 32 << 20  # the embedded store's small disk, on top of the store's own size
# What a write refused for want of space must say. The status code should be
# RESOURCE_EXHAUSTED (gRPC's code for "the file system is out of space"); the
# control plane answers INTERNAL ("store error: ...") today: reported as a
# product bug, accepted here only with the store's own words for it.
NO_SPACE = {"embedded": "database or disk is full", "etcd": "database space exceeded"}
NO_SPACE_CODES = ("RESOURCE_EXHAUSTED: store full: ",)


class EtcdNoSpace:
    """etcd out of space: its NOSPACE alarm raised (``fill``) and disarmed (``free``)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def fill(self) -> None:
        etcd_nospace(self.endpoint, True)

    def free(self) -> None:
        etcd_nospace(self.endpoint, False)


@contextlib.contextmanager
def small_disk(cluster):
    """What the disk-full probe fills and frees: for the embedded store, a
    small tmpfs its store is moved onto (and back from afterwards); for etcd,
    its space quota."""
    if cluster.kind == "etcd":
        disk = EtcdNoSpace(cluster.etcd.endpoint)
        try:
            yield disk
        finally:
            disk.free()
        return
    home = Path(cluster.store_url.removeprefix("embedded://"))
    disk = Tmpfs(cluster.workdir / "small-disk", DISK_SIZE + 2 * sum(f.stat().st_size for f in home.iterdir()))
    try:
        cluster.move_store(disk.path / "store")
        yield disk
    finally:
        try:
            cluster.move_store(home)
        finally:
            disk.unmount()


@STORES
def test_disk_full_refuses_writes_fails_no_connection_and_loses_no_write(cluster):
    """The store runs out of space while the writer goes on: writes are
    refused with an error that says so (the control plane keeps running), the
    nodes forward on; space freed, writes go on."""
    with small_disk(cluster) as disk:
        clients = start_loops(cluster)
        writer = Writer(cluster, "ack-full")
        writer.start()
        refusals: collections.Counter[str] = collections.Counter()
        try:
            for _ in range(CYCLES):
                assert acked_more(writer)
                errors, refused = writer.errors.copy(), writer.refused
                disk.fill()
                assert poll(lambda: writer.refused >= refused + 5, 30), "writes were not refused without space"
                time.sleep(PAUSE)
                wait_progress(clients, 20)
                assert cluster.cp.running(), cluster.cp.output()
                refusals += writer.errors - errors
                disk.free()
                assert acked_more(writer), "writes did not resume once space was freed"
        finally:
            writer.stop()
            ok, failed = stop_loops(clients)
        missing = lost(cluster, writer.acked)
        cluster.wait_applied(writer.latest())
    unclear = [e for e in refusals if not (e.startswith(NO_SPACE_CODES) and NO_SPACE[cluster.kind] in e)]
    what = ("its directory's tmpfs filled up" if cluster.kind == "embedded"
            else "etcd's NOSPACE alarm raised, as when its space quota is exceeded")
    report(f"{cluster.kind} store out of space ({what}) x{CYCLES} for {PAUSE:.0f} s each, under a connect loop on "
           "2 nodes and a writer", CYCLES, ok, failed, writer, missing, refused_writes=sum(refusals.values()),
           refused_with=" / ".join(sorted(refusals)))
    assert refusals and not unclear, dict(refusals)
