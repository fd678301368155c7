"""Terminations as the API shows them: explicit requests and previews of
policy and redirect writes (written to the store, fanned out by every
replica to its nodes) and the reports nodes send,
for requests, for flows of backends removed by a change, and for the open
sockets a policy change denies (id "v<revision>-policy", no service: each
node reports the destinations it judged)."""
from __future__ import annotations

import uuid

from google.protobuf import timestamp_pb2

from socklb.v1 import api_pb2, node_pb2, policy_pb2, sync_pb2, types_pb2

from . import keys
from .policy_cache import NodePolicy
from .store import Store


# The store keeps the newest MAX_KEPT terminations, none older than
# RETENTION seconds (the leader prunes the rest).
MAX_KEPT = 1000
RETENTION = 24 * 3600.0
PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000


def new_request(req: api_pb2.TerminateFlowsRequest, nodes: list[str]) -> api_pb2.Termination:
    created = timestamp_pb2.Timestamp()
    created.GetCurrentTime()
    return api_pb2.Termination(id=f"t-{uuid.uuid4().hex[:12]}", service=req.service, backends=req.backends,
                               dry_run=req.dry_run, trigger="request", created=created,
                               pending_nodes=sorted(nodes))


# The trigger of a preview's termination, by what it previews (Termination.previewed).
PREVIEW_TRIGGERS = {"policy": "policy", "local_redirect": "local-redirect"}


def new_preview(resource: policy_pb2.Policy | policy_pb2.LocalRedirect, nodes: list[str]) -> api_pb2.Termination:
    """The request record of a preview (PreviewPolicy, PreviewLocalRedirect)
    of `resource` in its stored form, asking `nodes`: a dry run, no service."""
    field = "policy" if isinstance(resource, policy_pb2.Policy) else "local_redirect"
    created = timestamp_pb2.Timestamp()
    created.GetCurrentTime()
    return api_pb2.Termination(id=f"t-{uuid.uuid4().hex[:12]}", dry_run=True, trigger=PREVIEW_TRIGGERS[field],
                               created=created, pending_nodes=sorted(nodes), **{field: resource})


def previewed(term: api_pb2.Termination) -> policy_pb2.Policy | policy_pb2.LocalRedirect | None:
    """The resource a preview's request previews; None for any other request."""
    field = term.WhichOneof("previewed")
    return getattr(term, field) if field else None


# What a node's Hello carries when it answers previews (dataplane/sync_client.py).
PREVIEW_CAPABILITY = "policy_preview"


def unanswerable(term: api_pb2.Termination, node: str, why: str) -> node_pb2.TerminationReport:
    """The report the control plane gives for a node that cannot answer a preview."""
    at = timestamp_pb2.Timestamp()
    at.GetCurrentTime()
    return node_pb2.TerminationReport(id=term.id, node=node, trigger=term.trigger, dry_run=True, error=why, at=at)


def preview_command(term: api_pb2.Termination, part: NodePolicy) -> sync_pb2.TerminateCommand:
    """A preview's command to one node: its policy part as the write would make it."""
    return sync_pb2.TerminateCommand(id=term.id, dry_run=True, preview=sync_pb2.NodePolicyPreview(
        trigger=term.trigger, workloads=[part.workloads[n] for n in sorted(part.workloads)],
        policy_sets=[part.policy_sets[n] for n in sorted(part.policy_sets)],
        redirects=[part.redirects[n] for n in sorted(part.redirects)]))


def command(term: api_pb2.Termination) -> sync_pb2.TerminateCommand:
    return sync_pb2.TerminateCommand(
        id=term.id, service=term.service, dry_run=term.dry_run,
        backends=[types_pb2.Backend(address=b.address, port=b.port) for b in term.backends])


