"""The agent's parts without a kernel: the in-memory map writer holds what a
plan writes (read back as the BPF writer reads its maps), the catalog names
ids for statistics and terminations (removed backends too), and the sync
client's hooks see each Hello and reply."""
import random
import socket
import time

from socklb.dataplane import layout
from socklb.dataplane.agent import Agent
from socklb.dataplane.catalog import BackendName, FrontendName, Index
from socklb.dataplane.sockstats import SocketSample
from socklb.dataplane.stats import MemoryStatistics
from socklb.dataplane.sync_client import SyncClient, SyncHooks
from socklb.dataplane.termjobs import MemoryTerminations
from socklb.dataplane.termtypes import Target
from socklb.dataplane.writer import MemoryMapWriter
from socklb.lb.addresses import addr16
from socklb.v1 import node_pb2, types_pb2

from test_sync import Server, wait_for


def svc(name, vip, backends, port=80, keep=()):
    return node_pb2.ServiceState(
        name=name, frontends=[types_pb2.Frontend(address=vip, port=port)],
        backends=[types_pb2.Backend(address=b, port=8080) for b in backends],
        keep_flows=[types_pb2.Backend(address=b, port=8080) for b in keep])


def without_names(prog):
    return {k: fe.__class__(fe.id, fe.key, fe.selection, fe.affinity_timeout, fe.slots)
            for k, fe in prog.frontends.items()}


def test_memory_writer_holds_what_each_plan_wrote():
    """Random full states and deltas: the writer's entries, read back, are
    the programmed state the agent planned (the maps hold no service names),
    and the version is the last applied."""
    rnd = random.Random(7)
    writer = MemoryMapWriter()
    agent = Agent(writer, "n")
    names = [f"s{i}" for i in range(8)]

    def random_service(name):
        i = names.index(name)
        return svc(name, f"127.96.0.{i + 1}", [f"10.0.{i}.{b}" for b in rnd.sample(range(1, 9), rnd.randint(0, 5))])

    version = 1
    agent.apply(node_pb2.NodeState(version=version, services=[random_service(n) for n in names[:4]]))
    for _ in range(60):
        version += 1
        before = Index(agent.catalog.current().programmed)
        if rnd.random() < 0.2:
            agent.apply(node_pb2.NodeState(version=version, services=[
                random_service(n) for n in sorted(rnd.sample(names, rnd.randint(0, len(names))))]))
        else:
            have = [s.name for s in agent.state().services]
            removals = rnd.sample(have, min(len(have), rnd.randint(0, 1)))
            upserts = [random_service(n) for n in rnd.sample([n for n in names if n not in removals], 2)]
            agent.apply_delta(node_pb2.NodeStateDelta(from_version=version - 1, version=version,
                                                      upserts=upserts, removals=removals))
        programmed = agent.catalog.current().programmed
        back = writer.read_programmed()
        assert without_names(back) == without_names(programmed)
        assert back.backends == programmed.backends
        assert writer.read_version() == version == agent.applied_version
        # Every backend the apply removed is named as the whole previous state names it
        # (a delta names them from the frontends it touched only).
        removed = agent.catalog.removed()
        for b in before.programmed.backends.values():
            if b.id not in programmed.backends:
                assert removed[(b.frontend_id, b.id)] == before.backend_name(b)


def test_an_agent_restarted_on_the_same_maps_reads_them_back():
    writer = MemoryMapWriter()
    Agent(writer, "n").apply(node_pb2.NodeState(version=3, services=[svc("web", "127.96.0.10", ["10.0.0.1"])]))
    again = Agent(writer, "n")
    assert again.applied_version == 3 and again.applied is None  # no names and weights: needs a full state
    (fe,) = again.catalog.current().frontends()
    assert fe.service == "" and len(again.catalog.current().backends()) == 1
    # The full state keeps the ids the maps hold.
    r = again.apply(node_pb2.NodeState(version=4, services=[svc("web", "127.96.0.10", ["10.0.0.1"])]))
    assert (r.backends_written, r.backends_removed) == (0, 0)
    assert again.catalog.current().frontends()[0].id == fe.id


