"""Tracing: one trace from an API call to every node's apply and the socket
terminations it caused.

The first test runs a real control plane and a real node (an agent that
programs nothing) as subprocesses, each configuring the OpenTelemetry SDK
from OTEL_* variables and exporting over OTLP/gRPC to a real receiver (the
TraceService of opentelemetry-proto) in this process. The others run the
node's side in-process with an in-memory exporter.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent import futures
from types import SimpleNamespace

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from support import free_port

from socklb.controlplane.store import Event
from socklb.dataplane.agent import Agent
from socklb.dataplane.sync_client import SyncClient
from socklb.dataplane.termjobs import TerminationService
from socklb.dataplane.writer import MemoryMapWriter
from socklb.observability import tracing
from socklb.v1 import api_pb2, api_pb2_grpc, node_pb2, sync_pb2, types_pb2


# --- a real OTLP/gRPC receiver -----------------------------------------------------------

class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, object]]:
        """(service.name, span) of everything received."""
        out = []
        with self.lock:
            requests = list(self.requests)
        for req in requests:
            for rs in req.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    out.extend((service, s) for s in ss.spans)
        return out


@pytest.fixture
def receiver():
    r = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(r, server)
    r.port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield r
    server.stop(grace=None)


def otel_env(receiver) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{receiver.port}", OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
               OTEL_BSP_SCHEDULE_DELAY="100")
    return env


NODE_SCRIPT = textwrap.dedent("""
    import signal, sys, threading
    from socklb.observability.tracing import setup_tracing, shutdown_tracing
    from socklb.dataplane.agent import Agent
    from socklb.dataplane.sync_client import SyncClient
    from socklb.dataplane.writer import MemoryMapWriter

    assert setup_tracing("socklb-dataplane", {"service.instance.id": sys.argv[2]})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = SyncClient(Agent(MemoryMapWriter(), sys.argv[2]), [sys.argv[1]], stats_interval=0.5)
    client.start()
    stop.wait()
    client.stop()
    shutdown_tracing()
""")


def wait_for(pred, what, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def stop_process(p: subprocess.Popen) -> str:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    return err.decode(errors="replace")


def test_one_trace_from_api_call_to_node_apply(tmp_path, receiver):
    env = otel_env(receiver)
    addr = f"127.0.0.1:{free_port()}"
    cp = subprocess.Popen([sys.executable, "-m", "socklb.controlplane.server", "--listen", addr,
                           "--store", f"embedded://{tmp_path}/store", "--replica-id", "r1"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs = [cp]
    errors = {}
    try:
        channel = grpc.insecure_channel(addr)
        grpc.channel_ready_future(channel).result(timeout=30)
        api = api_pb2_grpc.LoadBalancerStub(channel)
        node = subprocess.Popen([sys.executable, "-c", NODE_SCRIPT, addr, "n1"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(node)

        def nodes():
            return {n.name: n for n in api.ListNodes(api_pb2.ListNodesRequest()).nodes}
        wait_for(lambda: "n1" in nodes() and nodes()["n1"].health == api_pb2.NODE_HEALTH_READY, "node n1 READY")
        svc = json_format.ParseDict({"name": "web", "frontends": [{"address": "127.96.0.10", "port": 80}],
                                     "backends": [{"address": "10.0.0.1", "port": 8080}]}, api_pb2.Service())
        version = api.PutService(api_pb2.PutServiceRequest(service=svc)).resource_version
        wait_for(lambda: nodes()["n1"].applied_version >= version, "n1 applied the change")
        channel.close()
    finally:
        for p in reversed(procs):  # node first, then the control plane: both flush on SIGTERM
            errors[p.args[2]] = stop_process(p)
    assert cp.returncode == 0, errors

    spans = receiver.spans()
    api_spans = [(svc, s) for svc, s in spans if s.name == "socklb.v1.LoadBalancer/PutService"]
    assert len(api_spans) == 1, [s.name for _, s in spans]
    service, api_span = api_spans[0]
    assert service == "socklb-controlplane"
    assert api_span.kind == api_span.SPAN_KIND_SERVER and api_span.parent_span_id == b""  # the trace's root
    in_trace = [(svc, s) for svc, s in spans if s.trace_id == api_span.trace_id]
    by_name: dict[str, list] = {}
    for svc, s in in_trace:
        by_name.setdefault(s.name, []).append((svc, s))

    def one(name):
        assert len(by_name.get(name, [])) == 1, (name, sorted(by_name))
        return by_name[name][0]

    (_, txn), (_, dispatch), (_, compute), (_, push) = one("store.txn"), one("dispatch"), one("compute"), one("push")
    node_service, apply = one("apply")
    assert txn.parent_span_id == api_span.span_id
    assert dispatch.parent_span_id == txn.span_id
    assert compute.parent_span_id == dispatch.span_id
    assert push.parent_span_id == dispatch.span_id
    attrs = {a.key: a.value for a in push.attributes}
    assert attrs["socklb.node"].string_value == "n1" and attrs["socklb.answer"].string_value == "ack"
    assert attrs["socklb.version"].int_value == version
    # Across processes: the node's apply is the child of the control plane's push for that node.
    assert apply.parent_span_id == push.span_id
    assert apply.kind == apply.SPAN_KIND_CONSUMER
    assert {a.key: a.value for a in apply.attributes}["socklb.version"].int_value == version
    assert node_service == "socklb-dataplane"
    assert {svc for svc, _ in in_trace} == {"socklb-controlplane", "socklb-dataplane"}


# --- the node's side in-process ----------------------------------------------------------

@pytest.fixture
def spans(monkeypatch):
    """Spans of socklb's tracer, recorded in memory (the global provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "TRACER", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


