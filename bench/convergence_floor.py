"""The peer of bench/convergence.py: a bare grpc.aio NodeSync server.

It speaks the same stream protocol as the control plane (Hello -> snapshot ->
deltas, Ack) with the same server options and the same "serialize once,
append the per-node nonce/from_version" trick, but has no store, no cache,
no node registry and no API: a write is one unary call that pushes a delta
(the ServiceState it is given) to every open stream. What the control plane
takes beyond this floor is what socklb itself costs.

    python -m bench.convergence_floor --listen 127.0.0.1:PORT   (prints "ready")

The push RPC is /bench.Floor/Push: request = a serialized ServiceState,
response = the new version as 8 bytes big-endian.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys

import grpc

from socklb.controlplane.server import SERVER_OPTIONS
from socklb.v1 import node_pb2, sync_pb2


class Floor:
    def __init__(self):
        self.version = 1
        self.streams: dict[int, list] = {}  # id -> [queue, version]
        self._ids = itertools.count()
        self._nonce = itertools.count(1)
        self.acks = 0

    async def sync(self, requests, context):
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("msg") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "hello first")
        sid = next(self._ids)
        queue: asyncio.Queue = asyncio.Queue()
        state = [queue, self.version]
        self.streams[sid] = state
        queue.put_nowait(sync_pb2.ControlMessage(nonce=str(next(self._nonce)), snapshot=sync_pb2.SnapshotChunk(
            version=self.version, last=True)).SerializeToString())

        async def read():
            try:
                async for msg in requests:
                    if msg.WhichOneof("msg") == "ack":
                        self.acks += 1
            finally:
                queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                msg = await queue.get()
                if msg is None:
                    break
                yield msg
        finally:
            reader.cancel()
            self.streams.pop(sid, None)

    async def push(self, request: bytes, context) -> bytes:
        svc = node_pb2.ServiceState.FromString(request)
        self.version += 1
        shared = sync_pb2.ControlMessage(delta=node_pb2.NodeStateDelta(upserts=[svc])).SerializeToString()
        for state in list(self.streams.values()):
            own = sync_pb2.ControlMessage(nonce=str(next(self._nonce)), delta=node_pb2.NodeStateDelta(
                from_version=state[1], version=self.version)).SerializeToString()
            state[0].put_nowait(shared + own)
            state[1] = self.version
        return self.version.to_bytes(8, "big")


async def amain(listen: str) -> int:
    floor = Floor()
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers([
        grpc.method_handlers_generic_handler("socklb.v1.NodeSync", {
            "Sync": grpc.stream_stream_rpc_method_handler(
                floor.sync, request_deserializer=sync_pb2.NodeMessage.FromString)}),
        grpc.method_handlers_generic_handler("bench.Floor", {
            "Push": grpc.unary_unary_rpc_method_handler(floor.push)}),
    ])
    if server.add_insecure_port(listen) == 0:
        print(f"error: cannot listen on {listen}", file=sys.stderr)
        return 1
    await server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0.5)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True)
    return asyncio.run(amain(p.parse_args(argv).listen))


if __name__ == "__main__":
    sys.exit(main())
