"""OpenTelemetry tracing of both planes: one trace per change, from the API
call to every node's apply and the socket terminations it caused.

    CP   socklb.v1.LoadBalancer/PutService   (server span: server_span)
         └─ store.txn                        (the write; its revision R is remembered)
            └─ dispatch                      (the replica's store watch saw R)
               ├─ compute                    (SnapshotCache.apply)
               └─ push                       (one per node, producer: queued -> ACK/NACK)
    node          └─ apply                   (consumer: the W3C context came in
                     │                        ControlMessage.trace_context)
                     └─ terminate            (the flows the change orphaned, on the worker)

Configuration is the standard OTEL_* variables, read by the SDK: spans are
exported only when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set or
OTEL_TRACES_EXPORTER names an exporter ("otlp", "console"; "none" turns
export off). Without that no SDK is installed: spans are the API's no-op
ones and the messages carry no trace context. OTLP goes over gRPC unless
OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL says http/protobuf (which needs
opentelemetry-exporter-otlp-proto-http installed). OTEL_SERVICE_NAME and
OTEL_RESOURCE_ATTRIBUTES override the defaults given here; OTEL_TRACES_SAMPLER
and OTEL_BSP_* (batching) are honoured by the SDK.

Per-update context travels in the message, not in gRPC metadata: metadata is
sent once per stream, and the sync stream lives for hours.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode

log = logging.getLogger(__name__)

# A proxy: it uses whatever provider setup_tracing installs, also when
# modules imported it before. Code calls tracing.TRACER at use time (tests
# replace it with a tracer of their own provider).
TRACER = trace.get_tracer("socklb")

_provider = None
_setup_lock = threading.Lock()


# --- set-up ----------------------------------------------------------------------

def _exporter_names() -> list[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if names:
        return [] if "none" in names else names
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def _exporter(name: str):
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        log.error("tracing: OTEL_TRACES_EXPORTER=%s is not supported here (otlp, console, none)", name)
        return None
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
        except ImportError:
            log.error("tracing: OTLP over http/protobuf needs opentelemetry-exporter-otlp-proto-http; "
                      "spans are not exported (or set OTEL_EXPORTER_OTLP_PROTOCOL=grpc)")
            return None
        return HttpExporter()
    log.error("tracing: OTLP protocol %r is not supported (grpc, http/protobuf)", protocol)
    return None


def setup_tracing(service_name: str, attributes: dict | None = None) -> bool:
    """Install the SDK with a batching exporter if the environment asks for
    export; returns whether it did. Idempotent. `attributes` are resource
    attributes (e.g. service.instance.id); the OTEL_* variables win."""
    global _provider
    with _setup_lock:
        if _provider is not None:
            return True
        exporters = [e for e in (_exporter(n) for n in _exporter_names()) if e is not None]
        if not exporters:
            return False
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        attrs = {"service.name": service_name, **(attributes or {})}
        attrs.update(OTELResourceDetector().detect().attributes)
        provider = TracerProvider(resource=Resource.create(attrs))
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        _provider = provider
        log.info("tracing: exporting spans of %s (%s)", attrs["service.name"],
                 ", ".join(type(e).__name__ for e in exporters))
        return True


def shutdown_tracing() -> None:
    """Flush the spans still batched and stop exporting (on process exit)."""
    global _provider
    with _setup_lock:
        provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()


# --- W3C context in messages ---------------------------------------------------------

def inject(ctx: otel_context.Context | None = None) -> dict[str, str]:
    """The carrier (traceparent, tracestate) of a context, default the current
    one; empty when there is no valid span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def extract(carrier) -> otel_context.Context:
    """The context a carrier describes; an empty one (so spans started in it
    are roots) when it carries nothing."""
    if not carrier:
        return otel_context.Context()
    return propagate.extract(dict(carrier), context=otel_context.Context())


@contextmanager
def attached(ctx: otel_context.Context) -> Iterator[None]:
    """Make a context current for a block (no span of its own)."""
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def caused_by(parents: list[SpanContext]) -> tuple[otel_context.Context, list[Link]]:
    """Parent context and links for work several spans caused: child of the
    first, linked to the others; a root when there is none."""
    if not parents:
        return otel_context.Context(), []
    return (trace.set_span_in_context(NonRecordingSpan(parents[0]), otel_context.Context()),
            [Link(p) for p in parents[1:]])


