"""gRPC health checking and reflection, on every socklb server."""
from __future__ import annotations

from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

SERVING = health_pb2.HealthCheckResponse.SERVING


def _reflect(server, services: list[str]) -> None:
    reflection.enable_server_reflection([*services, health.SERVICE_NAME, reflection.SERVICE_NAME], server)


async def add_health_and_reflection_aio(server, services: list[str]):
    """grpc.health.v1 (SERVING for "" and each service) and reflection on a grpc.aio server."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *services]:
        await servicer.set(name, SERVING)
    _reflect(server, services)
    return servicer


def add_health_and_reflection(server, services: list[str]):
    """The same for a thread-pool grpc.server."""
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    for name in ["", *services]:
        servicer.set(name, SERVING)
    _reflect(server, services)
    return servicer
