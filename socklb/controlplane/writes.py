"""What every API resource's writes share (services.py, policies.py): the
outcomes the API maps to status codes, the expected_version check, and the
conditional delete.

Synchronous (store calls block); the gRPC layer runs these in threads.
"""
from __future__ import annotations

from collections.abc import Callable

from .store import Compare, KeyValue, Store


class NotFound(LookupError):
    pass


class Conflict(Exception):
    """expected_version did not match (ABORTED)."""


class AlreadyExists(Exception):
    pass


# Concurrent writers on other fields are retried this often before giving up.
RETRIES = 20


def check_expected(what: str, kv: KeyValue | None, expected_version: int) -> None:
    """Conflict unless expected_version is 0 or the stored version (`what`: "service 'a'")."""
    if expected_version and (kv is None or kv.mod_revision != expected_version):
        have = kv.mod_revision if kv else "absent"
        raise Conflict(f"{what} is at version {have}, not {expected_version}")


def delete(store: Store, key: str, what: str, expected_version: int = 0,
           also: Callable[[KeyValue], list[str]] = lambda kv: []) -> tuple[int, bool]:
    """Delete `key` (and the keys also(kv) names, e.g. index entries) in one
    transaction, if its version is expected_version (0: any). Idempotent:
    (revision, existed)."""
    for _ in range(RETRIES):
        kv = store.get(key)
        if kv is None:
            if expected_version:
                raise Conflict(f"{what} does not exist (expected version {expected_version})")
            return store.revision(), False
        check_expected(what, kv, expected_version)
        rev = store.txn([Compare(kv.key, kv.mod_revision)], deletes=[kv.key, *also(kv)])
        if rev is not None:
            return rev, True
    raise Conflict(f"{what} kept changing; try again")
