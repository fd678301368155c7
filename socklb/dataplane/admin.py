"""The node admin API (socklb.v1.NodeAdmin) over a unix socket."""
from __future__ import annotations

import os
import platform
import uuid
from concurrent import futures
from pathlib import Path

import grpc

from socklb.lb import protocols
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import SELECTIONS_PB, STATES_PB
from socklb.observability.grpcutil import add_health_and_reflection
from socklb.v1 import node_pb2, node_pb2_grpc, types_pb2

from . import layout
from .agent import Agent, StateUnknown
from .features import Unavailable


def frontend_pb(addr: bytes, port: int, proto: int) -> types_pb2.Frontend:
    return types_pb2.Frontend(address=layout.addr_text(addr), port=port,
                              protocol=protocols.TO_PB.get(proto, types_pb2.PROTOCOL_UNSPECIFIED))


class NodeAdminServicer(node_pb2_grpc.NodeAdminServicer):
    def __init__(self, agent: Agent):
        self.agent = agent

    def GetState(self, request, context):
        return self.agent.state()

    def ApplyState(self, request, context):
        try:
            if request.WhichOneof("state") == "delta":
                r = self.agent.apply_delta(request.delta)
            elif request.WhichOneof("state") == "full":
                r = self.agent.apply(request.full)
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "state: give `full` or `delta`")
        except InvalidState as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except StateUnknown as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except OSError as e:
            context.abort(grpc.StatusCode.INTERNAL, f"map update failed, previous state restored: {e}")
        return node_pb2.ApplyStateResponse(
            version=r.version, frontends_written=r.frontends_written, frontends_removed=r.frontends_removed,
            backends_written=r.backends_written, backends_removed=r.backends_removed,
            duration_seconds=r.duration)

    def DumpServices(self, request, context):
        out = node_pb2.DumpServicesResponse()
        for fe in self.agent.catalog.current().frontends():
            out.frontends.append(node_pb2.ProgrammedFrontend(
                id=fe.id, service=fe.service, frontend=frontend_pb(fe.key.addr, fe.key.port, fe.key.proto),
                selection=SELECTIONS_PB[fe.selection], affinity_timeout_seconds=fe.affinity_timeout,
                slots=list(fe.slots)))
        return out

    def DumpBackends(self, request, context):
        out = node_pb2.DumpBackendsResponse()
        for b in self.agent.catalog.current().backends():
            out.backends.append(node_pb2.ProgrammedBackend(
                id=b.id, frontend_id=b.frontend_id, address=layout.addr_text(b.addr),
                port=b.port, protocol=protocols.TO_PB.get(b.proto, 0), state=STATES_PB[b.state]))
        return out

    def DumpFlows(self, request, context):
        try:
            dump = self.agent.statistics.flow_dump()
        except Unavailable as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"flows cannot be read on this node: {e}")
        out = node_pb2.DumpFlowsResponse(method=dump.method, duration_seconds=dump.duration,
                                         namespaces=dump.netns_scanned, errors=dump.errors)
        for f in dump.flows:
            out.flows.append(node_pb2.Flow(
                frontend_id=f.frontend_id, backend_id=f.backend_id,
                frontend=frontend_pb(f.vip, layout.port_host(f.vip_port), f.proto),
                backend_address=layout.addr_text(f.backend_addr), backend_port=layout.port_host(f.backend_port)))
        return out

    def GetCounters(self, request, context):
        return self.agent.statistics.counters()

    def Terminate(self, request, context):
        if not request.service:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "service: must not be empty")
        return self.agent.terminate(request.service, request.backends, request.dry_run,
                                    f"local-{uuid.uuid4().hex[:8]}")

    def GetSocketStats(self, request, context):
        try:
            return node_pb2.SocketStatsResponse(stats=self.agent.statistics.socket_stats(self.agent.catalog))
        except Unavailable as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"socket statistics cannot be read on this node: {e}")

    def DumpTerminations(self, request, context):
        return node_pb2.TerminationReports(reports=self.agent.terminations.recent())

    def GetInfo(self, request, context):
        where = self.agent.writer.placement()
        return node_pb2.NodeInfo(node=self.agent.node, cgroup=where.cgroup, pin_dir=where.pin_dir,
                                 applied_version=self.agent.applied_version, adopted=where.adopted,
                                 kernel=platform.release(), capabilities=self.agent.capabilities())


def serve(agent: Agent, socket_path: Path) -> grpc.Server:
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()  # a stale socket of a killed agent
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    node_pb2_grpc.add_NodeAdminServicer_to_server(NodeAdminServicer(agent), server)
    add_health_and_reflection(server, ["socklb.v1.NodeAdmin"])
    # Admin rights on the node: the socket is created 0600, never reachable
    # by others (a chmod after bind would leave a window).
    old = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix://{socket_path}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)  # whatever the umask did, say it once more
    return server
