"""The policy part of the snapshot cache: every node's workloads, the policy
sets they use and the local redirects it serves, kept current from the
store's changes. No I/O; the snapshot cache (cache.py) composes it and owns
the services it reads.

A change recomputes only what it affects:

| change | recomputed |
|---|---|
| a workload | its selection (so its set), its entry on its node(s), the redirects matching it there |
| a policy's rules | the sets containing the policy |
| a policy's selector (or the policy) | the selection of the workloads it selected or selects now |
| a local redirect | that redirect on the nodes it was on or now matches |
| a service's frontends (or the service) | the sets whose rules name it, the redirects of it |

A set is computed once and shared by every workload and node using it (one
object per name), is sent to a node while a workload there uses it, and is
forgotten when no workload uses it any more.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from google.protobuf.message import Message

from socklb.v1 import api_pb2, node_pb2, policy_pb2

from . import policy_compute
from .labelindex import LabelIndex, SelectorIndex, selects
from .redirect_compute import redirect_state, services_named


@dataclass
class PolicyChanges:
    """What one batch of changes means for one node: entries replaced whole
    by name, and names removed."""

    workload_upserts: list[node_pb2.WorkloadState] = field(default_factory=list)
    workload_removals: list[str] = field(default_factory=list)
    policy_set_upserts: list[node_pb2.PolicySetState] = field(default_factory=list)
    policy_set_removals: list[str] = field(default_factory=list)
    redirect_upserts: list[node_pb2.RedirectState] = field(default_factory=list)
    redirect_removals: list[str] = field(default_factory=list)


@dataclass
class NodePolicy:
    """A node's workloads, policy sets and redirects, by name."""

    workloads: dict[str, node_pb2.WorkloadState] = field(default_factory=dict)
    policy_sets: dict[str, node_pb2.PolicySetState] = field(default_factory=dict)
    redirects: dict[str, node_pb2.RedirectState] = field(default_factory=dict)


class _Journal:
    """What each touched (node, name) held before a batch, recorded on first
    touch, so that the batch's changes are what differs at its end: an entry
    changed twice, or changed and changed back, is sent once or not at all."""

    def __init__(self) -> None:
        self.workloads: dict[tuple[str, str], Message | None] = {}
        self.policy_sets: dict[tuple[str, str], Message | None] = {}
        self.redirects: dict[tuple[str, str], Message | None] = {}

    def changes(self, now: Mapping[str, NodePolicy]) -> dict[str, PolicyChanges]:
        out: dict[str, PolicyChanges] = {}
        # A set is one object on all its nodes: compare its contents once, not once per node.
        same: dict[tuple[int, int], bool] = {}
        for kind in ("workloads", "policy_sets", "redirects"):
            singular = kind[:-1]
            for (node, name), before in sorted(getattr(self, kind).items()):
                after = getattr(now[node], kind).get(name) if node in now else None
                pair = (id(before), id(after))
                if pair not in same:
                    same[pair] = after is before or after == before
                if same[pair]:
                    continue
                changes = out.setdefault(node, PolicyChanges())
                if after is None:
                    getattr(changes, f"{singular}_removals").append(name)
                else:
                    getattr(changes, f"{singular}_upserts").append(after)
        return out


