"""Workloads, policy sets and local redirects on the sync stream, end to end in
one process: a real control plane (grpc.aio, embedded store) fed by writes
to the store, and raw node streams (no agent) that see exactly what is sent:
snapshots, deltas, chunks and digests."""
import queue
import threading

import grpc

from socklb.controlplane import keys, policy_compute
from socklb.controlplane import sync as sync_module
from socklb.controlplane.server import FEEDS
from socklb.controlplane.store import StoreError, open_store
from socklb.controlplane.sync import SyncService
from socklb.dataplane.agent import Agent
from socklb.dataplane.sync_client import SyncClient, snapshot_state
from socklb.dataplane.writer import MemoryMapWriter
from socklb.lb.digest import entries_digest, state_digest
from socklb.v1 import api_pb2, node_pb2, sync_pb2, sync_pb2_grpc

from test_policy_cache import cache_with
from test_policy_compute import ALLOW, DENY, UDP, policy, redirect, rule, service, workload
from test_sync import Server, wait_for


class RawNode:
    """A node's stream without an agent: it keeps the state the messages
    make, and ACKs each update."""

    def __init__(self, addr: str, name: str, version: int = 0, digest: bytes = b""):
        self.channel = grpc.insecure_channel(addr)
        self.out: queue.Queue = queue.Queue()
        self.inbox: queue.Queue = queue.Queue()
        self.out.put(sync_pb2.NodeMessage(hello=sync_pb2.Hello(node=name, applied_version=version,
                                                               state_digest=digest)))
        self.responses = sync_pb2_grpc.NodeSyncStub(self.channel).Sync(iter(self.out.get, None))
        self.state = node_pb2.NodeState(version=version)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for msg in self.responses:
                self.inbox.put(msg)
        except grpc.RpcError:
            pass
        self.inbox.put(None)

    def update(self, timeout: float = 30) -> tuple[str, object]:
        """The next whole update, applied and ACKed: ("snapshot", its chunks) or ("delta", the delta)."""
        chunks = []
        while True:
            msg = self.inbox.get(timeout=timeout)
            assert msg is not None, "the stream ended"
            if msg.WhichOneof("msg") == "snapshot":
                chunks.append(msg.snapshot)
                if not msg.snapshot.last:
                    continue
                self.state = snapshot_state(chunks)
                self._ack(self.state.version, msg.nonce)
                return "snapshot", chunks
            if msg.WhichOneof("msg") == "delta":
                d = msg.delta
                assert d.from_version == self.state.version
                apply_delta(self.state, d)
                self._ack(d.version, msg.nonce)
                return "delta", d

    def _ack(self, version: int, nonce: str) -> None:
        self.out.put(sync_pb2.NodeMessage(ack=sync_pb2.Ack(version=version, nonce=nonce)))

    def close(self) -> None:
        self.out.put(None)
        self.responses.cancel()
        self.channel.close()


def apply_delta(state: node_pb2.NodeState, d: node_pb2.NodeStateDelta) -> None:
    """What a node does with a delta: entries replaced whole by name."""
    for field, upserts, removals in (("services", d.upserts, d.removals),
                                     ("workloads", d.workload_upserts, d.workload_removals),
                                     ("policy_sets", d.policy_set_upserts, d.policy_set_removals),
                                     ("redirects", d.redirect_upserts, d.redirect_removals)):
        table = {e.name: e for e in getattr(state, field)}
        for name in removals:
            del table[name]
        table.update((e.name, e) for e in upserts)
        state.ClearField(field)
        getattr(state, field).extend(table[n] for n in sorted(table))
    state.version = d.version


def put(server, key: str, message) -> int:
    return server.store.txn([], puts=[(key, message.SerializeToString())])


def delete(server, key: str) -> int:
    return server.store.txn([], deletes=[key])


