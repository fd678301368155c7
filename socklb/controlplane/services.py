"""Service writes against the store: validation, optimistic concurrency,
frontend uniqueness, idempotence — every write is one transaction or nothing.

Synchronous (store calls block); the gRPC layer runs these in threads.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from google.protobuf import timestamp_pb2

from socklb.lb.addresses import canonical_address, parse_ip
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import frontend_key
from socklb.lb.names import validate_name
from socklb.v1 import api_pb2, types_pb2

from . import keys
from .store import Compare, Store
from .validate import validate_backend_refs, validate_backends, validate_service
from .writes import RETRIES, AlreadyExists, Conflict, NotFound, check_expected
from .writes import delete as delete_key


@dataclass
class WriteResult:
    service: api_pb2.Service
    written: bool


def _decode(kv) -> api_pb2.Service:
    svc = api_pb2.Service.FromString(kv.value)
    svc.resource_version = kv.mod_revision
    return svc


def _frontend_keys(svc: api_pb2.Service) -> dict[str, int]:
    """Index keys of the service's frontends -> position in svc.frontends."""
    out: dict[str, int] = {}
    for i, fe in enumerate(svc.frontends):
        out.setdefault(keys.frontend(frontend_key(fe, f"service.frontends[{i}]")), i)
    return out


class ServiceRepository:
    """The services in a Store (the key-value contract, store/): reads, and
    writes each as one transaction. Not itself a store: the name was
    ServiceStore, one of three "stores" (docs/glossary.md)."""

    def __init__(self, store: Store):
        self.store = store

    # --- reads ---------------------------------------------------------------
    def get(self, name: str) -> api_pb2.Service:
        validate_name(name, "name")
        kv = self.store.get(keys.service(name))
        if kv is None:
            raise NotFound(f"service {name!r} does not exist")
        return _decode(kv)

    def list(self) -> tuple[list[api_pb2.Service], int]:
        kvs, rev = self.store.range(keys.SERVICES)
        return [_decode(kv) for kv in kvs], rev

    # --- writes --------------------------------------------------------------
    def put(self, svc: api_pb2.Service, expected_version: int = 0, create_only: bool = False) -> WriteResult:
        svc = _normalized(svc)
        del svc.released[:]  # output only: kept from what is stored
        validate_service(svc)

        def replace(old: api_pb2.Service) -> api_pb2.Service:
            new = api_pb2.Service()
            new.CopyFrom(svc)
            new.released.extend(old.released)
            _unrelease(new, new.backends)
            return new
        return self._write(svc.name, replace, expected_version, create_only=create_only, must_exist=False)

    def update(self, name: str, mutate: Callable[[api_pb2.Service], api_pb2.Service],
               expected_version: int = 0, fence: Compare | None = None) -> WriteResult:
        validate_name(name, "service")
        return self._write(name, mutate, expected_version, create_only=False, must_exist=True, fence=fence)

    def delete(self, name: str, expected_version: int = 0) -> tuple[int, bool]:
        validate_name(name, "name")
        return delete_key(self.store, keys.service(name), f"service {name!r}", expected_version,
                          also=lambda kv: list(_frontend_keys(_decode(kv))))

    def _write(self, name, mutate, expected_version, create_only, must_exist, fence=None) -> WriteResult:
        key = keys.service(name)
        for _ in range(RETRIES):
            kv = self.store.get(key)
            old = _decode(kv) if kv else None
            if old is None and must_exist:
                raise NotFound(f"service {name!r} does not exist")
            if old is not None and create_only:
                raise AlreadyExists(f"service {name!r} already exists")
            check_expected(f"service {name!r}", kv, expected_version)
            base = api_pb2.Service()
            if old is not None:
                base.CopyFrom(old)
            new = _normalized(mutate(base))
            validate_service(new)
            if old is not None and _normalized(old) == new:
                return WriteResult(old, written=False)  # idempotent: nothing to write
            compares = [Compare(key, kv.mod_revision if kv else 0)] + ([fence] if fence else [])
            new_fe = _frontend_keys(new)
            old_fe = _frontend_keys(old) if old is not None else {}
            for fkey, pos in new_fe.items():
                owner = self.store.get(fkey)
                if owner is not None and owner.value.decode() != name:
                    raise InvalidState(f"service.frontends[{pos}]",
                                       f"{new.frontends[pos].address}:{new.frontends[pos].port} is already "
                                       f"used by service {owner.value.decode()!r}")
                compares.append(Compare(fkey, owner.mod_revision if owner else 0))
            puts = [(key, new.SerializeToString(deterministic=True))]
            puts += [(fkey, name.encode()) for fkey in new_fe if fkey not in old_fe]
            deletes = [fkey for fkey in old_fe if fkey not in new_fe]
            rev = self.store.txn(compares, puts, deletes)
            if rev is not None:
                new.resource_version = rev
                return WriteResult(new, written=True)
            if expected_version:
                raise Conflict(f"service {name!r} changed concurrently")
            if fence is not None and self.store.txn([fence]) is None:
                raise Conflict("leadership lost")
        raise Conflict(f"service {name!r} kept changing; try again")


