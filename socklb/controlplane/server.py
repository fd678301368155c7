"""socklb-controlplane: the API, the sync streams, and the loop that turns
store changes into node updates.

    store watch ──▶ SnapshotCache.apply ──▶ SyncService.publish ──▶ node streams

One watch of the configuration range (keys.CONFIG_START..CONFIG_END) feeds
the cache: its batches come in revision order, so every update is labelled
with a revision whose changes, of every kind, it includes.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Iterable

import grpc
from google.protobuf.message import Message
from opentelemetry.trace import SpanKind

from socklb.v1 import api_pb2, api_pb2_grpc, policy_pb2

from socklb.lb.addresses import split_host_port
from socklb.observability import metrics, tracing
from socklb.observability.grpcutil import add_health_and_reflection_aio
from socklb.observability.logs import setup_logging

from . import auth, keys, terminations, workers
from .api import LoadBalancerServicer, MalformedRequests
from .cache import SnapshotCache
from .nodes import NodeRegistry, mark_gone
from .services import ServiceRepository, expire_drains
from .store import Compacted, Store, StoreError, Unavailable, open_store
from .sync import PUSH_SPANS, SyncService

log = logging.getLogger("socklb.controlplane")

# Keepalive agreed with the dataplane's client (sync_client.py): the server
# must allow pings at least as often as clients send them, or it answers
# GOAWAY too_many_pings.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 16 << 20),
    # gRPC sets SO_REUSEPORT by default: a second replica started by mistake
    # on a taken port would then share it and answer from another store.
    ("grpc.so_reuseport", 0),
]


# What the snapshot cache is fed: per kind of resource (the keyword of
# SnapshotCache.apply), its store prefix (one of keys.CONFIG_KINDS) and the
# message its values hold.
FEEDS: dict[str, tuple[str, type[Message]]] = {
    "services": (keys.SERVICES, api_pb2.Service),
    "workloads": (keys.WORKLOADS, policy_pb2.Workload),
    "policies": (keys.POLICIES, policy_pb2.Policy),
    "redirects": (keys.REDIRECTS, policy_pb2.LocalRedirect),
}


def check_listen(listen: str) -> None:
    """ "host:port" or "[v6]:port" with a port in 0..65535 (0: any free
    port), or "unix:PATH"; ValueError naming what is wrong. The host:port
    grammar is the model's (split_host_port): IPv6 without brackets is
    refused, which gRPC could not bind either."""
    if listen.startswith("unix:"):
        return
    try:
        host, port = split_host_port(listen)
    except ValueError as e:
        raise ValueError(f"--listen {listen!r}: {e}") from None
    if not host or port is None or not (port.isascii() and port.isdigit()):
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT ([ADDR]:PORT for IPv6) or unix:PATH")
    if int(port) > 65535:
        raise ValueError(f"--listen {listen!r}: port {port} is out of range (0..65535)")


class ControlPlane:
    def __init__(self, store: Store, replica: str, node_timeout: float = 60.0, duty_interval: float = 2.0,
                 heartbeat: float = 10.0, terminations_kept: int = terminations.MAX_KEPT,
                 terminations_retention: float = terminations.RETENTION, prune_interval: float = 30.0,
                 push_spans: int = PUSH_SPANS):
        self.terminations_kept = terminations_kept
        self.terminations_retention = terminations_retention
        self.prune_interval = prune_interval
        self.store = store
        self.replica = replica
        self.node_timeout = node_timeout
        self.duty_interval = duty_interval
        self.cache = SnapshotCache()
        self.registry = NodeRegistry(store, replica, heartbeat=heartbeat)
        self.sync = SyncService(self.cache, self.registry, replica, push_spans=push_spans)
        self.api = LoadBalancerServicer(store, self.registry, cache=self.cache)
        self._watch = None  # of the configuration range
        self._term_watch = None
        self._gen = 0
        self._tasks: list[asyncio.Task] = []
        self.server: grpc.aio.Server | None = None

    async def start(self, listen: str, credentials: grpc.ServerCredentials | None = None,
                    interceptors: list | None = None, reuse_port: bool = False) -> int:
        """reuse_port: share the port with the other workers of --workers."""
        self._loop = asyncio.get_running_loop()
        delay = 0.2
        while True:  # a store that is not up yet is waited for, not fatal
            try:
                await asyncio.to_thread(self._load)
                break
            except Unavailable as e:
                log.warning("store unavailable (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        options = [(k, int(reuse_port) if k == "grpc.so_reuseport" else v) for k, v in SERVER_OPTIONS]
        self.server = grpc.aio.server(options=options,
                                      interceptors=[*(interceptors or []), MalformedRequests()])
        api_pb2_grpc.add_LoadBalancerServicer_to_server(self.api, self.server)
        self.server.add_generic_rpc_handlers([self.sync.handler()])
        self.health = await add_health_and_reflection_aio(self.server,
                                                          ["socklb.v1.LoadBalancer", "socklb.v1.NodeSync"])
        check_listen(listen)
        try:
            port = (self.server.add_secure_port(listen, credentials) if credentials is not None
                    else self.server.add_insecure_port(listen))
        except RuntimeError as e:  # grpcio raises when it cannot bind
            raise OSError(f"cannot listen on {listen}: the address is in use or not available here ({e})") from None
        if port == 0:
            raise OSError(f"cannot listen on {listen}: the address is in use or not available here")
        await self.server.start()
        self._tasks = [asyncio.create_task(self.registry.run()), asyncio.create_task(self._duties())]
        log.info("replica %s serving on %s (port %d), store revision %d", self.replica, listen, port,
                 self.cache.revision)
        return port

    def metric_families(self):
        """Scrape-time gauges: services and backends from the cache, nodes from the store."""
        nodes = [api_pb2.NodeHealth.Name(n.health).removeprefix("NODE_HEALTH_").lower()
                 for n in self.registry.list()]
        services = self.cache.services.values()
        return metrics.node_health_families(nodes, len(services), sum(len(s.backends) for s in services))

    async def stop(self) -> None:
        self._cancel_watch()
        if self._term_watch is not None:
            self._term_watch.cancel()
        for t in self._tasks:
            t.cancel()
        self.sync.end_streams()
        if self.server is not None:
            await self.server.stop(grace=1)
        # Node status is written in coalesced batches: what is still pending
        # (the last versions, the streams just ended) is written now, bounded
        # so that a store that is gone does not hold the shutdown up.
        try:
            await asyncio.wait_for(self.registry.flush_now(), 2.0)
        except (StoreError, asyncio.TimeoutError) as e:
            log.warning("node status not written on shutdown: %s", e or "the store did not answer in time")

    # --- store -> cache -> nodes -------------------------------------------------
    def _load(self) -> None:
        """Read the configuration at one revision and watch it from the next:
        no change is missed, and every later one comes in revision order."""
        kvs, revision = self.store.range(keys.CONFIG_START, end=keys.CONFIG_END)
        loaded = {kind: [resource for _, resource in found]
                  for kind, found in _by_kind((kv.key, kv.value, kv.mod_revision) for kv in kvs).items()}
        self.cache.load(loaded.pop("services"), revision, **loaded)
        self._start_watch(revision + 1)
        if self._term_watch is None:
            self._start_term_watch(revision + 1)

    def _start_watch(self, start: int) -> None:
        # A generation number, not the Watch object, tells current events
        # from a replaced watch's: events can arrive before watch() returns.
        self._gen += 1
        gen, loop = self._gen, self._loop
        box: list = []

        def on_events(events):
            err = box[0].error if (not events and box) else None
            loop.call_soon_threadsafe(self._on_events, events, gen, err)

        box.append(self.store.watch(keys.CONFIG_START, start, on_events, end=keys.CONFIG_END))
        self._watch = box[0]

    def _cancel_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    def _on_events(self, events, gen: int, error) -> None:
        if gen != self._gen:
            return
        if not events:  # the store's rule: an empty batch means the watch died
            self._gen += 1
            asyncio.ensure_future(self._rewatch(error or StoreError("watch stopped")))
            return
        changes = _by_kind((ev.key, ev.value if ev.type == "put" else None, ev.revision) for ev in events)
        # Whole revisions in order, from the one watch: the batch's last
        # revision includes every change so far, of every kind.
        revision = events[-1].revision
        names = {f"socklb.{kind}": sorted({name for name, _ in found})[:100]
                 for kind, found in changes.items() if found}
        # The trace of the API call that wrote this (if this replica did):
        # tracing.WriteTraces; changes written elsewhere start a trace here.
        parent, links = tracing.caused_by(self.api.traces.find(events))
        with tracing.TRACER.start_as_current_span("dispatch", context=parent, links=links, attributes={
                "socklb.replica": self.replica, "socklb.revision": revision, **names}) as span:
            with tracing.TRACER.start_as_current_span(
                    "compute", attributes={"socklb.changes": sum(len(found) for found in changes.values())}):
                update = self.cache.apply(revision=revision, nodes=self.sync.nodes(), **changes)
            span.set_attribute("socklb.nodes", self.sync.publish(update))

    def _start_term_watch(self, start: int) -> None:
        """Termination requests written by any replica reach this replica's nodes."""
        loop = self._loop

        def on_events(events):
            loop.call_soon_threadsafe(self._on_term_events, events)

        self._term_watch = self.store.watch(keys.TERMINATIONS, start, on_events)

    def _on_term_events(self, events) -> None:
        if not events:
            log.warning("termination watch ended (%s); restarting it",
                        self._term_watch.error if self._term_watch else "?")
            self._term_watch = None
            asyncio.ensure_future(self._restart_term_watch())
            return
        for ev in events:
            tid, kind, _ = keys.parse_termination_key(ev.key)
            if ev.type != "put" or kind != "request":
                continue
            term = api_pb2.Termination.FromString(ev.value)
            parent, links = tracing.caused_by(self.api.traces.find([ev]))
            with tracing.TRACER.start_as_current_span("push", context=parent, links=links, kind=SpanKind.PRODUCER,
                                                      attributes={"socklb.termination": tid,
                                                                  "socklb.service": term.service}) as span:
                resource = terminations.previewed(term)
                if resource is not None:
                    sent = self._send_preview(term, resource)
                else:
                    sent = self.sync.send_command(terminations.command(term), list(term.pending_nodes))
                span.set_attribute("socklb.nodes", len(sent))
            log.info("termination %s (%s): sent to %d nodes here", tid, term.service, len(sent))

    def _send_preview(self, term: api_pb2.Termination, resource) -> list[str]:
        """A preview's commands to the nodes it asks that this replica
        serves: each its policy part as the write would make it (this
        replica's cache computes it; a node it finds unchanged is sent its
        part as it is, so that every node asked answers)."""
        mine = [n for n in term.pending_nodes if n in self.sync.sessions]
        if not mine:
            return []
        try:
            parts = self.cache.policy.preview(resource)
        except Exception as e:  # a bug must not leave the nodes asked pending for ever
            log.exception("preview %s: computing the nodes' parts failed", term.id)
            for node in mine:
                self.registry.termination(terminations.unanswerable(term, node, f"the control plane could not "
                                                                                 f"compute this node's part: {e!r}"))
            return []
        sent: list[str] = []
        for node in mine:
            if self.sync.sessions[node].capabilities.get(terminations.PREVIEW_CAPABILITY) != "yes":
                # An older agent would take the command for a request about no service and find
                # nothing: the control plane answers for it instead.
                self.registry.termination(terminations.unanswerable(term, node, "this node's agent does not "
                                                                                 "answer previews (older version)"))
                continue
            part = parts.get(node) or self.cache.policy_for(node)
            sent += self.sync.send_command(terminations.preview_command(term, part), [node])
        return sent

    async def _restart_term_watch(self) -> None:
        delay = 0.2
        while self._term_watch is None:
            try:
                rev = await asyncio.to_thread(self.store.revision)
                self._start_term_watch(rev + 1)
            except StoreError as e:
                log.warning("termination watch: %s; retrying", e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _rewatch(self, error: Exception) -> None:
        """The watch died (compaction, store restart): reload, resync, re-watch."""
        log.warning("configuration watch ended (%s); reloading from the store", error)
        delay = 0.2
        while True:
            try:
                self._cancel_watch()
                await asyncio.to_thread(self._load)
                break
            except (StoreError, Compacted) as e:
                log.warning("reload failed (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.sync.resync_all()

    # --- leader duties -------------------------------------------------------------
    async def _duties(self) -> None:
        leadership = await asyncio.to_thread(self.store.campaign, "duties", self.replica,
                                             max(self.duty_interval * 3, 5.0))
        services = ServiceRepository(self.store)
        pruned_at = marked_at = time.monotonic()
        # Marking reads every node's record: with a thousand nodes that is the
        # leader's largest duty, and records go stale after 3 heartbeats, so
        # every half heartbeat is soon enough (drains keep duty_interval).
        mark_every = max(self.duty_interval, self.registry.heartbeat / 2)
        try:
            while True:
                await asyncio.sleep(self.duty_interval)
                if not leadership.is_leader():
                    continue
                try:
                    fence = leadership.fence()
                    gone = []
                    if time.monotonic() - marked_at >= mark_every:
                        marked_at = time.monotonic()
                        gone = await asyncio.to_thread(mark_gone, self.store, fence, self.node_timeout,
                                                       self.registry.stale_after, None,
                                                       frozenset(self.registry.connected_nodes))
                    due = [n for n, t in self.cache.drain_deadlines.items() if t <= time.time()]
                    drained = await asyncio.to_thread(expire_drains, services, fence, due) if due else []
                    if gone or drained:
                        log.info("leader: nodes marked disconnected or gone %s, drains expired in %s", gone, drained)
                    if time.monotonic() - pruned_at >= self.prune_interval:
                        pruned_at = time.monotonic()
                        n = await asyncio.to_thread(terminations.prune, self.store, time.time_ns(),
                                                    self.terminations_kept, self.terminations_retention)
                        if n:
                            log.info("leader: pruned %d termination records", n)
                except StoreError as e:
                    log.warning("leader duties failed (will retry): %s", e)
        finally:
            await asyncio.to_thread(leadership.close)


def _resource(message: type[Message], value: bytes, revision: int) -> Message:
    """A stored resource, with the revision that last wrote it."""
    out = message.FromString(value)
    out.resource_version = revision
    return out


def _by_kind(stored: Iterable[tuple[str, bytes | None, int]]) -> dict[str, list[tuple[str, Message | None]]]:
    """Keys of the configuration range (key, value or None if deleted, the
    revision that wrote it), sorted into FEEDS' kinds as (name, resource or
    None). The range holds nothing else (keys.py); whatever key is none of
    the kinds is left out all the same, not fed to the cache."""
    out: dict[str, list[tuple[str, Message | None]]] = {kind: [] for kind in FEEDS}
    for key, value, revision in stored:
        for kind, (prefix, message) in FEEDS.items():
            if key.startswith(prefix):
                out[kind].append((keys.resource_name(prefix, key),
                                  None if value is None else _resource(message, value, revision)))
                break
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="socklb-controlplane", description="socklb control plane")
    p.add_argument("--listen", default=os.environ.get("SOCKLB_LISTEN", "127.0.0.1:7400"),
                   help="address for the API and the node streams (default 127.0.0.1:7400)")
    p.add_argument("--store", default=os.environ.get("SOCKLB_STORE", "embedded:///var/lib/socklb/controlplane"),
                   help="embedded:///DIR (default) or etcd://host:port[,host:port...]")
    p.add_argument("--replica-id", default=os.environ.get("SOCKLB_REPLICA_ID", ""),
                   help="name of this replica (default: hostname-pid-random)")
    p.add_argument("--node-timeout", type=float, default=60.0,
                   help="seconds a disconnected node is kept before the leader marks it GONE")
    p.add_argument("--push-spans", type=int, default=int(os.environ.get("SOCKLB_PUSH_SPANS", PUSH_SPANS)),
                   help=f"per-node push spans of a traced update, at most (default {PUSH_SPANS}; the first nodes in "
                        "connection order): the other nodes' applies are children of the update's dispatch span")
    p.add_argument("--workers", type=int, default=int(os.environ.get("SOCKLB_WORKERS", "1")),
                   help="processes serving node streams and the API on the same port (SO_REUSEPORT), each a "
                        "replica of its own (default 1; more needs an etcd:// store)")
    p.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # a worker of --workers
    p.add_argument("--tls-cert", default=os.environ.get("SOCKLB_TLS_CERT", ""),
                   help="server certificate (PEM): serve TLS; files are re-read when they change")
    p.add_argument("--tls-key", default=os.environ.get("SOCKLB_TLS_KEY", ""), help="server private key (PEM)")
    p.add_argument("--tls-client-ca", default=os.environ.get("SOCKLB_TLS_CLIENT_CA", ""),
                   help="CA (PEM) that signs client certificates: require mTLS")
    p.add_argument("--clients-file", default=os.environ.get("SOCKLB_CLIENTS_FILE", ""),
                   help="YAML of callers (token or certificate CN) and roles: enables authentication")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve a non-loopback --listen without --clients-file: every caller that reaches it may "
                        "do everything (refused without this flag)")
    p.add_argument("--metrics-listen", default=os.environ.get("SOCKLB_METRICS_LISTEN", ""),
                   help="host:port to serve Prometheus /metrics on (default: off)")
    p.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("SOCKLB_LOG_FORMAT", "text"))
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def is_loopback(listen: str) -> bool:
    if listen.startswith("unix:"):
        return True
    try:
        host, _ = split_host_port(listen)
    except ValueError:
        return False  # no address check_listen accepts
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to