def caught_up(server) -> bool:
    """Whether the control plane's cache holds what the store holds, every
    resource at the revision that last wrote it."""
    async def check():
        cache = server.cp.cache
        held = {"services": cache.services, "workloads": cache.policy.workloads,
                "policies": cache.policy.policies, "redirects": cache.policy.redirects}
        for kind, (prefix, _) in FEEDS.items():
            kvs, _ = server.store.range(prefix)
            if {keys.resource_name(prefix, kv.key): kv.mod_revision for kv in kvs} != \
                    {name: m.resource_version for name, m in held[kind].items()}:
                return False
        return True
    return server.call(check())


def connect(server, name: str, version: int = 0, digest: bytes = b"") -> RawNode:
    """A raw node, once the control plane has seen every write so far, and
    once it has opened the node's stream: what it sends first answers the
    Hello, not a write the test makes next."""
    wait_for(lambda: caught_up(server), "the cache to catch up with the store")
    before = server.cp.sync.sessions.get(name)  # a stream of the node that is closing
    node = RawNode(server.addr, name, version, digest)
    wait_for(lambda: server.cp.sync.sessions.get(name) not in (None, before), "the node's stream to open")
    return node


def names(entries):
    return [e.name for e in entries]


DNS = service("dns", ("10.96.0.10", 53, UDP))
CLIENT = workload("client", "n1", {"app": "client"})
CACHE = workload("cache", "n1", {"app": "node-dns"}, ["10.0.1.1"])
OTHER = workload("other", "n2", {"app": "client"})
P1 = policy("p1", {"app": "client"}, rule(ALLOW, services=["dns"]), rule(DENY, cidrs=["10.0.0.0/8"]))
SET = policy_compute.set_name(["p1"])


def test_a_node_receives_its_workloads_sets_and_redirects_in_snapshots_and_deltas(server):
    server.api.PutService(api_pb2.PutServiceRequest(service=DNS))
    for key, msg in ((keys.workload("client"), CLIENT), (keys.workload("cache"), CACHE),
                     (keys.workload("other"), OTHER), (keys.policy("p1"), P1),
                     (keys.redirect("local-dns"), redirect("local-dns", service_name="dns"))):
        put(server, key, msg)
    n1, n2 = connect(server, "n1"), connect(server, "n2")
    try:
        kind, _ = n1.update()
        st = n1.state
        assert kind == "snapshot" and names(st.services) == ["dns"]
        assert names(st.workloads) == ["cache", "client"] and names(st.policy_sets) == [SET]
        assert {w.name: w.policy_set for w in st.workloads} == {"cache": "", "client": SET}
        (ps,) = st.policy_sets
        assert [(v.service, v.action) for v in ps.frontends] == [("dns", ALLOW)]
        assert [p.prefix for p in ps.prefixes] == ["10.0.0.0/8"]
        (r,) = st.redirects
        assert (r.name, list(r.exempt), [b.address for b in r.backends]) == ("local-dns", ["cache"], ["10.0.1.1"])
        kind, _ = n2.update()
        assert kind == "snapshot" and names(n2.state.workloads) == ["other"] and n2.state.policy_sets[0].name == SET
        assert not n2.state.redirects  # no local match on n2

        # A rule edit: the set is upserted, its name and every workload stay.
        edited = policy("p1", {"app": "client"}, rule(DENY, services=["dns"]))
        edit_rev = put(server, keys.policy("p1"), edited)
        for n in (n1, n2):
            kind, d = n.update()
            assert kind == "delta" and d.version == edit_rev
            assert names(d.policy_set_upserts) == [SET] and not d.workload_upserts and not d.upserts
            assert [v.action for v in n.state.policy_sets[0].frontends] == [DENY]

        # The last local backend goes: its workload and the redirect leave n1; n2 gets nothing.
        delete(server, keys.workload("cache"))
        kind, d = n1.update()
        assert (kind, list(d.workload_removals), list(d.redirect_removals)) == ("delta", ["cache"], ["local-dns"])
        assert not n1.state.redirects
        rev = put(server, keys.workload("other"), workload("other", "n2", {"app": "db"}))
        kind, d = n2.update()
        assert kind == "delta" and (d.from_version, d.version) == (edit_rev, rev)  # nothing in between for n2
        assert names(d.workload_upserts) == ["other"] and list(d.policy_set_removals) == [SET]
        assert not n2.state.policy_sets

        # What the node holds is what the control plane computes for it, digest included.
        cache = server.cp.cache
        wait_for(lambda: cache.revision == rev, "the cache at the last write")
        expected = cache.state_for("n1")
        assert n1.state.workloads == expected.workloads and n1.state.policy_sets == expected.policy_sets
        assert state_digest(n1.state) == server.call(_digest(server.cp.sync, "n1"))
    finally:
        n1.close()
        n2.close()