def assemble(store: Store, service: str = "", term_id: str = "") -> list[api_pb2.Termination]:
    """Requests and reports, joined by id, newest first."""
    kvs, _ = store.range(keys.TERMINATIONS)
    out: dict[str, api_pb2.Termination] = {}
    requested: set[str] = set()
    for kv in kvs:
        tid, kind, node = keys.parse_termination_key(kv.key)
        if term_id and tid != term_id:
            continue
        t = out.setdefault(tid, api_pb2.Termination(id=tid))
        if kind == "request":
            req = api_pb2.Termination.FromString(kv.value)
            reports = list(t.reports)
            t.CopyFrom(req)
            t.reports.extend(reports)
            requested.add(tid)
        elif kind == "reports":
            r = node_pb2.TerminationReport.FromString(kv.value)
            t.reports.append(r)
            if tid not in requested:  # a termination a change caused
                _caused(t, r)
    result = []
    for t in out.values():
        if service and t.service != service:
            continue
        reported = {r.node for r in t.reports}
        pending = [n for n in t.pending_nodes if n not in reported]
        del t.pending_nodes[:]
        t.pending_nodes.extend(pending)
        t.found = sum(r.found for r in t.reports)
        t.destroyed = sum(r.destroyed for r in t.reports)
        t.failed = sum(r.failed for r in t.reports)
        reports = sorted(t.reports, key=lambda r: r.node)
        del t.reports[:]
        t.reports.extend(reports)
        if previewed(t) is not None:  # as a policy termination: the destinations judged, of every node
            seen: set[tuple[str, int]] = set()
            for b in (b for r in reports for b in r.backends):
                if (b.address, b.port) not in seen:
                    seen.add((b.address, b.port))
                    t.backends.append(api_pb2.BackendRef(address=b.address, port=b.port))
        result.append(t)
    return sorted(result, key=lambda t: (t.created.ToNanoseconds(), t.id), reverse=True)


def _caused(t: api_pb2.Termination, r: node_pb2.TerminationReport) -> None:
    """A node's report of a termination a change caused, into the whole: it
    was created when the first node reported, and its backends are those of
    every node (a policy job's destinations differ from node to node)."""
    if not t.trigger or r.at.ToNanoseconds() < t.created.ToNanoseconds():
        t.created.CopyFrom(r.at)
    if not t.trigger:
        t.service, t.trigger, t.dry_run = r.service, r.trigger, r.dry_run
    seen = {(b.address, b.port) for b in t.backends}
    t.backends.extend(api_pb2.BackendRef(address=b.address, port=b.port) for b in r.backends
                      if (b.address, b.port) not in seen)


def page(items: list[api_pb2.Termination], size: int, token: str) -> tuple[list[api_pb2.Termination], str]:
    """One page of `items` (newest first, as assemble() returns them) after
    `token`, and the token of the next page ("" on the last one). A token is
    the position of the last item shown, so a page stays right while newer
    terminations arrive. ValueError for a token that is not one of ours."""
    size = size or PAGE_SIZE
    start = 0
    if token:
        try:
            created, _, tid = token.partition(":")
            after = (int(created), tid)
        except ValueError:
            raise ValueError(f"page_token {token!r} is not a token this API gave") from None
        start = next((i for i, t in enumerate(items) if _order(t) < after), len(items))
    chunk = items[start:start + size]
    more = start + size < len(items)
    return chunk, (f"{_order(chunk[-1])[0]}:{chunk[-1].id}" if more and chunk else "")


def _order(t: api_pb2.Termination) -> tuple[int, str]:
    return t.created.ToNanoseconds(), t.id


def expired(items: list[api_pb2.Termination], now_ns: int, keep: int = MAX_KEPT,
            retention: float = RETENTION) -> list[str]:
    """Ids to prune: beyond the newest `keep`, or created before now - retention."""
    oldest = now_ns - int(retention * 1e9)
    return [t.id for i, t in enumerate(items) if i >= keep or t.created.ToNanoseconds() < oldest]


def prune(store: Store, now_ns: int, keep: int = MAX_KEPT, retention: float = RETENTION) -> int:
    """Delete the records (request and reports) of expired terminations;
    how many terminations went."""
    gone = set(expired(assemble(store), now_ns, keep, retention))
    if not gone:
        return 0
    kvs, _ = store.range(keys.TERMINATIONS)
    doomed = [kv.key for kv in kvs if keys.parse_termination_key(kv.key)[0] in gone]
    for i in range(0, len(doomed), 100):  # etcd takes at most 128 operations in a txn
        store.txn([], deletes=doomed[i:i + 100])
    return len(gone)