class FakeTerminator:
    """Stands in for the BPF terminator: records what it was asked to do and
    answers with counts of its own (distinct, unrelated to the number of
    targets), so that what reaches reports and spans can be traced back."""

    method = SimpleNamespace(value="kfunc")
    FOUND, DESTROYED, FAILED, NAMESPACES = 7, 5, 2, 3

    def __init__(self):
        self.calls = []

    def close(self):
        pass

    def run(self, targets, dry_run=False, dsts=None, max_records=None):
        self.calls.append((list(targets), dsts))
        return SimpleNamespace(method="kfunc", found=self.FOUND, destroyed=self.DESTROYED, failed=self.FAILED,
                               duration=0.001, netns_scanned=self.NAMESPACES, per_target={}, sockets=[],
                               summary=lambda: "fake")


def push_context(name="push") -> tuple[object, dict[str, str]]:
    span = tracing.TRACER.start_span(name)
    span.end()
    return span, tracing.inject(trace.set_span_in_context(span))


def state_of(version, backends):
    return node_pb2.ServiceState(name="web", frontends=[types_pb2.Frontend(address="127.96.0.10", port=80)],
                                 backends=[types_pb2.Backend(address=a, port=8080) for a in backends])


def test_terminations_a_change_causes_are_children_of_its_apply(tmp_path, spans):
    terminator = FakeTerminator()
    agent = Agent(MemoryMapWriter(), "n1", terminations=TerminationService("n1", terminator))
    reports = []
    client = SyncClient(agent, ["127.0.0.1:1"])
    agent.terminations.listen(reports.append)
    try:
        _, first = push_context()
        reply = client._handle(sync_pb2.ControlMessage(trace_context=first, snapshot=sync_pb2.SnapshotChunk(
            version=1, services=[state_of(1, ["10.0.0.1", "10.0.0.2"])], last=True)), [])
        assert reply.HasField("ack")
        push, second = push_context()
        reply = client._handle(sync_pb2.ControlMessage(trace_context=second, delta=node_pb2.NodeStateDelta(
            from_version=1, version=2, upserts=[state_of(2, ["10.0.0.1"])])), [])
        assert reply.HasField("ack")
        wait_for(lambda: len(reports) == 1, "the termination report", timeout=60)
        # The terminator was asked for the removed backend's flows, and only those ...
        ((targets, dsts),) = terminator.calls
        assert dsts == (("10.0.0.2", 8080),) and len(targets) == 1 and targets[0].backend_id != 0
        # ... and its counts are what the report carries.
        assert reports[0].trigger == "backend-removed" and reports[0].service == "web"
        assert (reports[0].found, reports[0].destroyed, reports[0].failed, reports[0].namespaces) == (
            FakeTerminator.FOUND, FakeTerminator.DESTROYED, FakeTerminator.FAILED, FakeTerminator.NAMESPACES)

        # An explicit command: its termination is the control plane span's child directly.
        command, third = push_context("push terminate")
        client._handle(sync_pb2.ControlMessage(trace_context=third, terminate=sync_pb2.TerminateCommand(
            id="t1", service="web")), [])
        wait_for(lambda: len(reports) == 2, "the command's report", timeout=60)
        # A command for the whole service: every flow of its frontend, to any destination, and of
        # the backend removed from it.
        targets, dsts = terminator.calls[1]
        assert dsts is None and sorted(t.backend_id for t in targets) == [0, terminator.calls[0][0][0].backend_id]
        assert reports[1].id == "t1" and reports[1].trigger == "request"
    finally:
        agent.terminations.close()

    finished = spans.get_finished_spans()
    applies = [s for s in finished if s.name == "apply"]
    assert [s.attributes["socklb.version"] for s in applies] == [1, 2]
    apply2 = applies[1]
    assert apply2.parent.span_id == push.get_span_context().span_id
    assert apply2.context.trace_id == push.get_span_context().trace_id
    assert apply2.attributes["socklb.backends_removed"] == 1
    terminates = [s for s in finished if s.name == "terminate"]
    assert len(terminates) == 2
    caused, requested = terminates
    assert caused.parent.span_id == apply2.context.span_id
    assert caused.context.trace_id == apply2.context.trace_id
    assert caused.attributes["socklb.trigger"] == "backend-removed"
    assert caused.attributes["socklb.targets"] == 1
    assert (caused.attributes["socklb.found"], caused.attributes["socklb.destroyed"],
            caused.attributes["socklb.failed"]) == (FakeTerminator.FOUND, FakeTerminator.DESTROYED,
                                                    FakeTerminator.FAILED)
    assert caused.status.status_code == trace.StatusCode.UNSET  # a run that reported, not an error
    assert requested.parent.span_id == command.get_span_context().span_id
    assert requested.attributes["socklb.termination"] == "t1"