async def _digest(sync: SyncService, node: str) -> bytes:
    return sync._snapshot(node)[0]


def test_equal_digests_skip_the_snapshot(server):
    server.api.PutService(api_pb2.PutServiceRequest(service=DNS))
    put(server, keys.workload("client"), CLIENT)
    put(server, keys.policy("p1"), P1)
    first = connect(server, "n1")
    try:
        assert first.update()[0] == "snapshot" and first.state.policy_sets
    finally:
        first.close()
    held = first.state
    again = connect(server, "n1", held.version, state_digest(held))
    try:
        rev = put(server, keys.workload("client"), workload("client", "n1", {"app": "client"}, bypass_socket_lb=True))
        kind, d = again.update()  # the first message after the Hello is the write's delta: no snapshot
        assert kind == "delta" and d.from_version == held.version and d.version == rev
        assert names(d.workload_upserts) == ["client"] and d.workload_upserts[0].bypass_socket_lb
    finally:
        again.close()
    # A different digest (a node that lost its policy state) gets a snapshot.
    stale = node_pb2.NodeState(version=held.version, services=held.services)
    third = connect(server, "n1", held.version, state_digest(stale))
    try:
        kind, _ = third.update()
        assert kind == "snapshot" and names(third.state.workloads) == ["client"]
    finally:
        third.close()


def test_a_reloaded_feed_resyncs_the_nodes_and_keeps_watching(server):
    """The watch that dies (compaction, store restart) reloads every
    resource: nodes get a snapshot, and later writes still arrive."""
    server.api.PutService(api_pb2.PutServiceRequest(service=DNS))
    put(server, keys.workload("client"), workload("client", "n1", {"app": "client"}, ["10.0.0.7"]))
    n1 = connect(server, "n1")
    try:
        assert n1.update()[0] == "snapshot"
        put(server, keys.policy("p1"), P1)  # written while the feed is being replaced
        cp = server.cp
        cp._loop.call_soon_threadsafe(cp._on_events, [], cp._gen, StoreError("test: watch died"))
        while n1.update()[0] != "snapshot":  # the policy may arrive first as a delta, then the resync
            pass
        assert names(n1.state.policy_sets) == [SET]
        rev = put(server, keys.redirect("r"), redirect("r", {"app": "client"}, service_name="dns"))
        kind, d = n1.update()
        assert (kind, names(d.redirect_upserts), d.version) == ("delta", ["r"], rev)
    finally:
        n1.close()


def test_a_starting_control_plane_loads_what_the_store_holds(tmp_path):
    url = f"embedded://{tmp_path}/store"
    store = open_store(url)
    store.txn([], puts=[(keys.service("dns"), DNS.SerializeToString()),
                        (keys.workload("client"), CLIENT.SerializeToString()),
                        (keys.workload("cache"), CACHE.SerializeToString()),
                        (keys.policy("p1"), P1.SerializeToString()),
                        (keys.redirect("local-dns"), redirect("local-dns", service_name="dns").SerializeToString())])
    store.close()
    started = Server(url)
    n1 = None
    try:
        n1 = connect(started, "n1")
        assert n1.update()[0] == "snapshot"
        assert (names(n1.state.workloads), names(n1.state.policy_sets), names(n1.state.redirects)) == \
            (["cache", "client"], [SET], ["local-dns"])
        assert {w.resource_version for w in started.cp.cache.policy.workloads.values()} == {n1.state.version}
    finally:
        if n1 is not None:
            n1.close()
        started.close()