# --- store writes -> the dispatcher ------------------------------------------------------

class WriteTraces:
    """Which span wrote which store revision, in this replica.

    The store watch that brings a change to the dispatcher carries no
    context, so the API handler remembers its write span by revision once
    the txn returns. The watch may deliver the change before the handler
    resumes: while a write is in flight its span is also kept by key, and an
    event of an unknown revision on that key is taken as that write's.
    Changes written by another replica (or by the leader's duties) have no
    entry: their dispatch span is a root.
    """

    def __init__(self, size: int = 4096):
        self.size = size
        self._lock = threading.Lock()
        self._by_revision: OrderedDict[int, SpanContext] = OrderedDict()
        self._pending: dict[str, list[SpanContext]] = {}

    @contextmanager
    def writing(self, key: str, span_context: SpanContext) -> Iterator[None]:
        if not span_context.is_valid:
            yield
            return
        with self._lock:
            self._pending.setdefault(key, []).append(span_context)
        try:
            yield
        finally:
            with self._lock:
                pending = self._pending.get(key, [])
                if span_context in pending:
                    pending.remove(span_context)
                if not pending:
                    self._pending.pop(key, None)

    def written(self, revision: int, span_context: SpanContext) -> None:
        if not span_context.is_valid or not revision:
            return
        with self._lock:
            self._by_revision[revision] = span_context
            while len(self._by_revision) > self.size:
                self._by_revision.popitem(last=False)

    def find(self, events: Iterable) -> list[SpanContext]:
        """The write spans of a batch of store events (.key, .revision), without duplicates."""
        out: list[SpanContext] = []
        with self._lock:
            if not self._by_revision and not self._pending:
                return out
            for ev in events:
                sc = self._by_revision.pop(ev.revision, None)
                if sc is None:
                    pending = self._pending.get(ev.key)
                    sc = pending[0] if pending else None
                    if sc is not None:  # a later event of the same revision finds it too
                        self._by_revision[ev.revision] = sc
                if sc is not None and sc not in out:
                    out.append(sc)
        return out


# --- the API's server spans --------------------------------------------------------------

# gRPC codes that mark a server span as failed (OpenTelemetry's RPC
# conventions): the others are the client's mistakes, not the server's.
_SERVER_ERRORS = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
                  grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS}


def _metadata(context) -> dict[str, str]:
    out = {}
    for item in context.invocation_metadata() or ():
        key, value = item[0], item[1]
        if isinstance(value, str):
            out[key] = value
    return out


def _set_code(span, code: grpc.StatusCode | None, details: str | None = None) -> None:
    code = code or grpc.StatusCode.OK
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details or ''}"))


def server_span(service: str):
    """Decorator of a unary grpc.aio handler method: one server span per call,
    named "<service>/<method>", with the gRPC status code. A W3C traceparent
    in the call's metadata makes it that caller's child. Not for streaming
    methods (the NodeSync stream, Watch): their span would stay open for the
    stream's whole life."""

    def deco(fn):
        name = fn.__name__
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

        @functools.wraps(fn)
        async def wrapper(self, request, context):
            with TRACER.start_as_current_span(f"{service}/{name}", context=extract(_metadata(context)),
                                              kind=SpanKind.SERVER, attributes=attributes, record_exception=False,
                                              set_status_on_exception=False) as span:
                try:
                    response = await fn(self, request, context)
                except grpc.aio.AbortError:
                    _set_code(span, context.code(), context.details())
                    raise
                except Exception as e:
                    span.record_exception(e)
                    _set_code(span, grpc.StatusCode.UNKNOWN, f"{type(e).__name__}: {e}")
                    raise
                _set_code(span, context.code())
                return response
        return wrapper
    return deco


__all__ = ["TRACER", "WriteTraces", "attached", "caused_by", "extract", "inject",
           "server_span", "setup_tracing", "shutdown_tracing"]
