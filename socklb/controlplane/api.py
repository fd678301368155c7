"""The public gRPC API (socklb.v1.LoadBalancer): status codes at the rim,
the work in services.py and policies.py (writes), nodes.py and
workload_status.py (status, stats), watch.py (the Watch stream)."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable

import grpc
from google.protobuf.message import Message

from socklb.lb.errors import InvalidState
from socklb.lb.names import validate_name
from socklb.observability import metrics, tracing
from socklb.v1 import api_pb2, api_pb2_grpc, node_pb2

from . import keys, terminations
from .cache import SnapshotCache
from .nodes import NodeRegistry
from .policies import LOCAL_REDIRECT, POLICY, WORKLOAD, Kind, ResourceRepository
from .services import ServiceRepository, add_backends, drain_backends, remove_backends, set_backends
from .store import Compacted, Full, Store, StoreError, Unavailable
from .validate import check_members, validate_backend_refs
from .watch import WatchEnded, changes
from .workload_status import read_reports, workload_statuses
from .writes import AlreadyExists, Conflict, NotFound

log = logging.getLogger(__name__)


# Domain errors -> gRPC status codes (first match wins); nothing was written on any of them.
_ERRORS = (
    (InvalidState, grpc.StatusCode.INVALID_ARGUMENT, ""),
    (NotFound, grpc.StatusCode.NOT_FOUND, ""),
    (Conflict, grpc.StatusCode.ABORTED, ""),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS, ""),
    (NotImplementedError, grpc.StatusCode.UNIMPLEMENTED, ""),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, "store unavailable: "),
    (Full, grpc.StatusCode.RESOURCE_EXHAUSTED, "store full: "),
    (StoreError, grpc.StatusCode.INTERNAL, "store error: "),
)


def _status(fn):
    @functools.wraps(fn)
    async def wrapper(self, request, context):
        code = grpc.StatusCode.OK
        try:
            return await fn(self, request, context)
        except Exception as e:
            for kind, status, prefix in _ERRORS:
                if isinstance(e, kind):
                    code = status
                    await context.abort(status, f"{prefix}{e}")
            code = grpc.StatusCode.UNKNOWN
            raise
        finally:
            metrics.api_requests.labels(fn.__name__, code.name).inc()
    return tracing.server_span("socklb.v1.LoadBalancer")(wrapper)


def _rpc(name: str, call: Callable[[LoadBalancerServicer, Message], Awaitable[Message]]):
    """A unary handler named `name` (its metrics and span are) answering
    `await call(servicer, request)`, with _status's error mapping."""
    async def handler(self, request, context):
        return await call(self, request)
    handler.__name__ = handler.__qualname__ = name
    return _status(handler)


class _Malformed:
    """A request body that does not parse (kept for the handler to refuse)."""

    def __init__(self, error: Exception):
        self.error = error