def test_nacked_update_marks_the_apply_span_failed(spans):
    agent = Agent(MemoryMapWriter(), "n1")
    client = SyncClient(agent, ["127.0.0.1:1"])
    _, ctx = push_context()
    reply = client._handle(sync_pb2.ControlMessage(trace_context=ctx, delta=node_pb2.NodeStateDelta(
        from_version=0, version=3)), [])  # no full state yet: refused
    assert reply.HasField("nack")
    (apply,) = [s for s in spans.get_finished_spans() if s.name == "apply"]
    assert apply.status.status_code == trace.StatusCode.ERROR


def test_untraced_messages_carry_nothing_when_tracing_is_off():
    # The process-wide provider is the API's no-op one here: nothing to inject.
    assert tracing.inject() == {}
    with tracing.TRACER.start_as_current_span("x"):
        assert tracing.inject() == {}


def test_untraced_messages_start_roots_and_traced_ones_continue_their_trace(spans):
    with tracing.TRACER.start_as_current_span("current"):  # what an untraced message must not join
        for carrier in ({}, {"traceparent": "not a trace context"}):
            ctx = tracing.extract(carrier)
            assert not trace.get_current_span(ctx).get_span_context().is_valid, carrier
            with tracing.TRACER.start_as_current_span(f"untraced {carrier}", context=ctx):
                pass
        caller, carrier = push_context("caller")
        with tracing.TRACER.start_as_current_span("traced", context=tracing.extract(carrier)):
            pass
    by_name = {s.name: s for s in spans.get_finished_spans()}
    assert by_name["untraced {}"].parent is None
    assert by_name["untraced {'traceparent': 'not a trace context'}"].parent is None
    assert by_name["untraced {}"].context.trace_id != by_name["current"].context.trace_id
    traced = by_name["traced"]
    assert traced.parent.span_id == caller.get_span_context().span_id and traced.parent.is_remote
    assert traced.context.trace_id == caller.get_span_context().trace_id


