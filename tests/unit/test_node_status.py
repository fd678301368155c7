"""Node status written in coalesced batches (socklb/controlplane/nodes.py):
a node's record when its state changes (soon), the versions its ACKs move as
one record per replica (within progress_interval), everything pending on
shutdown; reads merge the two, and what was written outlives the replica."""
import asyncio

from socklb.controlplane import keys
from socklb.controlplane.nodes import NodeRegistry, mark_gone
from socklb.controlplane.store import open_store
from socklb.v1 import api_pb2, sync_pb2


def stored(store, name):
    """A node's own record as written (without its replica's versions)."""
    kv = store.get(keys.node(name))
    return api_pb2.Node.FromString(kv.value) if kv is not None else None


def listed(reg, name):
    """A node as ListNodes shows it (its record merged with the versions)."""
    found = [n for n in reg.list() if n.name == name]
    return found[0] if found else None


def state(n):
    return n.applied_version, n.desired_version, n.health


async def until(pred, timeout=30.0):
    """Poll pred(); the bound only catches a hang."""
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


def run(tmp_path, scenario, replica="r1", **options):
    """scenario(registry, store) on an event loop, with the registry's flush loop running."""
    store = open_store(f"embedded://{tmp_path}/s")

    async def main():
        reg = NodeRegistry(store, replica, flush_interval=0.01, **options)
        task = asyncio.create_task(reg.run())
        try:
            await scenario(reg, store)
        finally:
            task.cancel()

    try:
        asyncio.run(main())
    finally:
        store.close()


def test_progress_is_coalesced_and_flushed_on_shutdown(tmp_path):
    async def scenario(reg, store):
        reg.connected(sync_pb2.Hello(node="n1", applied_version=1), "peer", desired=1)
        await until(lambda: stored(store, "n1") is not None)
        first = stored(store, "n1")
        assert state(first) == (1, 1, api_pb2.NODE_HEALTH_READY)
        assert first.last_seen.seconds > 0
        for v in range(2, 50):
            reg.desired("n1", v)
            reg.acked("n1", v)
        # A change of another kind is written soon; n1's progress waits for its interval.
        reg.connected(sync_pb2.Hello(node="n2", applied_version=1), "peer", desired=49)
        await until(lambda: stored(store, "n2") is not None)
        assert listed(reg, "n1").applied_version == 1
        # A NACK is no progress: n1's record is written soon, with the versions it comes with.
        reg.nacked("n1", 50, "map full")
        await until(lambda: stored(store, "n1").last_error != "")
        assert state(stored(store, "n1")) == (49, 49, api_pb2.NODE_HEALTH_DEGRADED)
        assert listed(reg, "n1").last_error == "version 50: map full"
        reg.acked("n2", 60)
        reg.desired("n2", 61)
        await reg.flush_now()  # shutdown: everything pending
        assert state(listed(reg, "n2")) == (60, 61, api_pb2.NODE_HEALTH_DEGRADED)
        assert stored(store, "n2").applied_version == 1, "progress is the versions record's, not the node's"

    run(tmp_path, scenario, progress_interval=3600)


def test_progress_is_written_within_its_interval(tmp_path):
    async def scenario(reg, store):
        reg.connected(sync_pb2.Hello(node="n1", applied_version=1), "peer", desired=1)
        reg.desired("n1", 7)
        await until(lambda: listed(reg, "n1") is not None and listed(reg, "n1").desired_version == 7)
        assert listed(reg, "n1").health == api_pb2.NODE_HEALTH_DEGRADED
        reg.acked("n1", 7)
        await until(lambda: listed(reg, "n1").applied_version == 7)
        assert listed(reg, "n1").health == api_pb2.NODE_HEALTH_READY
        reg.disconnected("n1")
        await until(lambda: listed(reg, "n1").health == api_pb2.NODE_HEALTH_DISCONNECTED)
        assert state(stored(store, "n1")) == (7, 7, api_pb2.NODE_HEALTH_DISCONNECTED)
        # No node connected here any more: the versions record goes.
        await until(lambda: store.get(keys.node_versions("r1")) is None)
        assert state(listed(reg, "n1")) == (7, 7, api_pb2.NODE_HEALTH_DISCONNECTED)

    run(tmp_path, scenario, progress_interval=0.05)