def _normalized(svc: api_pb2.Service) -> api_pb2.Service:
    """The stored form: addresses canonical (so `[::1]`, `::0:1` and `::1`
    are one backend everywhere, e.g. for keep_sockets), no version."""
    out = api_pb2.Service()
    out.CopyFrom(svc)
    out.resource_version = 0
    for x in (*out.frontends, *out.backends, *out.released):
        x.address = canonical_address(x.address)
    return out


# --- backend operations (pure mutations) --------------------------------------

def _ident(address: str, port: int) -> tuple[str, int]:
    return str(parse_ip(address, "address")), port


MAX_RELEASED = 256


def _unrelease(svc: api_pb2.Service, backends) -> None:
    """A backend added again is no longer 'removed with its sockets kept'."""
    back = {_ident(b.address, b.port) for b in backends}
    keep = [r for r in svc.released if _ident(r.address, r.port) not in back]
    del svc.released[:]
    svc.released.extend(keep)


def set_backends(backends) -> Callable[[api_pb2.Service], api_pb2.Service]:
    validate_backends(backends, "backends")

    def mutate(svc):
        del svc.backends[:]
        svc.backends.extend(backends)
        _unrelease(svc, backends)
        return svc
    return mutate


def add_backends(backends) -> Callable[[api_pb2.Service], api_pb2.Service]:
    validate_backends(backends, "backends")

    def mutate(svc):
        index = {_ident(b.address, b.port): i for i, b in enumerate(svc.backends)}
        for b in backends:
            i = index.get(_ident(b.address, b.port))
            if i is None:
                svc.backends.append(b)
                index[_ident(b.address, b.port)] = len(svc.backends) - 1
            else:
                svc.backends[i].CopyFrom(b)
        _unrelease(svc, backends)
        return svc
    return mutate


def remove_backends(refs, keep_sockets: bool = False) -> Callable[[api_pb2.Service], api_pb2.Service]:
    """Remove backends; their flows are terminated on every node unless
    keep_sockets, which records them in `released` (sent to nodes as keep_flows)."""
    validate_backend_refs(refs, "backends")
    gone = {_ident(r.address, r.port) for r in refs}

    def mutate(svc):
        removed = [b for b in svc.backends if _ident(b.address, b.port) in gone]
        keep = [b for b in svc.backends if _ident(b.address, b.port) not in gone]
        del svc.backends[:]
        svc.backends.extend(keep)
        if keep_sockets and removed:
            have = {_ident(r.address, r.port) for r in svc.released}
            for b in removed:
                if _ident(b.address, b.port) not in have:
                    svc.released.append(api_pb2.BackendRef(address=b.address, port=b.port))
            del svc.released[:-MAX_RELEASED]
        return svc
    return mutate


def drain_backends(refs, deadline_seconds: int, now: float | None = None
                   ) -> Callable[[api_pb2.Service], api_pb2.Service]:
    validate_backend_refs(refs, "backends")
    wanted = {_ident(r.address, r.port): i for i, r in enumerate(refs)}
    deadline = None
    if deadline_seconds:
        deadline = timestamp_pb2.Timestamp()
        deadline.FromNanoseconds(int(((now or time.time()) + deadline_seconds) * 1e9))

    def mutate(svc):
        found = set()
        for b in svc.backends:
            ident = _ident(b.address, b.port)
            if ident in wanted:
                found.add(ident)
                b.state = types_pb2.BACKEND_STATE_DRAINING
                if deadline is not None:
                    b.drain_deadline.CopyFrom(deadline)
                else:
                    b.ClearField("drain_deadline")
        missing = [i for ident, i in wanted.items() if ident not in found]
        if missing:
            i = missing[0]
            raise InvalidState(f"backends[{i}]", f"{refs[i].address} port {refs[i].port} is not a backend "
                                                 f"of service {svc.name!r}")
        return svc
    return mutate


def expire_drains(services: ServiceRepository, fence: Compare, names: Iterable[str] | None = None,
                  now: float | None = None) -> list[str]:
    """Leader duty: remove DRAINING backends whose deadline has passed, in
    the services named (those with a due deadline), or in every service."""
    now = now if now is not None else time.time()
    done = []
    if names is None:
        candidates = services.list()[0]
    else:
        candidates = []
        for name in names:
            try:
                candidates.append(services.get(name))
            except NotFound:
                continue
    for svc in candidates:
        expired = [types_pb2.Backend(address=b.address, port=b.port) for b in svc.backends
                   if b.state == types_pb2.BACKEND_STATE_DRAINING and b.HasField("drain_deadline")
                   and b.drain_deadline.ToNanoseconds() <= now * 1e9]
        if not expired:
            continue
        refs = [api_pb2.BackendRef(address=b.address, port=b.port) for b in expired]
        try:
            services.update(svc.name, remove_backends(refs), fence=fence)
        except (NotFound, Conflict):
            continue
        done.append(svc.name)
    return done