def security(args) -> tuple[grpc.ServerCredentials | None, list]:
    """TLS credentials and the auth interceptor from the flags. Serving
    beyond loopback with no one authenticated is refused unless asked for."""
    if not args.clients_file and not is_loopback(args.listen) and not args.allow_unauthenticated:
        raise ValueError(f"--listen {args.listen}: refusing to serve beyond loopback without --clients-file "
                         "(every caller could change every service); give a clients file (README, Security) "
                         "or --allow-unauthenticated")
    creds = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            raise ValueError("--tls-cert and --tls-key go together")
        creds = auth.server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca or None)
    elif args.tls_client_ca:
        raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
    interceptors = []
    if args.clients_file:
        interceptors.append(auth.AuthInterceptor(auth.Clients.load(args.clients_file)))
        if creds is None:
            log.warning("authentication without TLS: tokens cross the network in clear text")
    else:
        log.warning("no --clients-file: every caller may do everything (fine on loopback only)")
    return creds, interceptors


async def _amain(args) -> int:
    try:
        check_listen(args.listen)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        creds, interceptors = security(args)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    denied = workers.check(args.workers, args.listen, args.store)
    if denied:
        print(f"error: {denied}", file=sys.stderr)
        return 2
    replica = args.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:4]}"
    tracing.setup_tracing("socklb-controlplane", {"service.instance.id": replica})
    try:
        store = await asyncio.to_thread(open_store, args.store)
    except (ValueError, StoreError, OSError) as e:
        print(f"error: cannot open store {args.store}: {e}", file=sys.stderr)
        return 1
    cp = ControlPlane(store, replica, node_timeout=args.node_timeout, push_spans=args.push_spans)
    try:
        metrics.serve(args.metrics_listen)
    except (OSError, ValueError) as e:
        print(f"error: --metrics-listen {args.metrics_listen}: {e}", file=sys.stderr)
        store.close()
        return 1
    metrics.register(cp.metric_families)
    reuse = args.reuse_port or args.workers > 1
    try:
        await cp.start(args.listen, creds, interceptors, reuse_port=reuse)
    except (OSError, StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        store.close()
        return 1
    others = workers.spawn(args.argv, args.workers, replica) if args.workers > 1 else []
    log.info("ready" + (f" ({args.workers} workers)" if others else ""))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await asyncio.to_thread(workers.stop, others)
    await cp.stop()
    store.close()
    tracing.shutdown_tracing()  # flush the spans still batched
    return 0


# The cyclic GC's first threshold (net new container objects between young
# collections). At CPython's default, 700, a write pushed to 1000 node streams
# (futures, handles, tuples per node) ran about 8 young collections and one of
# the middle generation per write, and a full one every dozen writes over the
# ~125k objects a replica holds with 1000 nodes: about 40 of its 300 ms of CPU
# per write (bench.convergence with a GC callback, docs/benchmarks.md).
# At 10000 the same writes run about one young collection per 10 s; the garbage
# cycles it leaves for later are at most that many objects.
GC_THRESHOLD = (10_000, 10, 10)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv  # what the other workers of --workers are started with
    setup_logging(args.verbose, args.log_format)
    gc.set_threshold(*GC_THRESHOLD)
    return asyncio.run(_amain(args))


if __name__ == "__main__":
    sys.exit(main())