def test_an_update_acked_by_every_node_is_one_put(tmp_path):
    """The rule this layout is for: version progress of any number of nodes
    is one write of the replica's versions record, not one per node."""
    async def scenario(reg, store):
        names = [f"n{i}" for i in range(200)]
        for name in names:
            reg.connected(sync_pb2.Hello(node=name, applied_version=1), "peer", desired=1)
        await reg.flush_now()
        _, before = store.range(keys.NODES)
        for name in names:
            reg.desired(name, 2)
            reg.acked(name, 2)
        await reg.flush_now()
        _, after = store.range(keys.NODES)
        assert after == before + 1
        assert {state(n) for n in reg.list()} == {(2, 2, api_pb2.NODE_HEALTH_READY)}

    run(tmp_path, scenario, progress_interval=3600)


def test_status_outlives_the_replica(tmp_path):
    """What `socklb nodes` showed is there after the control plane stopped
    and a new one (another replica name) opened the same store: each node's
    last versions, its NACK, DISCONNECTED."""
    async def first(reg, store):
        for name in ("n1", "n2"):
            reg.connected(sync_pb2.Hello(node=name, applied_version=3), "peer", desired=3)
        reg.desired("n1", 9)
        reg.acked("n1", 9)
        reg.desired("n2", 9)
        reg.nacked("n2", 9, "map full")
        await reg.flush_now()
        for name in ("n1", "n2"):  # the streams end on shutdown
            reg.disconnected(name)
        await reg.flush_now()

    run(tmp_path, first, replica="old", progress_interval=3600)

    async def second(reg, store):
        assert store.get(keys.node_versions("old")) is None
        n1, n2 = listed(reg, "n1"), listed(reg, "n2")
        assert state(n1) == (9, 9, api_pb2.NODE_HEALTH_DISCONNECTED)
        assert state(n2) == (3, 9, api_pb2.NODE_HEALTH_DISCONNECTED)
        assert n2.last_error == "version 9: map full"
        assert n1.replica == "old"

    run(tmp_path, second, replica="new", progress_interval=3600)


def test_a_dead_replicas_versions_reach_the_node_records(tmp_path):
    """A replica that dies leaves its versions record behind: the leader
    marks its nodes DISCONNECTED with those versions, then removes it. A
    replica that was only paused lists its nodes again: connected."""
    async def scenario(reg, store):
        reg.connected(sync_pb2.Hello(node="n1", applied_version=1), "peer", desired=1)
        await reg.flush_now()
        reg.desired("n1", 5)
        reg.acked("n1", 5)
        await reg.flush_now()
        written = api_pb2.NodeVersions.FromString(store.get(keys.node_versions("r1")).value).written.ToSeconds()
        later = written + reg.stale_after + 1
        assert [n.health for n in reg.list(now=later)] == [api_pb2.NODE_HEALTH_DISCONNECTED]
        lead = store.campaign("duties", "me", 5)
        await until(lead.is_leader)
        assert mark_gone(store, lead.fence(), timeout=600, stale_after=reg.stale_after, now=later) == ["n1"]
        assert state(stored(store, "n1")) == (5, 5, api_pb2.NODE_HEALTH_DISCONNECTED)
        assert store.get(keys.node_versions("r1")) is None
        # r1 was paused, not dead: its next versions record lists n1 again.
        reg.acked("n1", 6)
        reg.desired("n1", 6)
        await reg.flush_now()
        assert state(listed(reg, "n1")) == (6, 6, api_pb2.NODE_HEALTH_READY)
        assert mark_gone(store, lead.fence(), timeout=600, stale_after=reg.stale_after) == []
        lead.close()

    run(tmp_path, scenario, progress_interval=3600)


def test_a_nack_is_shown_until_an_ack_clears_it(tmp_path):
    async def scenario(reg, store):
        reg.connected(sync_pb2.Hello(node="n1", applied_version=1), "peer", desired=2)
        reg.nacked("n1", 2, "map full")
        await until(lambda: listed(reg, "n1") is not None and listed(reg, "n1").last_error != "")
        assert listed(reg, "n1").health == api_pb2.NODE_HEALTH_DEGRADED
        reg.acked("n1", 1)  # an older version's ACK: the NACK is no longer the node's last answer
        await until(lambda: stored(store, "n1").last_error == "")
        reg.desired("n1", 3)
        reg.acked("n1", 3)
        await reg.flush_now()
        assert (listed(reg, "n1").last_error, state(listed(reg, "n1"))) == ("", (3, 3, api_pb2.NODE_HEALTH_READY))

    run(tmp_path, scenario, progress_interval=3600)
