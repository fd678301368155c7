"""The API's Watch stream: the changes of services, workloads, policies and
local redirects in revision order, each event naming its kind
(WatchEvent.kind); from revision 0, first every current resource as a PUT.

One read and one watch of the configuration range (keys.CONFIG_START ..
CONFIG_END), which holds these four kinds: separate watches per prefix could
not be merged in revision order (a watch says nothing about revisions with no
event under its prefix)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from google.protobuf.message import Message

from socklb.v1 import api_pb2, policy_pb2

from . import keys
from .store import Event, Store


@dataclass(frozen=True)
class Watched:
    prefix: str
    kind: int  # api_pb2.ResourceKind
    message: type[Message]
    field: str  # the WatchEvent field that carries a PUT's resource


WATCHED = (
    Watched(keys.SERVICES, api_pb2.RESOURCE_KIND_SERVICE, api_pb2.Service, "service"),
    Watched(keys.WORKLOADS, api_pb2.RESOURCE_KIND_WORKLOAD, policy_pb2.Workload, "workload"),
    Watched(keys.POLICIES, api_pb2.RESOURCE_KIND_POLICY, policy_pb2.Policy, "policy"),
    Watched(keys.REDIRECTS, api_pb2.RESOURCE_KIND_LOCAL_REDIRECT, policy_pb2.LocalRedirect, "local_redirect"),
)


class WatchEnded(Exception):
    """The store's watch stopped (compacted while lagging, store gone): the
    client re-lists and watches again."""


def _watched(key: str) -> Watched | None:
    for w in WATCHED:
        if key.startswith(w.prefix):
            return w
    return None


def _event(w: Watched, key: str, value: bytes | None, revision: int) -> api_pb2.WatchEvent:
    ev = api_pb2.WatchEvent(revision=revision, name=keys.resource_name(w.prefix, key), kind=w.kind,
                            type=api_pb2.WatchEvent.TYPE_PUT if value is not None else api_pb2.WatchEvent.TYPE_DELETE)
    if value is not None:
        resource = getattr(ev, w.field)
        resource.MergeFromString(value)
        resource.resource_version = revision
    return ev


def _events(events: list[Event]) -> list[api_pb2.WatchEvent]:
    return [_event(w, ev.key, ev.value if ev.type == "put" else None, ev.revision)
            for ev in events if (w := _watched(ev.key)) is not None]


def read_current(store: Store) -> tuple[list[api_pb2.WatchEvent], int]:
    """Every resource of the four kinds as a PUT event, in revision order, and
    the one revision they were all read at (the stream goes on after it)."""
    kvs, rev = store.range(keys.CONFIG_START, end=keys.CONFIG_END)
    current = [_event(w, kv.key, kv.value, kv.mod_revision) for kv in kvs if (w := _watched(kv.key)) is not None]
    current.sort(key=lambda ev: (ev.revision, ev.kind, ev.name))
    return current, rev


async def changes(store: Store, from_revision: int) -> AsyncIterator[api_pb2.WatchEvent]:
    """The events after from_revision (0: the current resources, then the
    events after them), until the caller stops. Raises what store.watch
    raises (Compacted, Unavailable), and WatchEnded."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[list[api_pb2.WatchEvent] | None] = asyncio.Queue()

    def on_events(events: list[Event]) -> None:  # on the store's watch thread
        if not events:  # the store's rule: the watch stopped (Watch.error says why)
            loop.call_soon_threadsafe(queue.put_nowait, None)
            return
        ours = _events(events)
        if ours:  # never an empty batch: that would read as the end
            loop.call_soon_threadsafe(queue.put_nowait, ours)

    current, start = [], from_revision + 1
    if from_revision == 0:
        current, rev = await asyncio.to_thread(read_current, store)
        start = rev + 1
    # Watching before sending the current resources: a slow reader cannot
    # let the history it needs be compacted away.
    watch = await asyncio.to_thread(store.watch, keys.CONFIG_START, start, on_events, end=keys.CONFIG_END)
    try:
        for ev in current:
            yield ev
        while True:
            batch = await queue.get()
            if batch is None:
                raise WatchEnded(str(watch.error))
            for ev in batch:
                yield ev
    finally:
        watch.cancel()
