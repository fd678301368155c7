"""--workers 2: node streams spread over two processes on one port
(SO_REUSEPORT), each a replica of its own on a shared etcd; every node is
served, whichever worker its connection reached, and a write made through
either worker reaches them all."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import grpc
from support import free_port

from socklb.v1 import api_pb2, api_pb2_grpc, sync_pb2, sync_pb2_grpc, types_pb2

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))
from test_sync import wait_for  # noqa: E402


class Node:
    """A node that applies nothing: Hello, then an Ack for every update. Its
    own connection (a local subchannel pool), as a node on its own host has:
    SO_REUSEPORT spreads connections, not streams."""

    def __init__(self, addr: str, name: str):
        self.name = name
        self.version = 0
        self.channel = grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)])
        self.out: queue.Queue = queue.Queue()
        self.out.put(sync_pb2.NodeMessage(hello=sync_pb2.Hello(node=name, kernel="test")))
        self.call = sync_pb2_grpc.NodeSyncStub(self.channel).Sync(iter(self.out.get, None))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for msg in self.call:
                kind = msg.WhichOneof("msg")
                if kind == "snapshot" and msg.snapshot.last:
                    self.version = msg.snapshot.version
                elif kind == "delta" and msg.delta.from_version == self.version:
                    self.version = msg.delta.version
                else:
                    continue
                self.out.put(sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=self.version, nonce=msg.nonce)))
        except grpc.RpcError:
            pass

    def close(self):
        self.out.put(None)
        self.call.cancel()
        self.channel.close()


def test_two_workers_serve_every_node(etcd_factory, tmp_path):
    etcd = etcd_factory()
    addr = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "cp.log", "wb")
    cp = subprocess.Popen([sys.executable, "-m", "socklb.controlplane.server", "--listen", addr, "--store", etcd.url,
                           "--replica-id", "cp", "--workers", "2"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    nodes: list[Node] = []
    channel = grpc.insecure_channel(addr)
    api = api_pb2_grpc.LoadBalancerStub(channel)
    try:
        wait_for(lambda: (tmp_path / "cp.log").read_text().count("serving on") == 2, "both workers serving")
        api.PutService(api_pb2.PutServiceRequest(service=api_pb2.Service(
            name="a", frontends=[types_pb2.Frontend(address="127.96.0.10", port=80)],
            backends=[types_pb2.Backend(address="10.0.0.1", port=80)])), timeout=30)

        def replicas():
            return {n.name: n.replica for n in api.ListNodes(api_pb2.ListNodesRequest(), timeout=30).nodes
                    if n.health == api_pb2.NODE_HEALTH_READY}

        # Connections land by their addresses' hash: more nodes until both workers have some.
        while len(set(replicas().values())) < 2:
            assert len(nodes) < 64, f"every node on one worker: {replicas()}"
            nodes += [Node(addr, f"n{len(nodes) + k}") for k in range(4)]
            wait_for(lambda: len(replicas()) == len(nodes), "the new nodes READY")
        assert set(replicas().values()) == {"cp", "cp-w1"}

        # Writes through both workers (new API channels land anywhere): every node gets each one.
        for k in range(4):
            with grpc.insecure_channel(addr, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
                r = api_pb2_grpc.LoadBalancerStub(ch).AddBackends(api_pb2.AddBackendsRequest(
                    service="a", backends=[types_pb2.Backend(address=f"10.0.1.{k}", port=80)]), timeout=30)
            wait_for(lambda: all(n.version >= r.resource_version for n in nodes), f"write {k} at every node")
        wait_for(lambda: all(n.applied_version == r.resource_version
                             for n in api.ListNodes(api_pb2.ListNodesRequest(), timeout=30).nodes),
                 "every node's status shows the last write")
    finally:
        for n in nodes:
            n.close()
        channel.close()
        cp.send_signal(signal.SIGTERM)
        try:
            assert cp.wait(30) == 0
        finally:
            if cp.poll() is None:
                cp.kill()
                cp.wait()
            log.close()
    text = (tmp_path / "cp.log").read_text()
    assert "Traceback" not in text, text[-3000:]
