"""The connection to the control plane: one channel (TLS or mTLS when given
the files, else plaintext), the bearer token on every call, the --timeout
deadline on every unary call, and how a failed call is reported (the gRPC
status code → the exit code, socklb.cli.exits)."""
from __future__ import annotations

import sys

import grpc

from socklb.cli.exits import exit_code_for
from socklb.grpcauth import channel_credentials, token_metadata
from socklb.v1 import api_pb2_grpc

class Client:
    def __init__(self, server: str, timeout: float | None, tls_ca: str = "", tls_cert: str = "",
                 tls_key: str = "", token: str = ""):
        self.server = server
        self.timeout = timeout
        if tls_ca or tls_cert:
            creds = channel_credentials(tls_ca or None, tls_cert or None, tls_key or None)
            self.channel = grpc.secure_channel(server, creds)
        else:
            self.channel = grpc.insecure_channel(server)
        self.metadata = token_metadata(token)
        self.stub = api_pb2_grpc.LoadBalancerStub(self.channel)

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)

    def connected(self) -> bool:
        """Whether the channel reached the server (tells a refused connection from a server's answer)."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=0.5)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            ready.cancel()  # else it keeps polling the channel close() shuts

    def close(self) -> None:
        self.channel.close()


def report_rpc_error(e: grpc.RpcError, client: Client) -> int:
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (e.details() if callable(getattr(e, "details", None)) else None) or str(e)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not client.connected():
        print(f"error: {code.name}: cannot reach the control plane at {client.server}: {details}",
              file=sys.stderr)
    else:
        print(f"error: {code.name}: {details}", file=sys.stderr)
    return exit_code_for(code)

