"""Faults under load, with figures (docs/reliability.md): while clients on
both nodes connect through a VIP in a loop and a writer keeps writing through
the API, the control plane is paused (SIGSTOP) or killed (SIGKILL) and
restarted, and with etcd, etcd is killed and restarted. Every case counts
failed connections (must be 0: the nodes forward on their own) and
acknowledged writes missing afterwards (must be 0)."""
from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import pytest

from figures import record
from e2e_cluster import LOOP_INTERVAL, backend_of, poll, retry_unavailable, tcp_frontend, wait_progress
from socklb.v1 import api_pb2

STORES = pytest.mark.parametrize("cluster", ["embedded", "etcd"], indirect=True)
CYCLES = 3
PAUSE = 3.0  # seconds the control plane is stopped


class Writer(threading.Thread):
    """PutService of a fresh service again and again; remembers what was acknowledged."""

    def __init__(self, cluster, prefix: str):
        super().__init__(daemon=True)
        self.cluster, self.prefix = cluster, prefix
        self.acked: dict[str, int] = {}
        self.refused = 0
        self.stop_flag = threading.Event()

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
            except grpc.RpcError:
                self.refused += 1
                time.sleep(0.05)
            except Exception:  # the channel is being replaced during a restart
                self.refused += 1
                time.sleep(0.05)

    def stop(self):
        self.stop_flag.set()
        self.join(30)


def lost(cluster, acked: dict[str, int]) -> list[str]:
    have, _ = retry_unavailable(cluster.list_services)
    return [n for n, v in acked.items() if n not in have or have[n].resource_version < v]


def start_loops(cluster):
    a = cluster.backend("backend-a", "127.0.0.31")
    vip, port = cluster.vip()
    svc = cluster.put_service("e2e-faults", vip, port, [a])
    cluster.wait_applied(svc.resource_version)
    clients = [cluster.client(n) for n in cluster.nodes]
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
    record(f"control plane {fault} x{CYCLES} ({cluster.kind} store) under a connect loop on 2 nodes and a writer",
           CYCLES, f"{failed} failed connections of {ok + failed}, {len(missing)} of {len(writer.acked)} "
                   "acknowledged writes lost", connections=ok + failed, failed_connections=failed,
           acknowledged_writes=len(writer.acked), lost_writes=len(missing))
    assert failed == 0, (ok, failed)
    assert missing == [], missing


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
    record(f"etcd SIGKILL x{CYCLES} under a connect loop on 2 nodes and a writer", CYCLES,
           f"{failed} failed connections of {ok + failed}, {len(missing)} of {len(writer.acked)} "
           "acknowledged writes lost", connections=ok + failed, failed_connections=failed,
           acknowledged_writes=len(writer.acked), lost_writes=len(missing))
    assert failed == 0, (ok, failed)
    assert missing == [], missing
