"""Node status written in coalesced batches (socklb/controlplane/nodes.py):
version progress waits for its own interval, other changes go soon, and
nothing pending is lost (flush_now on shutdown)."""
import asyncio

from socklb.controlplane import keys
from socklb.controlplane.nodes import NodeRegistry
from socklb.controlplane.store import open_store
from socklb.v1 import api_pb2, sync_pb2


def stored(store, name):
    kv = store.get(keys.node(name))
    return api_pb2.Node.FromString(kv.value) if kv is not None else None


async def until(pred, timeout=30.0):
    """Poll pred(); the bound only catches a hang."""
    end = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < end, "timed out"
        await asyncio.sleep(0.01)


def run(tmp_path, scenario, **options):
    """scenario(registry, store) on an event loop, with the registry's flush loop running."""
    store = open_store(f"embedded://{tmp_path}/s")

    async def main():
        reg = NodeRegistry(store, "r1", flush_interval=0.01, **options)
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
        assert (first.applied_version, first.health) == (1, api_pb2.NODE_HEALTH_READY)
        assert first.last_seen.seconds > 0
        for v in range(2, 50):
            reg.desired("n1", v)
            reg.acked("n1", v)
        # A change of another kind is written soon; n1's progress waits for its interval.
        reg.connected(sync_pb2.Hello(node="n2", applied_version=1), "peer", desired=49)
        await until(lambda: stored(store, "n2") is not None)
        assert stored(store, "n1").applied_version == 1
        # A NACK is no progress: written soon, with the versions it comes with.
        reg.nacked("n1", 50, "map full")
        await until(lambda: stored(store, "n1").last_error != "")
        n1 = stored(store, "n1")
        assert (n1.applied_version, n1.desired_version, n1.health) == (49, 49, api_pb2.NODE_HEALTH_DEGRADED)
        reg.acked("n2", 60)
        reg.desired("n2", 61)
        await reg.flush_now()  # shutdown: everything pending
        n2 = stored(store, "n2")
        assert (n2.applied_version, n2.desired_version, n2.health) == (60, 61, api_pb2.NODE_HEALTH_DEGRADED)

    run(tmp_path, scenario, progress_interval=3600)


def test_progress_is_written_within_its_interval(tmp_path):
    async def scenario(reg, store):
        reg.connected(sync_pb2.Hello(node="n1", applied_version=1), "peer", desired=1)
        reg.desired("n1", 7)
        await until(lambda: stored(store, "n1") is not None and stored(store, "n1").desired_version == 7)
        assert stored(store, "n1").health == api_pb2.NODE_HEALTH_DEGRADED
        reg.acked("n1", 7)
        await until(lambda: stored(store, "n1").applied_version == 7)
        assert stored(store, "n1").health == api_pb2.NODE_HEALTH_READY
        reg.disconnected("n1")
        await until(lambda: stored(store, "n1").health == api_pb2.NODE_HEALTH_DISCONNECTED)

    run(tmp_path, scenario, progress_interval=0.05)