class PolicyCache:
    """Workloads, policies and local redirects, and what each node programs
    for them; `apply` returns what a batch of changes means per node."""

    def __init__(self, services: Mapping[str, api_pb2.Service]):
        self.services = services  # the snapshot cache's, read only
        self._clear()

    def _clear(self) -> None:
        self.workloads: dict[str, policy_pb2.Workload] = {}
        self.policies: dict[str, policy_pb2.Policy] = {}
        self.redirects: dict[str, policy_pb2.LocalRedirect] = {}
        self._labels = LabelIndex()  # workloads
        self._policy_selectors = SelectorIndex()
        self._redirect_selectors = SelectorIndex()
        # Service name -> the policies whose rules name it / the redirects of it.
        self._policies_of_service: dict[str, set[str]] = {}
        self._redirects_of_service: dict[str, set[str]] = {}
        # The sets in use: content, policies, users (workloads), and per node
        # how many of its workloads use it.
        self._sets: dict[str, node_pb2.PolicySetState] = {}
        self._set_policies: dict[str, tuple[str, ...]] = {}
        self._set_users: dict[str, set[str]] = {}
        self._set_nodes: dict[str, Counter[str]] = {}
        self._sets_of_policy: dict[str, set[str]] = {}
        # Workload -> (node, set) it is placed on; each node's entries.
        self._placed: dict[str, tuple[str, str]] = {}
        self._nodes: dict[str, NodePolicy] = {}
        self._redirect_nodes: dict[str, set[str]] = {}

    # --- reading --------------------------------------------------------------------
    def node(self, node: str) -> NodePolicy:
        """`node`'s entries (shared objects: do not modify)."""
        entries = self._nodes.get(node)
        return NodePolicy(dict(entries.workloads), dict(entries.policy_sets), dict(entries.redirects)) \
            if entries is not None else NodePolicy()

    def has_entries(self, node: str) -> bool:
        return node in self._nodes

    def sets(self) -> dict[str, node_pb2.PolicySetState]:
        """Every set in use, by name."""
        return dict(self._sets)

    # --- previews (PreviewPolicy, PreviewLocalRedirect) -------------------------------
    def preview(self, resource: policy_pb2.Policy | policy_pb2.LocalRedirect) -> dict[str, NodePolicy]:
        """preview_policy or preview_redirect, by what `resource` is."""
        if isinstance(resource, policy_pb2.Policy):
            return self.preview_policy(resource)
        return self.preview_redirect(resource)

    def preview_policy(self, p: policy_pb2.Policy) -> dict[str, NodePolicy]:
        """What writing `p` would make of the nodes it changes, without
        writing it: for each node whose workloads or policy sets would
        differ, its whole policy part as `apply` would leave it (new
        objects; nothing held here is touched). Only the workloads the
        policy selects, before or after, are selected again."""
        old = self.policies.get(p.name)
        if old is not None and _same(old, p):
            return {}
        candidates = set(self._labels.having(p.selector))
        if old is not None:
            candidates |= self._labels.having(old.selector)
        policies = {**self.policies, p.name: p}
        made: dict[tuple[str, ...], node_pb2.PolicySetState] = {}  # each new set computed once
        out: dict[str, NodePolicy] = {}
        for name in sorted(candidates):
            w = self.workloads[name]
            chosen = set(self._policy_selectors.matching(w.labels)) - {p.name}
            if selects(p.selector, w.labels):
                chosen.add(p.name)
            key = tuple(sorted(chosen))
            part = out.get(w.node)
            if part is None:
                part = out[w.node] = self.node(w.node)
            set_name = ""
            if key:
                if key not in made:
                    made[key] = policy_compute.policy_set([policies[n] for n in key], self.services)
                set_name = made[key].name
            part.workloads[name] = policy_compute.workload_state(w, set_name)
        fresh = {entry.name: entry for entry in made.values()}
        for node, part in out.items():
            # A set no candidate uses holds no policy of theirs, so not `p`: it stays as it is.
            used = sorted({ws.policy_set for ws in part.workloads.values() if ws.policy_set})
            part.policy_sets = {s: fresh[s] if s in fresh else self._sets[s] for s in used}
        return {node: part for node, part in out.items() if _differs(self.node(node), part)}

    def preview_redirect(self, r: policy_pb2.LocalRedirect) -> dict[str, NodePolicy]:
        """What writing the local redirect `r` would make of the nodes it
        changes, without writing it: for each node whose redirects would
        differ, its whole policy part as `apply` would leave it."""
        old = self.redirects.get(r.name)
        if old is not None and _same(old, r):
            return {}
        nodes = set(self._redirect_nodes.get(r.name, ()))
        nodes |= {self.workloads[w].node for w in self._labels.having(r.selector)}
        out: dict[str, NodePolicy] = {}
        for node in sorted(nodes):
            entries = self._nodes.get(node)
            if entries is None:  # no workload there: it serves no redirect
                continue
            local = [self.workloads[w] for w in entries.workloads]
            state = redirect_state(r, [w for w in local if selects(r.selector, w.labels)], self.services)
            if state == entries.redirects.get(r.name):
                continue
            part = self.node(node)
            if state is None:
                part.redirects.pop(r.name, None)
            else:
                part.redirects[r.name] = state
            out[node] = part
        return out

    # --- writing --------------------------------------------------------------------
    def load(self, workloads: Iterable[policy_pb2.Workload], policies: Iterable[policy_pb2.Policy],
             redirects: Iterable[policy_pb2.LocalRedirect]) -> None:
        self._clear()
        self.apply([(w.name, w) for w in workloads], [(p.name, p) for p in policies],
                   [(r.name, r) for r in redirects], ())

    def apply(self, workloads: Iterable[tuple[str, policy_pb2.Workload | None]],
              policies: Iterable[tuple[str, policy_pb2.Policy | None]],
              redirects: Iterable[tuple[str, policy_pb2.LocalRedirect | None]],
              services: Iterable[str]) -> dict[str, PolicyChanges]:
        """Apply changes (None = deleted; within a batch the last write of a
        name wins) and `services`, the names of services whose frontends
        changed (or that appeared or went), already in `self.services`.
        Returns each affected node's changes."""
        journal = _Journal()
        reselect: set[str] = set()  # workloads whose selection may have changed
        dirty_sets: set[str] = set()  # sets whose content may have changed
        dirty_redirects: set[str] = set()  # redirects to recompute wherever they are or may be
        pairs: set[tuple[str, str]] = set()  # (redirect, node) to recompute
        for name, p in dict(policies).items():
            reselect |= self._policy(name, p, dirty_sets)
        for name, r in dict(redirects).items():
            if self._redirect(name, r):
                dirty_redirects.add(name)
        for name, w in dict(workloads).items():
            touched = self._workload(name, w)
            if touched is not None:
                reselect.add(name)
                pairs |= touched
        for name in services:
            for p in self._policies_of_service.get(name, ()):
                dirty_sets |= self._sets_of_policy.get(p, set())
            dirty_redirects |= self._redirects_of_service.get(name, set())

        fresh: set[str] = set()  # sets created in this batch, with what is current
        for name in sorted(reselect):
            self._place(name, journal, fresh)
        for name in sorted(dirty_sets - fresh):
            if name in self._sets:
                self._recompute_set(name, journal)
        for name in dirty_redirects:
            nodes = set(self._redirect_nodes.get(name, ()))
            r = self.redirects.get(name)
            if r is not None:
                nodes |= {self.workloads[w].node for w in self._labels.having(r.selector)}
            pairs |= {(name, node) for node in nodes}
        for name, node in sorted(pairs):
            self._redirect_on(name, node, journal)
        # A node's entries go with its last workload (its sets and redirects went with them).
        for node in {node for node, _ in journal.workloads}:
            if node in self._nodes and not self._nodes[node].workloads:
                del self._nodes[node]
        return journal.changes(self._nodes)

    # --- the resources ----------------------------------------------------------------
    def _policy(self, name: str, p: policy_pb2.Policy | None, dirty_sets: set[str]) -> set[str]:
        """Store a policy change; returns the workloads to select again."""
        old = self.policies.get(name)
        if _unchanged(self.policies, name, p):
            return set()
        reselect: set[str] = set()
        selector_changed = old is None or p is None or dict(old.selector) != dict(p.selector)
        if selector_changed:
            # Those it selected: the users of the sets it is in.
            for s in self._sets_of_policy.get(name, ()):
                reselect |= self._set_users[s]
        _replace(name, old, p, self.policies, self._policy_selectors, self._policies_of_service,
                 policy_compute.services_named)
        if p is None:
            return reselect
        if selector_changed:
            reselect |= self._labels.having(p.selector)
        if old is not None and list(old.egress) != list(p.egress):
            dirty_sets |= self._sets_of_policy.get(name, set())
        return reselect

    def _redirect(self, name: str, r: policy_pb2.LocalRedirect | None) -> bool:
        """Store a redirect change; whether it changed."""
        old = self.redirects.get(name)
        if _unchanged(self.redirects, name, r):
            return False
        _replace(name, old, r, self.redirects, self._redirect_selectors, self._redirects_of_service,
                 services_named)
        return True

    def _workload(self, name: str, w: policy_pb2.Workload | None) -> set[tuple[str, str]] | None:
        """Store a workload change; returns the (redirect, node) pairs it
        touches, or None when nothing changed."""
        old = self.workloads.get(name)
        if _unchanged(self.workloads, name, w):
            return None
        pairs: set[tuple[str, str]] = set()
        if old is not None:
            pairs |= {(r, old.node) for r in self._redirect_selectors.matching(old.labels)}
            self._labels.remove(name)
            del self.workloads[name]
        if w is not None:
            self.workloads[name] = w
            self._labels.put(name, w.labels)
            pairs |= {(r, w.node) for r in self._redirect_selectors.matching(w.labels)}
        return pairs

    # --- selection and sets -------------------------------------------------------------
    def _place(self, name: str, journal: _Journal, fresh: set[str]) -> None:
        """(Re)select a workload: its entry on its node and the set it uses."""
        old = self._placed.pop(name, None)
        if old is not None:
            node, set_name = old
            journal.workloads.setdefault((node, name), self._nodes[node].workloads[name])
            del self._nodes[node].workloads[name]
            if set_name:
                self._release(set_name, node, name, journal)
        w = self.workloads.get(name)
        if w is None:
            return
        chosen = tuple(sorted(self._policy_selectors.matching(w.labels)))
        set_name = policy_compute.set_name(chosen) if chosen else ""
        entries = self._nodes.setdefault(w.node, NodePolicy())
        journal.workloads.setdefault((w.node, name), entries.workloads.get(name))
        if set_name:
            if set_name not in self._sets:
                self._sets[set_name] = self._compute_set(chosen)
                self._set_policies[set_name] = chosen
                self._set_users[set_name] = set()
                self._set_nodes[set_name] = Counter()
                for p in chosen:
                    self._sets_of_policy.setdefault(p, set()).add(set_name)
                fresh.add(set_name)
            if not self._set_nodes[set_name][w.node]:
                self._note_set(journal, w.node, set_name)
                entries.policy_sets[set_name] = self._sets[set_name]
            self._set_nodes[set_name][w.node] += 1
            self._set_users[set_name].add(name)
        entries.workloads[name] = policy_compute.workload_state(w, set_name)
        self._placed[name] = (w.node, set_name)

    def _release(self, set_name: str, node: str, workload: str, journal: _Journal) -> None:
        """A workload on `node` no longer uses the set: the node drops it with
        its last user there, the cache with its last user anywhere."""
        counts = self._set_nodes[set_name]
        counts[node] -= 1
        if not counts[node]:
            self._note_set(journal, node, set_name)
            del counts[node]
            del self._nodes[node].policy_sets[set_name]
        users = self._set_users[set_name]
        users.discard(workload)
        if users:
            return
        for p in self._set_policies.pop(set_name):
            _unlink(self._sets_of_policy, p, set_name)
        del self._sets[set_name], self._set_users[set_name], self._set_nodes[set_name]

    def _recompute_set(self, set_name: str, journal: _Journal) -> None:
        """New content for a set in use, the same object on every node using it."""
        entry = self._compute_set(self._set_policies[set_name])
        self._sets[set_name] = entry
        for node in self._set_nodes[set_name]:
            self._note_set(journal, node, set_name)
            self._nodes[node].policy_sets[set_name] = entry

    def _note_set(self, journal: _Journal, node: str, set_name: str) -> None:
        entries = self._nodes.get(node)
        journal.policy_sets.setdefault((node, set_name),
                                       entries.policy_sets.get(set_name) if entries is not None else None)

    def _compute_set(self, policies: tuple[str, ...]) -> node_pb2.PolicySetState:
        return policy_compute.policy_set([self.policies[p] for p in policies], self.services)

    def _redirect_on(self, name: str, node: str, journal: _Journal) -> None:
        """(Re)compute a redirect on one node, from the workloads placed there."""
        entries = self._nodes.get(node)
        journal.redirects.setdefault((node, name), entries.redirects.get(name) if entries is not None else None)
        r = self.redirects.get(name)
        state = None
        if r is not None and entries is not None:
            local = [self.workloads[w] for w in entries.workloads]
            state = redirect_state(r, [w for w in local if selects(r.selector, w.labels)], self.services)
        if state is None:
            if entries is not None:
                entries.redirects.pop(name, None)
            _unlink(self._redirect_nodes, name, node)
        else:
            entries.redirects[name] = state
            self._redirect_nodes.setdefault(name, set()).add(node)