def test_write_traces_find_a_write_by_revision_or_while_in_flight():
    traces = tracing.WriteTraces(size=2)
    sc = trace.SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=trace.TraceFlags(1))
    other = trace.SpanContext(trace_id=3, span_id=4, is_remote=False, trace_flags=trace.TraceFlags(1))
    ev = lambda key, rev: Event(type="put", key=key, value=b"", revision=rev)  # noqa: E731
    with traces.writing("/k", sc):
        # The watch delivered the change before the writer learned its revision.
        assert traces.find([ev("/k", 7)]) == [sc]
        assert traces.find([ev("/other", 8)]) == []
    traces.written(9, sc)
    traces.written(10, other)
    assert traces.find([ev("/k", 9), ev("/x", 10), ev("/k", 9)]) == [sc, other]
    assert traces.find([ev("/k", 9)]) == []  # found once
    for rev in (11, 12, 13):
        traces.written(rev, other)
    assert traces.find([ev("/k", 11)]) == []  # bounded: the oldest went
    invalid = trace.INVALID_SPAN_CONTEXT
    with traces.writing("/k", invalid):
        traces.written(20, invalid)
    assert traces.find([ev("/k", 20)]) == []


def test_api_spans_carry_status_codes_and_continue_a_callers_trace(tmp_path, spans):
    import asyncio

    from socklb.controlplane.server import ControlPlane
    from socklb.controlplane.store import open_store

    store = open_store(f"embedded://{tmp_path}/store")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cp = ControlPlane(store, "r1")
    port = asyncio.run_coroutine_threadsafe(cp.start("127.0.0.1:0"), loop).result(30)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        api = api_pb2_grpc.LoadBalancerStub(channel)
        with pytest.raises(grpc.RpcError) as e:
            api.GetService(api_pb2.GetServiceRequest(name="nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        caller, carrier = push_context("caller")
        api.ListServices(api_pb2.ListServicesRequest(), metadata=tuple(carrier.items()))
    finally:
        channel.close()
        asyncio.run_coroutine_threadsafe(cp.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        store.close()
    by_name = {s.name: s for s in spans.get_finished_spans()}
    get = by_name["socklb.v1.LoadBalancer/GetService"]
    assert get.kind == trace.SpanKind.SERVER
    assert get.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert get.status.status_code == trace.StatusCode.UNSET  # the caller's mistake, not the server's
    assert get.parent is None
    listed = by_name["socklb.v1.LoadBalancer/ListServices"]
    assert listed.attributes["rpc.grpc.status_code"] == 0
    assert listed.parent.span_id == caller.get_span_context().span_id
    assert listed.context.trace_id == caller.get_span_context().trace_id


def test_push_spans_are_capped_per_update_and_the_other_nodes_hang_off_dispatch(spans):
    """At scale the per-node push spans are a sample (SyncService.push_spans,
    the first nodes in connection order): the other nodes' copies carry the
    dispatch span's context, so every node's apply stays in the trace."""
    from socklb.controlplane.cache import SnapshotCache, Update
    from socklb.controlplane.nodes import NodeRegistry
    from socklb.controlplane.sync import NodeSession, SyncService

    svc = SyncService(SnapshotCache(), NodeRegistry(None, "r1"), "r1", push_spans=2)
    for name in ("n1", "n2", "n3", "n4"):
        svc.sessions[name] = NodeSession(name, "peer", version=4)
    with tracing.TRACER.start_as_current_span("dispatch") as dispatch:
        assert svc.publish(Update(revision=5, shared_upserts=[state_of(5, ["10.0.0.1"])])) == 4
    parents = {}
    for name, session in svc.sessions.items():
        msg = sync_pb2.ControlMessage.FromString(session.queue.get_nowait())
        assert (msg.delta.from_version, msg.delta.version, len(msg.delta.upserts)) == (4, 5, 1)
        parents[name] = int(msg.trace_context["traceparent"].split("-")[2], 16)
    for session in svc.sessions.values():  # the nodes answer: the push spans end
        svc._answered(session, "ack", sync_pb2.Ack(version=5))
    pushes = {s.attributes["socklb.node"]: s for s in spans.get_finished_spans() if s.name == "push"}
    assert sorted(pushes) == ["n1", "n2"]
    assert all(p.parent.span_id == dispatch.get_span_context().span_id for p in pushes.values())
    assert parents == {"n1": pushes["n1"].context.span_id, "n2": pushes["n2"].context.span_id,
                       "n3": dispatch.get_span_context().span_id, "n4": dispatch.get_span_context().span_id}
    (d,) = [s for s in spans.get_finished_spans() if s.name == "dispatch"]
    assert d.attributes["socklb.push_spans"] == 2
