"""The policy resources in the store — workloads, policies, local redirects:
reads, and writes each as one transaction, under the conventions of
services (services.py): resource_version is the revision of the write,
expected_version a compare-and-set on it, create_only, writing what is stored
changes nothing, deleting is idempotent.

One implementation for the three kinds; a Kind says what differs between them.
Synchronous (store calls block); the gRPC layer runs these in threads.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from google.protobuf.message import Message

from socklb.lb.errors import InvalidState
from socklb.lb.names import validate_name
from socklb.v1 import policy_pb2

from . import keys
from .store import Compare, KeyValue, Store
from .validate_policy import (normalized_local_redirect, normalized_policy, normalized_workload,
                              validate_local_redirect, validate_policy, validate_workload)
from .writes import RETRIES, AlreadyExists, Conflict, NotFound, check_expected
from .writes import delete as delete_key

M = TypeVar("M", bound=Message)

@dataclass(frozen=True)
class Kind(Generic[M]):
    word: str                          # how errors name it: "workload 'a' does not exist"
    prefix: str                        # its keys: keys.WORKLOADS, ...
    key: Callable[[str], str]          # name -> key (keys.workload, ...)
    message: type[M]
    normalized: Callable[[M], M]       # the stored form (canonical addresses, no resource_version)
    validate: Callable[[M], None]      # raises InvalidState naming the field
    # Index keys a resource claims alone -> (the field a clash is blamed on,
    # what is claimed, in words): a workload's node + cgroup. Written and
    # deleted with the resource.
    claims: Callable[[M], dict[str, tuple[str, str]]] = lambda _: {}


def _workload_claims(w: policy_pb2.Workload) -> dict[str, tuple[str, str]]:
    return {keys.workload_cgroup(w.node, w.cgroup): ("workload.cgroup", f"cgroup {w.cgroup!r} on node {w.node!r}")}


WORKLOAD: Kind[policy_pb2.Workload] = Kind("workload", keys.WORKLOADS, keys.workload, policy_pb2.Workload,
                                           normalized_workload, validate_workload, _workload_claims)
POLICY: Kind[policy_pb2.Policy] = Kind("policy", keys.POLICIES, keys.policy, policy_pb2.Policy,
                                       normalized_policy, validate_policy)
LOCAL_REDIRECT: Kind[policy_pb2.LocalRedirect] = Kind("local redirect", keys.REDIRECTS, keys.redirect,
                                                      policy_pb2.LocalRedirect, normalized_local_redirect,
                                                      validate_local_redirect)


@dataclass
class Written(Generic[M]):
    resource: M    # as stored, with its resource_version
    written: bool  # False: it was stored already, nothing was written


class ResourceRepository(Generic[M]):
    """The resources of one Kind in a Store."""

    def __init__(self, store: Store, kind: Kind[M]):
        self.store = store
        self.kind = kind

    def _decode(self, kv: KeyValue) -> M:
        msg = self.kind.message.FromString(kv.value)
        msg.resource_version = kv.mod_revision
        return msg

    def checked(self, resource: M) -> M:
        """What a put would store: the stored form, validated (InvalidState
        naming the field). A dry run checks its input with this too."""
        new = self.kind.normalized(resource)
        self.kind.validate(new)
        return new

    # --- reads ---------------------------------------------------------------
    def get(self, name: str) -> M:
        validate_name(name, "name")
        kv = self.store.get(self.kind.key(name))
        if kv is None:
            raise NotFound(f"{self.kind.word} {name!r} does not exist")
        return self._decode(kv)

    def list(self) -> tuple[list[M], int]:
        kvs, rev = self.store.range(self.kind.prefix)
        return [self._decode(kv) for kv in kvs], rev

    # --- writes --------------------------------------------------------------
    def put(self, resource: M, expected_version: int = 0, create_only: bool = False) -> Written[M]:
        new = self.checked(resource)
        name = new.name
        key = self.kind.key(name)
        data = new.SerializeToString(deterministic=True)
        what = f"{self.kind.word} {name!r}"
        for _ in range(RETRIES):
            kv = self.store.get(key)
            if kv is not None and create_only:
                raise AlreadyExists(f"{what} already exists")
            check_expected(what, kv, expected_version)
            old = self._decode(kv) if kv is not None else None
            if old is not None and self.kind.normalized(old) == new:
                return Written(old, written=False)  # idempotent: nothing to write
            compares = [Compare(key, kv.mod_revision if kv else 0)]
            puts = [(key, data)]
            claimed = self.kind.claims(new)
            for claim, (field, words) in claimed.items():
                owner = self.store.get(claim)
                if owner is not None and owner.value.decode() != name:
                    raise InvalidState(field, f"{words} is already {self.kind.word} {owner.value.decode()!r}")
                compares.append(Compare(claim, owner.mod_revision if owner else 0))
                puts.append((claim, name.encode()))
            released = [c for c in (self.kind.claims(old) if old is not None else {}) if c not in claimed]
            rev = self.store.txn(compares, puts, released)
            if rev is not None:
                new.resource_version = rev
                return Written(new, written=True)
            if expected_version:
                raise Conflict(f"{what} changed concurrently")
        raise Conflict(f"{what} kept changing; try again")

    def delete(self, name: str, expected_version: int = 0) -> tuple[int, bool]:
        """(revision, existed): deleting what does not exist changes nothing."""
        validate_name(name, "name")
        return delete_key(self.store, self.kind.key(name), f"{self.kind.word} {name!r}", expected_version,
                          also=lambda kv: list(self.kind.claims(self._decode(kv))))