def _replace(name: str, old: Message | None, new: Message | None, table: dict[str, Message],
             selectors: SelectorIndex, by_service: dict[str, set[str]],
             services_named: Callable[[Message], set[str]]) -> None:
    """Put `new` (None: delete) in place of `old` in a table of policies or
    redirects, and in its indexes: by selector, and by the services it names."""
    if old is not None:
        for svc in services_named(old):
            _unlink(by_service, svc, name)
    if new is None:
        del table[name]
        selectors.remove(name)
        return
    table[name] = new
    selectors.put(name, new.selector)
    for svc in services_named(new):
        by_service.setdefault(svc, set()).add(name)


def _differs(a: NodePolicy, b: NodePolicy) -> bool:
    return a.workloads != b.workloads or a.policy_sets != b.policy_sets or a.redirects != b.redirects


def _unchanged(table: dict[str, Message], name: str, new: Message | None) -> bool:
    """Whether writing `new` (None: deleting) changes nothing: absent before
    and after, or a rewrite of the same content, kept for its resource_version."""
    old = table.get(name)
    if old is None or new is None:
        return old is None and new is None
    if not _same(old, new):
        return False
    table[name] = new
    return True


def _same(old: Message, new: Message) -> bool:
    """The same content but for resource_version (a rewrite of what is stored)."""
    if old.resource_version == new.resource_version:
        return old == new
    a, b = type(old)(), type(new)()
    a.CopyFrom(old)
    b.CopyFrom(new)
    a.ClearField("resource_version")
    b.ClearField("resource_version")
    return a == b


def _unlink(index: dict[str, set[str]], key: str, value: str) -> None:
    values = index.get(key)
    if values is not None:
        values.discard(value)
        if not values:
            del index[key]
