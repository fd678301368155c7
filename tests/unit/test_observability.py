"""Metrics, health checking, reflection and JSON logs, on a real control
plane process and a node process (no datapath)."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from support import free_port

from socklb.v1 import api_pb2, api_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def wait_for(pred, what, timeout=60.0):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            if pred():
                return
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what} ({last})")


@pytest.fixture
def cp(tmp_path):
    port, mport = free_port(), free_port()
    log = open(tmp_path / "cp.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "socklb.controlplane.server", "--listen", f"127.0.0.1:{port}",
                             "--store", f"embedded://{tmp_path}/store", "--metrics-listen", f"127.0.0.1:{mport}",
                             "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        wait_for(lambda: ready(channel), "control plane")
        yield {"port": port, "metrics": mport, "channel": channel, "log": tmp_path / "cp.log"}
    finally:
        channel.close()
        proc.terminate()
        proc.wait(10)
        log.close()


def ready(channel) -> bool:
    fut = grpc.channel_ready_future(channel)
    try:
        fut.result(timeout=1)
        return True
    finally:
        fut.cancel()  # a future left polling a closed channel raises in its thread


def scrape(port) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels + "}") if labels else " ")) or (
                labels and line.startswith(name + "{") and labels in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_health_and_reflection(cp):
    h = health_pb2_grpc.HealthStub(cp["channel"])
    for svc in ("", "socklb.v1.LoadBalancer", "socklb.v1.NodeSync"):
        assert h.Check(health_pb2.HealthCheckRequest(service=svc)).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as e:
        h.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    r = reflection_pb2_grpc.ServerReflectionStub(cp["channel"])
    resp = next(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"socklb.v1.LoadBalancer", "socklb.v1.NodeSync", "grpc.health.v1.Health"} <= names


def test_metrics_count_api_calls_services_and_nodes(cp):
    api = api_pb2_grpc.LoadBalancerStub(cp["channel"])
    svc = api_pb2.Service(name="m", frontends=[{"address": "127.96.0.10", "port": 80}],
                          backends=[{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.2", "port": 80}])
    api.PutService(api_pb2.PutServiceRequest(service=svc))
    with pytest.raises(grpc.RpcError):
        api.GetService(api_pb2.GetServiceRequest(name="missing"))
    # A refused call is counted as its handler unwinds, which may be just
    # after the client has its status: waited for, not raced.
    wait_for(lambda: metric(scrape(cp["metrics"]), "socklb_api_requests_total",
                            'code="NOT_FOUND",method="GetService"') == 1, "the refused call's count")
    text = scrape(cp["metrics"])
    assert metric(text, "socklb_api_requests_total", 'code="OK",method="PutService"') == 1
    assert metric(text, "socklb_api_requests_total", 'code="NOT_FOUND",method="GetService"') == 1
    wait_for(lambda: metric(scrape(cp["metrics"]), "socklb_services") == 1, "services gauge")
    assert metric(scrape(cp["metrics"]), "socklb_backends") == 2

    # A node connects and acknowledges: the sync counters and latency histogram move.
    env = dict(os.environ)
    node = subprocess.Popen([sys.executable, "-c", f"""
import time
from socklb.dataplane.agent import Agent
from socklb.dataplane.sync_client import SyncClient
from socklb.dataplane.writer import MemoryMapWriter
a = Agent(MemoryMapWriter(), "obs-node"); c = SyncClient(a, ["127.0.0.1:{cp['port']}"], stats_interval=0.5); c.start()
time.sleep(60)
"""], cwd=ROOT, env=env)
    try:
        wait_for(lambda: metric(scrape(cp["metrics"]), "socklb_sync_acks_total") >= 1, "an ACK")
        text = scrape(cp["metrics"])
        assert metric(text, "socklb_sync_latency_seconds_count") >= 1
        assert metric(text, "socklb_sync_updates_total", 'kind="snapshot"') >= 1
        wait_for(lambda: metric(scrape(cp["metrics"]), "socklb_nodes", 'health="ready"') == 1, "node gauge")
    finally:
        node.terminate()
        node.wait(10)


def test_json_logs(cp):
    lines = [json.loads(line) for line in cp["log"].read_text().splitlines() if line.startswith("{")]
    assert lines, cp["log"].read_text()
    assert all({"ts", "level", "logger", "msg"} <= set(x) for x in lines)
    assert any("serving on" in x["msg"] for x in lines)
