"""What a socklb gRPC caller presents, in one place below both planes: TLS
channel credentials from PEM files, and the bearer token as call metadata
(written by the clients, read by the control plane's auth)."""
from __future__ import annotations

from pathlib import Path

import grpc

AUTHORIZATION = "authorization"
BEARER = "Bearer "

Metadata = tuple[tuple[str, str], ...]


def channel_credentials(ca: str | None, cert: str | None, key: str | None) -> grpc.ChannelCredentials:
    """TLS to a server from PEM files (read once): verify it against `ca`
    (None: the system roots), and present `cert`/`key` when given (mTLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=Path(ca).read_bytes() if ca else None,
        private_key=Path(key).read_bytes() if key else None,
        certificate_chain=Path(cert).read_bytes() if cert else None)


def token_metadata(token: str) -> Metadata | None:
    """The call metadata carrying `token` (None without one)."""
    return ((AUTHORIZATION, BEARER + token),) if token else None


def bearer_token(metadata) -> str | None:
    """The token of the first bearer `authorization` header, or None."""
    for key, value in metadata or ():
        if key == AUTHORIZATION and isinstance(value, str) and value.startswith(BEARER):
            return value[len(BEARER):]
    return None