class MalformedRequests(grpc.aio.ServerInterceptor):
    """A request body that is not a valid message of the method's type gets
    INVALID_ARGUMENT naming the request, not gRPC's UNKNOWN for an exception
    in the deserializer. Unary requests only (the node stream parses its own
    messages in the sync service)."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer

        def lenient(data: bytes):
            try:
                return parse(data)
            except Exception as e:  # noqa: BLE001 - any decode failure is the caller's
                return _Malformed(e)

        def guard(behavior):
            if handler.response_streaming:
                async def streaming(request, context):
                    if isinstance(request, _Malformed):
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid message: "
                                                                              f"{request.error}")
                    async for item in behavior(request, context):
                        yield item
                return streaming

            async def unary(request, context):
                if isinstance(request, _Malformed):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid message: "
                                                                          f"{request.error}")
                return await behavior(request, context)
            return unary

        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(guard(handler.unary_stream), lenient,
                                                        handler.response_serializer)
        return grpc.unary_unary_rpc_method_handler(guard(handler.unary_unary), lenient, handler.response_serializer)


class LoadBalancerServicer(api_pb2_grpc.LoadBalancerServicer):
    def __init__(self, store: Store, registry: NodeRegistry, cache: SnapshotCache | None = None):
        self.store = store
        self.cache = cache  # this replica's snapshot cache (read by the dry runs), or None
        self.services = ServiceRepository(store)
        self.workloads = ResourceRepository(store, WORKLOAD)
        self.policies = ResourceRepository(store, POLICY)
        self.redirects = ResourceRepository(store, LOCAL_REDIRECT)
        self.registry = registry
        self.traces = tracing.WriteTraces()

    async def _run(self, fn, *args):
        return await asyncio.to_thread(fn, *args)

    async def _write(self, key: str, revision_of, fn, *args):
        """A store write in a "store.txn" span; the revision it made is
        remembered so that the dispatcher's spans join this call's trace."""
        with tracing.TRACER.start_as_current_span("store.txn", attributes={"socklb.key": key}) as span:
            sc = span.get_span_context()
            with self.traces.writing(key, sc):
                result = await asyncio.to_thread(fn, *args)
                rev = revision_of(result)
                if rev:
                    span.set_attribute("socklb.revision", rev)
                    self.traces.written(rev, sc)
            return result

    @_status
    async def PutService(self, request, context):
        if not request.HasField("service"):
            raise InvalidState("service", "is required")
        r = await self._write(keys.service(request.service.name), _written, self.services.put, request.service,
                              request.expected_version, request.create_only)
        return r.service

    @_status
    async def GetService(self, request, context):
        return await self._run(self.services.get, request.name)

    @_status
    async def ListServices(self, request, context):
        services, rev = await self._run(self.services.list)
        return api_pb2.ListServicesResponse(services=services, revision=rev)

    @_status
    async def DeleteService(self, request, context):
        return await self._delete(keys.service(request.name), self.services.delete, request)

    @_status
    async def SetBackends(self, request, context):
        r = await self._write(keys.service(request.service), _written, self.services.update, request.service,
                              set_backends(request.backends), request.expected_version)
        return r.service

    @_status
    async def AddBackends(self, request, context):
        r = await self._write(keys.service(request.service), _written, self.services.update, request.service,
                              add_backends(request.backends), request.expected_version)
        return r.service

    @_status
    async def RemoveBackends(self, request, context):
        r = await self._write(keys.service(request.service), _written, self.services.update, request.service,
                              remove_backends(request.backends, request.keep_sockets), request.expected_version)
        return r.service

    @_status
    async def DrainBackends(self, request, context):
        r = await self._write(keys.service(request.service), _written, self.services.update, request.service,
                              drain_backends(request.backends, request.deadline_seconds),
                              request.expected_version)
        return r.service

    @_status
    async def TerminateFlows(self, request, context):
        validate_name(request.service, "service")
        svc = await self._run(self.services.get, request.service)  # NOT_FOUND before anything is written
        validate_backend_refs(request.backends, "backends")
        check_members(request.backends, svc)
        nodes = await self._run(self.registry.list)
        connected = [n.name for n in nodes if n.health in (api_pb2.NODE_HEALTH_READY, api_pb2.NODE_HEALTH_DEGRADED)]
        term = terminations.new_request(request, connected)
        key = keys.termination_request(term.id)
        await self._write(key, lambda rev: rev or 0, self.store.txn, [], [(key, term.SerializeToString())])
        return term

    @_status
    async def GetTermination(self, request, context):
        if not request.id:
            raise InvalidState("id", "must not be empty")
        found = await self._run(terminations.assemble, self.store, "", request.id)
        if not found:
            raise NotFound(f"termination {request.id!r} does not exist")
        return found[0]

    @_status
    async def ListTerminations(self, request, context):
        if request.page_size > terminations.MAX_PAGE_SIZE:
            raise InvalidState("page_size", f"{request.page_size} exceeds {terminations.MAX_PAGE_SIZE}")
        found = await self._run(terminations.assemble, self.store, request.service)
        try:
            items, token = terminations.page(found, request.page_size, request.page_token)
        except ValueError as e:
            raise InvalidState("page_token", str(e)) from None
        return api_pb2.ListTerminationsResponse(terminations=items, next_page_token=token)

    @_status
    async def ListNodes(self, request, context):
        nodes = await self._run(self.registry.list)
        return api_pb2.ListNodesResponse(nodes=sorted(nodes, key=lambda n: n.name))

    @_status
    async def GetStats(self, request, context):
        reports = await self._run(self.registry.list_stats)
        out = aggregate_stats(reports, request.service, request.node)
        workloads, _ = await self._run(self.workloads.list)
        out.workloads.extend(workload_statuses(
            [w for w in workloads if not request.node or w.node == request.node], reports))
        return out

    async def Watch(self, request, context):
        try:
            async with contextlib.aclosing(changes(self.store, request.from_revision)) as events:
                async for ev in events:
                    yield ev
        except Compacted as e:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE,
                                f"from_revision: {request.from_revision} is compacted (oldest kept: "
                                f"{e.compact_revision}); list and watch from the list's revision")
        except Unavailable as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"store unavailable: {e}")
        except WatchEnded as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"watch ended: {e}")

    # --- policy resources: workloads, policies, local redirects ---------------------------
    async def _put(self, repo: ResourceRepository, request, field: str):
        """Put* of a policy resource: request.<field> written as services are."""
        if not request.HasField(field):
            raise InvalidState(field, "is required")
        resource = getattr(request, field)
        r = await self._write(repo.kind.key(resource.name), _written_resource, repo.put, resource,
                              request.expected_version, request.create_only)
        return r.resource

    async def _delete(self, key: str, delete, request) -> api_pb2.DeleteServiceResponse:
        """Delete* of any resource: delete(name, expected_version) -> (revision, existed)."""
        rev, existed = await self._write(key, lambda r: r[0] if r[1] else 0, delete, request.name,
                                         request.expected_version)
        return api_pb2.DeleteServiceResponse(revision=rev, existed=existed)

    async def _delete_resource(self, repo: ResourceRepository, request) -> api_pb2.DeleteServiceResponse:
        return await self._delete(repo.kind.key(request.name), repo.delete, request)

    async def _preview(self, repo: ResourceRepository, request, field: str) -> api_pb2.Termination:
        """Preview*: the request checked as its Put would check it
        (INVALID_ARGUMENT), then handed to dry_run."""
        if not request.HasField(field):
            raise InvalidState(field, "is required")
        checked = await self._run(repo.checked, getattr(request, field))
        return await self.dry_run(repo.kind, checked)

    async def dry_run(self, kind: Kind, resource) -> api_pb2.Termination:
        """Given a valid resource of `kind` (a policy or a local redirect) in
        its stored form, a dry-run Termination (trigger "policy" /
        "local-redirect") asking the connected nodes whose policy part the
        write would change (the snapshot cache's preview, computed here on
        the event loop that owns the cache) which open sockets they would
        terminate. Only the request record is written (keys.TERMINATIONS),
        nothing of the resource: every replica sends each node it serves its
        part as it would be (server.py), and the nodes' reports join it."""
        if self.cache is None:
            raise NotImplementedError("dry run: this server has no snapshot cache to preview with")
        changed = self.cache.policy.preview(resource)
        nodes = await self._run(self.registry.list)
        connected = {n.name for n in nodes
                     if n.health in (api_pb2.NODE_HEALTH_READY, api_pb2.NODE_HEALTH_DEGRADED)}
        term = terminations.new_preview(resource, [n for n in changed if n in connected])
        key = keys.termination_request(term.id)
        await self._write(key, lambda rev: rev or 0, self.store.txn, [], [(key, term.SerializeToString())])
        return term

    async def _list(self, repo: ResourceRepository, response_type, field: str):
        resources, rev = await self._run(repo.list)
        return response_type(**{field: resources}, revision=rev)

    @_status
    async def ListWorkloads(self, request, context):
        workloads, rev = await self._run(self.workloads.list)
        if request.node:
            workloads = [w for w in workloads if w.node == request.node]
        reports = await self._run(read_reports, self.store, self.registry, request.node)
        return api_pb2.ListWorkloadsResponse(workloads=workloads, revision=rev,
                                             status=workload_statuses(workloads, reports))

    # The other RPCs of the policy resources, one line each: (servicer, request) -> the answer.
    PutWorkload = _rpc("PutWorkload", lambda s, r: s._put(s.workloads, r, "workload"))
    GetWorkload = _rpc("GetWorkload", lambda s, r: s._run(s.workloads.get, r.name))
    DeleteWorkload = _rpc("DeleteWorkload", lambda s, r: s._delete_resource(s.workloads, r))
    PutPolicy = _rpc("PutPolicy", lambda s, r: s._put(s.policies, r, "policy"))
    GetPolicy = _rpc("GetPolicy", lambda s, r: s._run(s.policies.get, r.name))
    ListPolicies = _rpc("ListPolicies", lambda s, r: s._list(s.policies, api_pb2.ListPoliciesResponse, "policies"))
    DeletePolicy = _rpc("DeletePolicy", lambda s, r: s._delete_resource(s.policies, r))
    PutLocalRedirect = _rpc("PutLocalRedirect", lambda s, r: s._put(s.redirects, r, "local_redirect"))
    GetLocalRedirect = _rpc("GetLocalRedirect", lambda s, r: s._run(s.redirects.get, r.name))
    ListLocalRedirects = _rpc("ListLocalRedirects",
                              lambda s, r: s._list(s.redirects, api_pb2.ListLocalRedirectsResponse, "local_redirects"))
    DeleteLocalRedirect = _rpc("DeleteLocalRedirect", lambda s, r: s._delete_resource(s.redirects, r))
    PreviewPolicy = _rpc("PreviewPolicy", lambda s, r: s._preview(s.policies, r, "policy"))
    PreviewLocalRedirect = _rpc("PreviewLocalRedirect", lambda s, r: s._preview(s.redirects, r, "local_redirect"))