def test_the_catalog_names_programmed_and_removed_ids():
    agent = Agent(MemoryMapWriter(), "n")
    agent.apply(node_pb2.NodeState(version=1, services=[svc("web", "127.96.0.10", ["10.0.0.1", "10.0.0.2"]),
                                                        svc("dns", "fd00::53", ["fd00::1"], port=53)]))
    index = agent.catalog.current()
    web, dns = sorted(index.frontends(), key=lambda f: f.service, reverse=True)
    assert index.frontend_name(web.id) == FrontendName("web", "127.96.0.10", 80, socket.IPPROTO_TCP)
    assert index.frontend_name(dns.id) == FrontendName("dns", "fd00::53", 53, socket.IPPROTO_TCP)
    assert index.frontend_name(999) is None
    assert index.frontend_services() == {web.id: "web", dns.id: "dns"}
    gone = next(b for b in index.backends() if b.addr == addr16("10.0.0.2"))
    agent.apply_delta(node_pb2.NodeStateDelta(from_version=1, version=2, upserts=[
        svc("web", "127.96.0.10", ["10.0.0.1"], keep=["10.0.0.2"])]))
    # Removed, its flows kept: still named (statistics), still terminable by address.
    assert agent.catalog.removed("web") == {(web.id, gone.id): BackendName("web", "10.0.0.2", 8080)}
    assert agent.catalog.backend_names()[(web.id, gone.id)] == ("web", "10.0.0.2", 8080)
    assert list(agent.terminations.jobs) == []  # keep_flows: nothing to terminate
    report = agent.terminate("web", [types_pb2.Backend(address="10.0.0.2", port=8080)], True, "t1")
    (job,) = agent.terminations.jobs
    assert job.targets == (Target(web.id, gone.id),) and job.dsts == (("10.0.0.2", 8080),)
    assert report.error and report.id == "t1" and agent.terminations.recent() == [report]


def test_memory_terminations_keep_the_jobs_an_apply_causes():
    terminations = MemoryTerminations("n")
    heard = []
    terminations.listen(heard.append)
    agent = Agent(MemoryMapWriter(), "n", terminations=terminations)
    agent.apply(node_pb2.NodeState(version=1, services=[svc("web", "127.96.0.10", ["10.0.0.1", "10.0.0.2"]),
                                                        svc("old", "127.96.0.11", ["10.0.0.3"])]))
    agent.apply(node_pb2.NodeState(version=2, services=[svc("web", "127.96.0.10", ["10.0.0.1"])]))
    jobs = {j.service: j for j in terminations.jobs}
    assert jobs["web"].trigger == "backend-removed" and list(jobs["web"].names.values()) == [("10.0.0.2", 8080)]
    assert jobs["old"].trigger == "service-removed" and jobs["old"].dsts is None
    assert heard == []  # caused jobs are kept silently: the node has no sockets


def test_memory_statistics_are_named_through_the_catalog():
    stats = MemoryStatistics()
    agent = Agent(MemoryMapWriter(), "n", statistics=stats)
    agent.apply(node_pb2.NodeState(version=1, services=[svc("web", "127.96.0.10", ["10.0.0.1", "10.0.0.2"])]))
    (fe,) = agent.catalog.current().frontends()
    b1, b2 = agent.catalog.current().backends()
    stats.values[layout.Counter.TRANSLATED] = 5
    stats.counts = {(fe.id, b1.addr, layout.port_be(8080)): 2, (fe.id + 1, b1.addr, layout.port_be(8080)): 9}
    sample = dict(netns="net:[1]", protocol="tcp", family=socket.AF_INET, state=1, bytes_sent=10, bytes_received=20,
                  srtt_us=100, retransmits=0, drops=0)
    stats.samples = [SocketSample(cookie=1, frontend_id=fe.id, backend_id=b1.id, **sample),
                     SocketSample(cookie=2, frontend_id=fe.id, backend_id=b2.id, **sample)]
    agent.apply(node_pb2.NodeState(version=2, services=[svc("web", "127.96.0.10", ["10.0.0.1"])]))
    parts = agent.stats_parts()
    assert parts["counters"]().translations == 5
    assert [(c.service, c.backend_address, c.backend_port, c.active) for c in parts["flows"]()] == [
        ("web", "10.0.0.1", 8080, 2)]  # a frontend that is not programmed is left out
    # The removed backend's socket is still named (its flow may have been kept).
    assert [(s.service, s.backend_address, s.sockets) for s in parts["socket_stats"]()] == [
        ("web", "10.0.0.1", 1), ("web", "10.0.0.2", 1)]


def test_sync_hooks_see_the_hello_and_each_reply(tmp_path):
    seen = []
    server = Server(f"embedded://{tmp_path}/store")
    client = SyncClient(Agent(MemoryMapWriter(), "n"), [server.addr], stats_interval=60,
                        hooks=SyncHooks(hello=lambda: seen.append(("hello", time.monotonic())),
                                        replied=lambda reply, t: seen.append((reply.WhichOneof("msg"), t))))
    client.start()
    try:
        wait_for(lambda: any(kind == "ack" for kind, _ in seen), "the snapshot's ACK")
    finally:
        client.stop()
        server.close()
    (hello, t_hello), (ack, t_received) = seen[:2]
    assert (hello, ack) == ("hello", "ack") and t_hello <= t_received <= time.monotonic()
