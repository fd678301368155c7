"""Batched map writes (maps.BpfMapWriter, mapbatch.py) on the real maps of a
loaded datapath: they program exactly what one write per entry programs,
keep make-before-break (a client connecting through a VIP during a large
apply never fails), skip missing keys on delete as delete() does, and the
per-entry fallback can be forced (--map-writes / SOCKLB_MAP_WRITES) and is
reported in the capabilities."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import netenv
from socklb.dataplane.agent import Agent
from socklb.dataplane.layout import Meta
from socklb.dataplane.loader import Capacity, Datapath, LoadError, detach
from socklb.dataplane.mapbatch import SVC_KEY
from socklb.dataplane.maps import BpfMapWriter
from socklb.dataplane.statefile import parse_state
from socklb.v1 import node_pb2

pytestmark = pytest.mark.agent

LOOP = Path(__file__).parent / "connect_loop.py"
VIP = "127.97.0.1"


@pytest.fixture
def datapath(cgroup):
    pins = netenv.BPFFS / netenv.unique_name("batch")
    dp = Datapath(pin_dir=pins, cgroup=cgroup.path, capacity=Capacity(services=1 << 18, backends=1 << 18))
    try:
        dp.load()
        yield dp
    finally:
        dp.close()
        if pins.exists():
            detach(pins)
        shutil.rmtree(pins, ignore_errors=True)


def service(i: int, n: int = 3, **extra) -> dict:
    return {"name": f"svc-{i}", "frontends": [{"address": f"127.90.{i >> 8}.{i & 255}", "port": 80 + i % 3,
                                               "protocol": "PROTOCOL_UDP" if i % 4 == 3 else "PROTOCOL_TCP"}],
            "backends": [{"address": f"10.1.{i & 255}.{b + 1}", "port": 8000 + b, "weight": 1 + b % 2}
                         for b in range(n)], **extra}


def states() -> list[node_pb2.NodeState]:
    """A sequence exercising every op kind: new services of each selection,
    IPv6, backend states and weights; then slots shrinking and growing,
    backends replaced, services removed; then everything removed."""
    first = [service(i, n=2 + i % 5) for i in range(40)]
    first[1]["selection"] = "SELECTION_MAGLEV"
    first[2]["affinity_timeout_seconds"] = 30
    first[3]["backends"][0]["state"] = "BACKEND_STATE_DRAINING"
    first.append({"name": "v6", "frontends": [{"address": "fd00::1", "port": 443, "protocol": "PROTOCOL_TCP"}],
                  "backends": [{"address": "fd00::10", "port": 8443}, {"address": "10.9.9.9", "port": 8443}]})
    second = [service(i, n=1 + (i * 7) % 6) for i in range(10, 60)]
    second[0]["backends"][0]["port"] = 9999
    return [parse_state(json.dumps({"version": v, "services": s}))
            for v, s in ((1, first), (2, second), (3, []))]


def dump(writer: BpfMapWriter) -> dict:
    return {name: {bytes(k): bytes(v) for k, v in m.items()} for name, m in writer._batch_maps.items()}


def fresh(dp: Datapath, way: str) -> tuple[Agent, BpfMapWriter]:
    """An agent writing `way`, on empty maps with the id allocators at 1."""
    writer = BpfMapWriter(dp, way)
    Agent(writer, "n").apply(node_pb2.NodeState(version=1))
    writer.set_meta(Meta.NEXT_FRONTEND_ID, 1)
    writer.set_meta(Meta.NEXT_BACKEND_ID, 1)
    return Agent(writer, "n"), writer


def test_batched_apply_programs_what_per_entry_writes_program(datapath):
    seen = {}
    for way in ("per-entry", "batch"):
        agent, writer = fresh(datapath, way)
        assert writer.write_way == ("batch" if way == "batch" else "per-entry: forced")
        seen[way] = []
        for st in states():
            agent.apply(st)
            seen[way].append(dump(writer))
            # What the maps hold reads back as what the agent planned.
            back = writer.read_programmed()
            assert back.frontends.keys() == agent.catalog.current().programmed.frontends.keys()
            assert back.backends == agent.catalog.current().programmed.backends
    assert [len(d["services"]) for d in seen["batch"]][-1] == 0
    assert all(d["services"] and d["backends"] for d in seen["batch"][:2])
    assert seen["batch"] == seen["per-entry"]


def test_delete_batch_skips_missing_keys(datapath):
    writer = BpfMapWriter(datapath, "batch")
    svc = writer.services
    keys = [SVC_KEY.pack(b"\0" * 10 + b"\xff\xff" + bytes([127, 91, 0, i]), 80, 6, 0, 0, 0) for i in range(6)]
    present = keys[1::2]
    svc.update_batch(b"".join(present), bytes(16 * len(present)), len(present))
    assert {bytes(k) for k in svc.keys()} >= set(present)
    assert svc.delete_batch(b"".join(keys), len(keys)) == len(present)
    assert not {bytes(k) for k in svc.keys()} & set(keys)


def test_forced_fallback_and_env(datapath, monkeypatch):
    assert BpfMapWriter(datapath).batch_refused is None  # this kernel (6.x) takes batches on hash maps
    assert BpfMapWriter(datapath).write_way == "batch"
    monkeypatch.setenv("SOCKLB_MAP_WRITES", "per-entry")
    assert BpfMapWriter(datapath).write_way == "per-entry: forced"
    with pytest.raises(LoadError):
        BpfMapWriter(datapath, "sometimes")


def server() -> tuple[subprocess.Popen, int]:
    p = subprocess.Popen([sys.executable, str(LOOP), "serve"], stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline())


@pytest.mark.parametrize("way", ["batch", "per-entry"])
def test_connects_never_fail_during_a_large_apply(datapath, cgroup, way):
    """The VIP's backend moves to another port in the same apply that
    writes 2000 other services (and back in the one removing them): every
    connect through it during both reaches a backend."""
    (old_srv, old_port), (new_srv, new_port) = server(), server()
    try:
        def probe(port):
            return {"name": "probe", "frontends": [{"address": VIP, "port": 80, "protocol": "PROTOCOL_TCP"}],
                    "backends": [{"address": "127.0.0.1", "port": port}]}

        small = parse_state(json.dumps({"version": 1, "services": [probe(old_port)]}))
        large = parse_state(json.dumps({"version": 2, "services": [service(i, n=10) for i in range(2000)]
                                        + [probe(new_port)]}))
        agent, writer = fresh(datapath, way)
        agent.apply(small)
        client = subprocess.Popen([sys.executable, str(LOOP), "connect", VIP, "80"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True,
                                  preexec_fn=lambda: (cgroup.path / "cgroup.procs").write_text("0"))
        try:
            assert client.stdout.readline().strip() == "started"
            agent.apply(large)
            agent.apply(small)
        finally:
            out, _ = client.communicate("", timeout=60)
        counts = json.loads(out.splitlines()[-1])
        assert counts["ok"] > 0, counts
        assert counts["failed"] == 0, counts
    finally:
        for srv in (old_srv, new_srv):
            srv.kill()
            srv.wait()


def test_agent_reports_the_map_writes_way(agent):
    state = {"version": 1, "services": [service(1)]}
    a = agent(state)
    caps = a.dump("info").get("capabilities", {})
    assert caps["map_batch"] == "yes", caps
    assert caps["map_writes"] == "batch", caps


def test_agent_forced_per_entry(agent):
    a = agent({"version": 1, "services": [service(1)]}, extra_args=["--map-writes", "per-entry"])
    caps = a.dump("info").get("capabilities", {})
    assert caps["map_writes"] == "per-entry: forced", caps
    assert caps["map_batch"] == "yes", caps
    backends = a.dump("backends")
    assert "10.1.1.1" in json.dumps(backends), backends
