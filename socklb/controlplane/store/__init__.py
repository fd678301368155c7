"""The control plane's store: embedded (SQLite, one process) or etcd (cluster).

The contract is base.py; open_store() opens one of the two from a URL.
"""
from __future__ import annotations

from urllib.parse import parse_qs

from .base import Compacted, Compare, Event, Full, KeyValue, Leadership, Store, StoreError, Unavailable, Watch
from .embedded import EmbeddedStore
from .etcd import EtcdStore, parse_etcd_endpoints

__all__ = ["Compacted", "Compare", "Event", "Full", "KeyValue", "Leadership", "Store", "StoreError", "Unavailable",
           "Watch", "open_store"]


def _query(q: str, allowed: dict[str, type], url: str) -> dict:
    out = {}
    for k, vs in parse_qs(q, keep_blank_values=True, strict_parsing=bool(q)).items():
        if k not in allowed:
            raise ValueError(f"store URL {url!r}: unknown option {k!r} (known: {', '.join(allowed)})")
        try:
            out[k] = allowed[k](vs[-1])
        except ValueError:
            raise ValueError(f"store URL {url!r}: bad value for {k!r}: {vs[-1]!r}") from None
    return out


def open_store(url: str) -> Store:
    """Open a store from a URL.

    - ``embedded:///abs/dir`` (``embedded://rel/dir``, or a plain path): the
      embedded store in that directory (created if missing). Option:
      ``?history=N`` revisions of watch history kept (default 100000).
    - ``etcd://host:port[,host:port...]`` (port defaults to 2379, IPv6 as
      ``[addr]:port``): etcd over gRPC. Options: ``?timeout=SECONDS`` per
      request (default 5); ``ca=PATH`` (TLS, verifying etcd's certificate
      against this CA), with ``cert=PATH&key=PATH`` (a client certificate for
      etcd's --client-cert-auth). Does not connect eagerly: an unreachable etcd shows
      as Unavailable from the operations.
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"store URL must be a non-empty string, got {url!r}")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        if ":" in url.split("/")[0] and not url.startswith(("/", ".")):
            raise ValueError(f"store URL {url!r}: expected embedded:///dir, etcd://host:port,... or a path")
        scheme, rest = "embedded", url
    rest, _, q = rest.partition("?")
    if scheme == "embedded":
        if not rest:
            raise ValueError(f"store URL {url!r}: no directory")
        return EmbeddedStore(rest, **_query(q, {"history": int}, url))
    if scheme == "etcd":
        rest = rest.rstrip("/")
        if not rest or "/" in rest:
            raise ValueError(f"store URL {url!r}: expected etcd://host:port[,host:port...]")
        return EtcdStore(parse_etcd_endpoints(rest, url),
                         **_query(q, {"timeout": float, "ca": str, "cert": str, "key": str}, url))
    raise ValueError(f"store URL {url!r}: unknown scheme {scheme!r} (embedded or etcd)")
