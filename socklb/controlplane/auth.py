"""Who may call what: authentication (mTLS certificate or bearer token) and
roles, enforced by a server interceptor on every control-plane RPC.

The clients file (--clients-file, YAML) names every caller:

    clients:
      - {name: ops, role: read-write, token: "..."}      # bearer token
      - {name: grafana, role: read-only, token: "..."}
      - {name: node-1, role: node, cn: node-1}            # mTLS certificate CN
      - {name: ci, role: read-write, cn: ci-deployer}
      - {name: socklb-node, role: node, cn: socklb-node, any_node: true}

Roles: read-only (Get*/List*/Watch), read-write (every API call), node (the
NodeSync stream, and only as the node of its own name; with `any_node: true`
as any node: one identity shared by a DaemonSet, whose nodes are not known
when certificates are issued). Without a clients
file the control plane authenticates nobody and allows everything: meant for
a single machine on loopback, and logged loudly.
"""
from __future__ import annotations

import contextvars
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from socklb.grpcauth import bearer_token

log = logging.getLogger(__name__)

ROLES = ("read-only", "read-write", "node")
READ_METHODS = {"GetService", "ListServices", "ListNodes", "GetStats", "Watch", "GetTermination",
                "ListTerminations", "GetWorkload", "ListWorkloads", "GetPolicy", "ListPolicies",
                "GetLocalRedirect", "ListLocalRedirects"}
API = "/socklb.v1.LoadBalancer/"
SYNC = "/socklb.v1.NodeSync/"
# Health and reflection stay open: probes and tooling carry no credentials.
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    any_node: bool = False


# The caller of the RPC being served (set by the interceptor's wrapper).
current_identity: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("socklb_identity", default=None)


class ClientsFileError(ValueError):
    pass


@dataclass(frozen=True)
class Clients:
    by_token: dict[str, Identity]
    by_cn: dict[str, Identity]

    @classmethod
    def load(cls, path: str | Path) -> "Clients":
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ClientsFileError(f"{path}: {e}") from None
        entries = data.get("clients") if isinstance(data, dict) else None
        if not isinstance(entries, list):
            raise ClientsFileError(f"{path}: expected a mapping with a `clients` list")
        by_token, by_cn = {}, {}
        for i, e in enumerate(entries):
            where = f"{path}: clients[{i}]"
            if not isinstance(e, dict) or not e.get("name") or e.get("role") not in ROLES:
                raise ClientsFileError(f"{where}: needs `name` and `role` (one of {', '.join(ROLES)})")
            any_node = e.get("any_node", False)
            if not isinstance(any_node, bool) or (any_node and e["role"] != "node"):
                raise ClientsFileError(f"{where}.any_node: true or false, and only for role node")
            ident = Identity(str(e["name"]), e["role"], any_node)
            if not e.get("token") and not e.get("cn"):
                raise ClientsFileError(f"{where}: needs a `token` or a certificate `cn`")
            if e.get("token"):
                if len(str(e["token"])) < 16:
                    raise ClientsFileError(f"{where}.token: use at least 16 characters")
                by_token[str(e["token"])] = ident
            if e.get("cn"):
                by_cn[str(e["cn"])] = ident
        return cls(by_token, by_cn)

    def authenticate(self, metadata, auth_context) -> Identity | None:
        token = bearer_token(metadata)
        if token is not None:
            for known, ident in self.by_token.items():
                if hmac.compare_digest(known, token):
                    return ident
            return None
        # mTLS: the certificate was verified against the client CA by the TLS layer.
        for cn in (auth_context or {}).get("x509_common_name", []):
            ident = self.by_cn.get(cn.decode() if isinstance(cn, bytes) else cn)
            if ident is not None:
                return ident
        return None


def allowed(ident: Identity, method: str) -> bool:
    if method.startswith(SYNC):
        return ident.role == "node"
    if method.startswith(API):
        name = method[len(API):]
        return ident.role == "read-write" or (ident.role == "read-only" and name in READ_METHODS)
    return False


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Checks every call before its handler runs; the handler sees the caller
    in `current_identity`."""

    def __init__(self, clients: Clients):
        self.clients = clients

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        method = details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        return _wrap(handler, lambda ctx: self._check(ctx, method, details.invocation_metadata))

    def _check(self, context, method: str, metadata) -> Identity:
        ident = self.clients.authenticate(metadata, context.auth_context())
        if ident is None:
            raise _Denied(grpc.StatusCode.UNAUTHENTICATED,
                          "no valid credentials: send a client certificate or `authorization: Bearer <token>`")
        if not allowed(ident, method):
            raise _Denied(grpc.StatusCode.PERMISSION_DENIED,
                          f"{ident.name} ({ident.role}) may not call {method.rsplit('/', 1)[-1]}")
        return ident


class _Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _wrap(handler: grpc.RpcMethodHandler, check) -> grpc.RpcMethodHandler:
    async def guard(context):
        try:
            ident = check(context)
        except _Denied as e:
            await context.abort(e.code, str(e))
        current_identity.set(ident)

    if handler.unary_unary:
        async def unary_unary(request, context):
            await guard(context)
            return await handler.unary_unary(request, context)
        return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer,
                                                   handler.response_serializer)
    if handler.unary_stream:
        async def unary_stream(request, context):
            await guard(context)
            async for item in handler.unary_stream(request, context):
                yield item
        return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer,
                                                    handler.response_serializer)
    if handler.stream_stream:
        async def stream_stream(requests, context):
            await guard(context)
            async for item in handler.stream_stream(requests, context):
                yield item
        return grpc.stream_stream_rpc_method_handler(stream_stream, handler.request_deserializer,
                                                     handler.response_serializer)
    return handler  # stream-unary: socklb has none


def check_node_name(requested: str) -> str | None:
    """A node identity may only sync as itself: the error, or None if fine."""
    ident = current_identity.get()
    if ident is None or ident.role != "node" or ident.any_node or ident.name == requested:
        return None
    return f"hello.node: {ident.name} may only sync as node {ident.name!r}, not {requested!r}"


# --- TLS ---------------------------------------------------------------------------

def server_credentials(cert: str, key: str, client_ca: str | None) -> grpc.ServerCredentials:
    """TLS (mTLS with client_ca) whose files are re-read when they change, so
    a certificate is rotated by replacing the files: no restart."""
    state = {"mtimes": None}

    def files():
        return [p for p in (cert, key, client_ca) if p]

    def load() -> grpc.ServerCertificateConfiguration:
        pair = [(Path(key).read_bytes(), Path(cert).read_bytes())]
        ca = Path(client_ca).read_bytes() if client_ca else None
        state["mtimes"] = [Path(p).stat().st_mtime_ns for p in files()]
        return grpc.ssl_server_certificate_configuration(pair, root_certificates=ca)

    initial = load()

    def fetch():
        try:
            now = [Path(p).stat().st_mtime_ns for p in files()]
            if now != state["mtimes"]:
                log.info("TLS files changed: loading the new certificate")
                return load()
        except (OSError, ValueError) as e:
            log.error("cannot reload TLS files (keeping the current ones): %s", e)
        return None

    return grpc.dynamic_ssl_server_credentials(initial, fetch, require_client_authentication=bool(client_ca))