def _written(r) -> int:
    return r.service.resource_version if r.written else 0


def _written_resource(r) -> int:
    return r.resource.resource_version if r.written else 0


def aggregate_stats(reports, service: str = "", node: str = "") -> api_pb2.StatsResponse:
    """Sum the nodes' reports: flows and socket statistics per service and backend."""
    out = api_pb2.StatsResponse()
    flows: dict[str, dict[tuple[str, int], int]] = {}
    sockets: dict[tuple[str, str, int], dict[int, node_pb2.SocketStats]] = {}
    for name in sorted(reports):
        if node and name != node:
            continue
        r = reports[name]
        total = 0
        for f in r.flows:
            if service and f.service != service:
                continue
            per = flows.setdefault(f.service, {})
            per[(f.backend_address, f.backend_port)] = per.get((f.backend_address, f.backend_port), 0) + f.active
            total += f.active
        for st in r.sockets:
            if service and st.service != service:
                continue
            flows.setdefault(st.service, {}).setdefault((st.backend_address, st.backend_port), 0)
            acc = sockets.setdefault((st.service, st.backend_address, st.backend_port), {})
            _add_socket_stats(acc, st)
        ns = api_pb2.NodeStats(node=name, active_flows=total, reported_at=r.at, unavailable=r.unavailable)
        ns.counters.CopyFrom(r.counters if r.HasField("counters") else node_pb2.Counters())
        out.nodes.append(ns)
    for svc in sorted(flows):
        backends = flows[svc]
        s = api_pb2.ServiceStats(service=svc, active_flows=sum(backends.values()))
        for (addr, port) in sorted(backends):
            b = api_pb2.BackendStats(address=addr, port=port, active_flows=backends[(addr, port)])
            per_proto = sockets.get((svc, addr, port), {})
            b.sockets.extend(per_proto[p] for p in sorted(per_proto))
            s.backends.append(b)
        out.services.append(s)
    return out


def _add_socket_stats(acc: dict, st: node_pb2.SocketStats) -> None:
    cur = acc.get(st.protocol)
    if cur is None:
        acc[st.protocol] = node_pb2.SocketStats()
        acc[st.protocol].CopyFrom(st)
        return
    # Mean RTT weighted by socket count.
    n = cur.sockets + st.sockets
    if n:
        cur.srtt_us = (cur.srtt_us * cur.sockets + st.srtt_us * st.sockets) // n
    cur.sockets = n
    for k, v in st.states.items():
        cur.states[k] = cur.states.get(k, 0) + v
    cur.bytes_sent += st.bytes_sent
    cur.bytes_received += st.bytes_received
    cur.retransmits += st.retransmits
    cur.drops += st.drops
