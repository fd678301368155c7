"""Digest of a node's desired services, independent of version and order.

A node sends the digest of what it has applied in its Hello; the control
plane compares it with the digest of what the node should have, and skips the
snapshot when they match. Both sides must compute it the same way: here.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping

from socklb.v1 import node_pb2


def entries_digest(entries: Mapping[str, node_pb2.ServiceState]) -> bytes:
    h = hashlib.sha256()
    for name in sorted(entries):
        data = entries[name].SerializeToString(deterministic=True)
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.digest()


def state_digest(state: node_pb2.NodeState) -> bytes:
    return entries_digest({s.name: s for s in state.services})
