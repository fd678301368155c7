"""Digest of a node's desired state, independent of version and order.

A node sends the digest of what it has applied in its Hello; the control
plane compares it with the digest of what the node should have, and skips the
snapshot when they match. Both sides must compute it the same way: here.

It covers the services, then the workloads, policy sets and redirects. A
state with none of the latter three hashes exactly as a services-only state
did before they existed, so nodes that hold one resume without a snapshot
across the upgrade.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

from google.protobuf.message import Message

from socklb.v1 import node_pb2

# Starts each section after the services: an entry's length prefix can never
# be 2**64 - 1, so the sections cannot be confused with entries.
_SECTION = b"\xff" * 8
_EMPTY: Mapping[str, Message] = {}


def entries_digest(services: Mapping[str, node_pb2.ServiceState],
                   workloads: Mapping[str, node_pb2.WorkloadState] = _EMPTY,
                   policy_sets: Mapping[str, node_pb2.PolicySetState] = _EMPTY,
                   redirects: Mapping[str, node_pb2.RedirectState] = _EMPTY) -> bytes:
    """The digest of a state given by name -> entry, per kind."""
    h = hashlib.sha256()
    _add(h, services)
    if workloads or policy_sets or redirects:
        for tag, entries in ((b"workloads", workloads), (b"policy_sets", policy_sets),
                             (b"redirects", redirects)):
            h.update(_SECTION + tag)
            _add(h, entries)
    return h.digest()


def state_digest(state: node_pb2.NodeState) -> bytes:
    return entries_digest({s.name: s for s in state.services}, {w.name: w for w in state.workloads},
                          {p.name: p for p in state.policy_sets}, {r.name: r for r in state.redirects})


def _add(h, entries: Mapping[str, Message]) -> None:
    for name in sorted(entries):
        data = entries[name].SerializeToString(deterministic=True)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