def test_snapshot_chunks_stay_bounded_and_assemble_to_the_state(monkeypatch):
    monkeypatch.setattr(sync_module, "SNAPSHOT_CHUNK_BYTES", 300)
    ws = [workload(f"w{i:02}", "n1", {"app": "web" if i % 2 else "db"}, [f"10.0.0.{i}"]) for i in range(20)]
    ps = [policy("web", {"app": "web"}, rule(ALLOW, cidrs=[f"10.{i}.0.0/16" for i in range(10)])),
          policy("db", {"app": "db"}, rule(DENY, services=["dns"]))]
    cache = cache_with([DNS], ws, ps, [redirect("local-dns", {"app": "web"}, "dns")])
    sync = SyncService(cache, registry=None, replica="r")
    digest, data = sync._snapshot("n1")
    chunks = [sync_pb2.ControlMessage.FromString(b).snapshot for b in data]
    assert len(chunks) >= 4 and [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    for c in chunks:
        sizes = [e.ByteSize() for f in ("services", "workloads", "policy_sets", "redirects") for e in getattr(c, f)]
        assert sum(sizes) <= 300 or len(sizes) == 1
    st = snapshot_state(chunks)
    assert st == cache.state_for("n1") and digest == state_digest(st)
    # A node without workloads shares the services-only snapshot, digest as before policy existed.
    digest2, _ = sync._snapshot("n9")
    assert digest2 == entries_digest(cache.entries_for("n9"))


def test_the_sync_client_hands_the_agent_the_whole_state(server):
    put(server, keys.workload("client"), CLIENT)
    put(server, keys.policy("p1"), P1)
    wait_for(lambda: caught_up(server), "the cache to catch up with the store")
    agent = Agent(MemoryMapWriter(), "n1")
    states = []
    real_apply = agent.apply
    agent.apply = lambda st, **kw: states.append(st) or real_apply(st, **kw)
    client = SyncClient(agent, [server.addr], stats_interval=0.2)
    client.start()
    try:
        wait_for(lambda: states, "a snapshot applied")
        assert names(states[0].workloads) == ["client"] and names(states[0].policy_sets) == [SET]
    finally:
        client.stop()


def test_a_services_only_state_digests_as_before_policy_existed():
    """Nodes upgraded with their state resume without a snapshot: the digest of
    a state with no workloads, sets or redirects is the one the previous
    release computed (pinned)."""
    st = node_pb2.NodeState(services=[node_pb2.ServiceState(name="a", selection=1)])
    assert state_digest(st).hex() == "ab773678a37c5d0d3aa18815956e8dc77ac19fc8c1035a16ccf72f4abb0e3d99"
    assert state_digest(st) == entries_digest({"a": st.services[0]})
    ws = [node_pb2.WorkloadState(name="w1", policy_set="ps-1"), node_pb2.WorkloadState(name="w2")]
    with_policy = node_pb2.NodeState(version=5, services=st.services, workloads=ws)
    assert state_digest(with_policy) != state_digest(st)
    # Independent of version and order, as for services.
    assert state_digest(node_pb2.NodeState(services=st.services, workloads=ws[::-1])) == state_digest(with_policy)
    # The kinds do not mix: the same entry as a set or as a redirect hashes differently.
    assert state_digest(node_pb2.NodeState(policy_sets=[node_pb2.PolicySetState(name="x")])) != \
        state_digest(node_pb2.NodeState(redirects=[node_pb2.RedirectState(name="x")]))
