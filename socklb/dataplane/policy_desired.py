"""The workloads, policy sets and redirects of a node state: validated (all
or nothing, InvalidState naming the field, as desired.py does for services),
compiled for the kernel maps, and turned into the policy entries the maps
should hold. Pure: no I/O; cgroups come resolved (workloads.py).

    policy = node_policy(state)                          # or apply_policy_delta(policy, delta)
    ids, desired, fresh = desired_entries(policy, cgroups, frontend_id, ids, programmed)
    plan = policy_plan.make_policy_plan(programmed, desired, fresh)

Redirects are checked here and programmed in two parts: their frontends as
targets of the services map's redirect table (redirect_desired.py), their
exempt workloads as redirect_exempt entries (desired_entries).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from socklb.lb import limits
from socklb.lb.addresses import MAX_PORT, V4MAPPED, parse_prefix, prefix_text
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import FrontendKey, frontend_key
from socklb.lb.names import check_name
from socklb.lb.protocols import TCP, UDP
from socklb.v1 import node_pb2, policy_pb2, types_pb2

from .layout import POL_SET_V4, WORKLOAD_CGROUPS_MAX, WORKLOAD_IDS_MAX, PolicyAction, Table, WorkloadFlag
from .policy_plan import PolicyCfg, PolicyEntries, PortRule, Prefix, Rules, WorkloadEntry
from .redirect_desired import check_redirect_targets
from .workloads import Cgroup

ACTIONS = {policy_pb2.ACTION_ALLOW: PolicyAction.ALLOW, policy_pb2.ACTION_DENY: PolicyAction.DENY}
RULE_PROTOCOLS = {types_pb2.PROTOCOL_UNSPECIFIED: 0, types_pb2.PROTOCOL_TCP: TCP, types_pb2.PROTOCOL_UDP: UDP}


@dataclass(frozen=True, eq=False)
class CompiledSet:
    """A policy set as the kernel holds it: a verdict per frontend, the port
    rules per prefix (in the datapath's 128-bit space, IPv4 v4-mapped;
    prefix_key keys each family apart)."""

    name: str
    frontends: Mapping[FrontendKey, PolicyAction]
    prefixes: Mapping[Prefix, Rules]


@dataclass(frozen=True)
class Workload:
    name: str
    cgroup: str  # normalised: relative to the cgroup2 mount, no leading or trailing '/'
    bypass: bool
    policy_set: str  # "": unrestricted

    @property
    def level(self) -> int:
        """The cgroup's depth below the cgroup2 mount (the root is level 0)."""
        return self.cgroup.count("/") + 1

    @property
    def flags(self) -> int:
        return int(WorkloadFlag.BYPASS) if self.bypass else 0


_EMPTY: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class NodePolicy:
    """The validated policy half of a node state: the messages as given (for
    GetState) and what they compile to, by name."""

    workloads: Mapping[str, node_pb2.WorkloadState] = field(default_factory=dict)
    policy_sets: Mapping[str, node_pb2.PolicySetState] = field(default_factory=dict)
    redirects: Mapping[str, node_pb2.RedirectState] = field(default_factory=dict)
    specs: Mapping[str, Workload] = field(default_factory=dict)
    sets: Mapping[str, CompiledSet] = field(default_factory=dict)

    def sizes(self) -> tuple[int, int]:
        """(frontend verdicts, prefixes) over every set."""
        return (sum(len(s.frontends) for s in self.sets.values()), sum(len(s.prefixes) for s in self.sets.values()))


# --- one item -----------------------------------------------------------------

def cgroup_path(text: str, field: str) -> str:
    """A workload's cgroup, relative to the cgroup2 mount (one leading '/'
    is taken as the mount, as /proc/<pid>/cgroup writes it)."""
    path = text[1:] if text.startswith("/") else text
    path = path.rstrip("/")
    if not path:
        raise InvalidState(field, "must name a cgroup below the cgroup2 mount, not the mount itself")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidState(field, f"{text!r}: empty, '.' and '..' components are not allowed")
    if "\0" in path or "\n" in path:
        raise InvalidState(field, f"{text!r}: not a cgroup path")
    if len(parts) > limits.MAX_CGROUP_DEPTH:
        raise InvalidState(field, f"{text!r} is {len(parts)} levels deep; the hooks look "
                                  f"{limits.MAX_CGROUP_DEPTH} levels down")
    return path


def workload_spec(w: node_pb2.WorkloadState, field: str) -> Workload:
    check_name(w.name, f"{field}.name")
    return Workload(w.name, cgroup_path(w.cgroup, f"{field}.cgroup"), w.bypass_socket_lb, w.policy_set)


def _action(value: int, field: str) -> PolicyAction:
    if value not in ACTIONS:
        raise InvalidState(field, f"must be ACTION_ALLOW or ACTION_DENY, not {policy_pb2.Action.Name(value)}"
                           if value in policy_pb2.Action.values() else f"unknown action {value}")
    return ACTIONS[value]


def _rule(r: node_pb2.PortRule, field: str) -> PortRule:
    for name, value in (("port", r.port), ("end_port", r.end_port)):
        if value > MAX_PORT:
            raise InvalidState(f"{field}.{name}", f"{value} is out of range 0..{MAX_PORT}")
    if r.end_port < r.port:
        raise InvalidState(f"{field}.end_port", f"{r.end_port} is below port {r.port} (a single port "
                                                "is port..port)")
    if r.protocol not in RULE_PROTOCOLS:
        raise InvalidState(f"{field}.protocol", f"unknown protocol {r.protocol}")
    return PortRule(r.port, r.end_port, RULE_PROTOCOLS[r.protocol], _action(r.action, f"{field}.action"))


def _once(seen: dict, key, i: int, field: str, list_field: str, shown: str) -> None:
    """Refuse the second item of a list with the same key."""
    if key in seen:
        raise InvalidState(field, f"{shown} is already {list_field}[{seen[key]}]")
    seen[key] = i


def compile_set(ps: node_pb2.PolicySetState, field: str) -> CompiledSet:
    check_name(ps.name, f"{field}.name")
    frontends: dict[FrontendKey, PolicyAction] = {}
    seen: dict = {}
    for i, v in enumerate(ps.frontends):
        vf = f"{field}.frontends[{i}]"
        key = frontend_key(v.frontend, f"{vf}.frontend")
        _once(seen, key, i, f"{vf}.frontend", f"{field}.frontends", f"frontend {key}")
        frontends[key] = _action(v.action, f"{vf}.action")
    prefixes: dict[Prefix, Rules] = {}
    seen = {}
    for i, p in enumerate(ps.prefixes):
        pf = f"{field}.prefixes[{i}]"
        prefix = parse_prefix(p.prefix, f"{pf}.prefix")
        _once(seen, prefix, i, f"{pf}.prefix", f"{field}.prefixes", prefix_text(*prefix))
        if len(p.rules) > limits.MAX_PORT_RULES:
            raise InvalidState(f"{pf}.rules", f"{len(p.rules)} rules; a prefix holds at most {limits.MAX_PORT_RULES}")
        prefixes[prefix] = tuple(_rule(r, f"{pf}.rules[{j}]") for j, r in enumerate(p.rules))
    return CompiledSet(ps.name, MappingProxyType(frontends), MappingProxyType(prefixes))


def check_redirect(r: node_pb2.RedirectState, field: str) -> None:
    check_name(r.name, f"{field}.name")
    check_redirect_targets(r, field)
    for i, name in enumerate(r.exempt):
        check_name(name, f"{field}.exempt[{i}]")


# --- the whole policy -------------------------------------------------------------

@dataclass
class _Draft:
    """A policy being checked; `where` names each item's field for errors."""

    workloads: dict[str, node_pb2.WorkloadState]
    policy_sets: dict[str, node_pb2.PolicySetState]
    redirects: dict[str, node_pb2.RedirectState]
    specs: dict[str, Workload]
    sets: dict[str, CompiledSet]
    where: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> field

    def field_of(self, kind: str, name: str) -> str:
        return self.where.get((kind, name), f"{kind} ({name!r})")

    def freeze(self) -> NodePolicy:
        return NodePolicy(MappingProxyType(self.workloads), MappingProxyType(self.policy_sets),
                          MappingProxyType(self.redirects), MappingProxyType(self.specs),
                          MappingProxyType(self.sets))


def _add(d: _Draft, kind: str, name: str, message, compiled: dict | None, value, f: str) -> None:
    if name in getattr(d, kind):
        raise InvalidState(f"{f}.name", f"{name!r} is already {d.field_of(kind, name)}")
    getattr(d, kind)[name] = message
    if compiled is not None:
        compiled[name] = value
    d.where[(kind, name)] = f


def _check_whole(d: _Draft, removed_sets: Mapping[str, str] = _EMPTY) -> None:
    """What no single item shows: the node's limits, set references, one
    workload per cgroup. removed_sets: set name -> field of its removal."""
    for kind, n, most in (("workloads", len(d.workloads), limits.MAX_WORKLOADS_PER_NODE),
                          ("policy_sets", len(d.policy_sets), limits.MAX_POLICY_SETS_PER_NODE),
                          ("redirects", len(d.redirects), limits.MAX_REDIRECTS_PER_NODE)):
        if n > most:
            raise InvalidState(kind, f"{n} {kind.replace('_', ' ')}; a node takes at most {most}")
    verdicts = sum(len(s.frontends) for s in d.sets.values())
    if verdicts > limits.MAX_FRONTEND_VERDICTS_PER_NODE:
        raise InvalidState("policy_sets", f"{verdicts} frontend verdicts over all sets; a node takes at most "
                                          f"{limits.MAX_FRONTEND_VERDICTS_PER_NODE}")
    prefixes = sum(len(s.prefixes) for s in d.sets.values())
    if prefixes > limits.MAX_PREFIXES_PER_NODE:
        raise InvalidState("policy_sets", f"{prefixes} prefixes over all sets; a node takes at most "
                                          f"{limits.MAX_PREFIXES_PER_NODE}")
    redirected: dict = {}
    for name in sorted(d.redirects, key=lambda n: ("redirects", n) in d.where):
        f = d.field_of("redirects", name)
        for key, _ in check_redirect_targets(d.redirects[name], f):
            if key in redirected:
                raise InvalidState(f"{f}.frontends", f"frontend {key} is already redirected by {redirected[key]!r}")
            redirected[key] = name
    cgroups: dict[str, str] = {}
    # Untouched workloads first, so that a clash is blamed on what the update brings.
    for name in sorted(d.specs, key=lambda n: ("workloads", n) in d.where):
        w = d.specs[name]
        f = d.field_of("workloads", name)
        if w.cgroup in cgroups:
            raise InvalidState(f"{f}.cgroup", f"{w.cgroup!r} is already the cgroup of workload {cgroups[w.cgroup]!r}")
        cgroups[w.cgroup] = name
        if w.policy_set and w.policy_set not in d.sets:
            if w.policy_set in removed_sets:
                raise InvalidState(removed_sets[w.policy_set], f"policy set {w.policy_set!r} is still used by "
                                                               f"workload {name!r}")
            raise InvalidState(f"{f}.policy_set", f"no policy set {w.policy_set!r} in the node state")


def node_policy(state: node_pb2.NodeState, previous: NodePolicy | None = None) -> NodePolicy:
    """Validate the workloads, policy sets and redirects of a whole state. A
    set equal to one of `previous` keeps its compiled form (comparing is
    much cheaper than compiling tens of thousands of prefixes again)."""
    d = _Draft({}, {}, {}, {}, {})
    old = previous.policy_sets if previous is not None else {}
    for i, ps in enumerate(state.policy_sets):
        f = f"policy_sets[{i}]"
        same = old.get(ps.name) == ps and ps.name not in d.sets
        _add(d, "policy_sets", ps.name, ps, d.sets, previous.sets[ps.name] if same else compile_set(ps, f), f)
    for i, w in enumerate(state.workloads):
        f = f"workloads[{i}]"
        _add(d, "workloads", w.name, w, d.specs, workload_spec(w, f), f)
    for i, r in enumerate(state.redirects):
        f = f"redirects[{i}]"
        check_redirect(r, f)
        _add(d, "redirects", r.name, r, None, None, f)
    _check_whole(d)
    return d.freeze()


def apply_policy_delta(current: NodePolicy, delta: node_pb2.NodeStateDelta) -> NodePolicy:
    """The policy after `delta`, validated as a whole; `current` is not touched."""
    d = _Draft(dict(current.workloads), dict(current.policy_sets), dict(current.redirects), dict(current.specs),
               dict(current.sets))
    removed_sets: dict[str, str] = {}
    for kind, upserts, removals, check in (
            ("policy_sets", delta.policy_set_upserts, delta.policy_set_removals, compile_set),
            ("workloads", delta.workload_upserts, delta.workload_removals, workload_spec),
            ("redirects", delta.redirect_upserts, delta.redirect_removals, check_redirect)):
        singular = kind[:-1]
        messages = getattr(d, kind)
        compiled = {"policy_sets": d.sets, "workloads": d.specs}.get(kind)
        upserted: dict[str, str] = {}
        for i, item in enumerate(upserts):
            f = f"{singular}_upserts[{i}]"
            value = check(item, f)
            if item.name in upserted:
                raise InvalidState(f"{f}.name", f"{item.name!r} is already {upserted[item.name]}")
            upserted[item.name] = f
            messages[item.name] = item
            if compiled is not None:
                compiled[item.name] = value
            d.where[(kind, item.name)] = f
        for j, name in enumerate(removals):
            f = f"{singular}_removals[{j}]"
            if name in upserted:
                raise InvalidState(f, f"{name!r} is both upserted and removed")
            messages.pop(name, None)
            if compiled is not None:
                compiled.pop(name, None)
            if kind == "policy_sets":
                removed_sets[name] = f
    _check_whole(d, removed_sets)
    return d.freeze()


# --- the keys of policy_prefixes -----------------------------------------------------

# The set takes the first 32 bits of a key's prefix, matched whole.
SET_BITS = 32


def prefix_is_v4(prefix: Prefix) -> bool:
    """Whether a compiled prefix is an IPv4 one: inside ::ffff:0:0/96
    (parse_prefix writes IPv4 there; "::ffff:10.0.0.0/104" is 10.0.0.0/8).
    A shorter IPv6 prefix holding ::ffff:0:0/96 (::/0) is IPv6 only."""
    addr, length = prefix
    return length >= 96 and addr[:12] == V4MAPPED


def prefix_key(set_id: int, prefix: Prefix) -> tuple[int, int, bytes]:
    """(prefixlen, set, addr) of the policy_prefixes key of a set's prefix:
    the set id with POL_SET_V4 for an IPv4 prefix, the IPv4 space the hooks
    look IPv4 and v4-mapped destinations up in (bpf/sock_lb.c policy_allows)."""
    if not 0 < set_id < POL_SET_V4:
        raise ValueError(f"set id {set_id} is out of range 1..{POL_SET_V4 - 1}")
    addr, length = prefix
    return SET_BITS + length, set_id | (POL_SET_V4 if prefix_is_v4(prefix) else 0), addr


def key_prefix(prefixlen: int, set_word: int, addr: bytes) -> tuple[int, Prefix]:
    """(set id, prefix) of a policy_prefixes key: prefix_key's inverse."""
    return set_word & ~POL_SET_V4, (bytes(addr), prefixlen - SET_BITS)


# --- ids and the entries the maps should hold --------------------------------------

@dataclass(frozen=True)
class Ids:
    """Node-local ids: workload name -> id (its index in workload_denies;
    every workload of the state has one, found or not, so its count
    survives its cgroup going and coming back), set name -> kernel id (>= 1,
    only for sets in use)."""

    workloads: Mapping[str, int] = field(default_factory=dict)
    sets: Mapping[str, int] = field(default_factory=dict)


def _allocate(names: Iterable[str], held: Mapping[str, int], adopt: Callable[[str], int | None],
              busy: set[int], first: int, end: int) -> tuple[dict[str, int], set[int]]:
    """An id per name: the one it holds, else one it may adopt (what the maps
    hold for it: not given to another name yet), else the lowest id not
    busy (busy: ids the maps still use) nor given. Returns the ids and those
    newly given."""
    out: dict[str, int] = {}
    fresh: set[int] = set()
    pending = []
    for name in names:
        if name in held:
            out[name] = held[name]
        else:
            pending.append(name)
    given = set(out.values())
    taken = busy | given
    nxt = first
    for name in pending:
        got = adopt(name)
        if got is not None and got not in given:
            out[name] = got
            given.add(got)
            taken.add(got)
            continue
        while nxt in taken:
            nxt += 1
        if nxt >= end:
            raise InvalidState("workloads", f"no free id left below {end}")
        out[name] = nxt
        fresh.add(nxt)
        given.add(nxt)
        taken.add(nxt)
    return out, fresh


def desired_entries(policy: NodePolicy, cgroups: Mapping[str, Cgroup | None],
                    frontend_id: Callable[[FrontendKey], int | None], ids: Ids,
                    programmed: PolicyEntries) -> tuple[Ids, PolicyEntries, set[int]]:
    """The ids and entries of `policy` on this node, and the workload ids
    newly given (their counters restart).

    cgroups: workload name -> its resolved cgroup (None: not on this node);
    frontend_id: the programmed id of a frontend (None: not programmed; a
    verdict for it waits until it is); ids: the ids given so far (empty
    after a restart: then a workload adopts the id its cgroup's entry has,
    and a set the id of a programmed set with the same entries, so a restart
    rewrites nothing); programmed: what the maps hold."""
    specs = policy.specs
    found = {n: c for n, c in cgroups.items() if c is not None and n in specs}

    def adopt_workload(name: str) -> int | None:
        c = found.get(name)
        e = programmed.workloads.get(c.id) if c is not None else None
        return e.id if e is not None else None

    wids, fresh = _allocate(sorted(specs), {n: i for n, i in ids.workloads.items() if n in specs}, adopt_workload,
                            programmed.workload_ids(), 0, WORKLOAD_IDS_MAX)

    in_use = sorted({specs[n].policy_set for n in found if specs[n].policy_set})
    verdicts = {name: _verdicts(policy.sets[name], frontend_id) for name in in_use}

    programmed_set: dict[str, int] = {}  # set name -> the set id its first workload's entry has
    for n in sorted(found):
        e = programmed.workloads.get(found[n].id)
        if e is not None and e.policy_set and specs[n].policy_set:
            programmed_set.setdefault(specs[n].policy_set, e.policy_set)

    def adopt_set(name: str) -> int | None:
        sid = programmed_set.get(name)
        if sid is None:
            return None
        same = (dict(programmed.frontends.get(sid, {})) == verdicts[name]
                and dict(programmed.prefixes.get(sid, {})) == dict(policy.sets[name].prefixes))
        return sid if same else None

    # Shallow workloads first: where cgroups below two workloads meet
    # (exact matching), the deeper workload's entry is written last and wins.
    order = sorted(found, key=lambda n: (specs[n].level, n))
    owner = {cg: name for name in order for cg in (found[name].id, *found[name].below)}
    held = {n: i for n, i in ids.sets.items() if n in verdicts}
    for name in _left_while_edited(held, owner, specs, programmed, verdicts, policy.sets):
        del held[name]  # written anew: a workload leaving it must not see it half edited
    sids, _ = _allocate(in_use, held, adopt_set, programmed.set_ids(), 1, POL_SET_V4)

    out = PolicyEntries()
    for cg, name in owner.items():
        w = specs[name]
        out.workloads[cg] = WorkloadEntry(wids[name], sids.get(w.policy_set, 0), w.flags)
    if len(out.workloads) > WORKLOAD_CGROUPS_MAX // 2:  # the other half: room for an update's new entries
        raise InvalidState("workloads", f"{len(out.workloads)} cgroups to program (with exact matching every "
                                        f"cgroup below a workload counts); a node takes at most "
                                        f"{WORKLOAD_CGROUPS_MAX // 2}")
    for name, sid in sids.items():
        out.frontends[sid] = verdicts[name]
        out.prefixes[sid] = policy.sets[name].prefixes
    out.exempt = _exempt(policy, found, wids, frontend_id)
    restricts = any(e.policy_set or e.flags for e in out.workloads.values())
    if out.exempt or restricts:
        levels = [specs[n].level for n in found]
        out.cfg = PolicyCfg(len(out.workloads), min(levels), max(levels), exempt_only=not restricts)
    return Ids(MappingProxyType(wids), MappingProxyType(sids)), out, fresh


def _left_while_edited(held: Mapping[str, int], owner: Mapping[int, str], specs: Mapping[str, Workload],
                       programmed: PolicyEntries, verdicts: Mapping[str, Mapping[int, PolicyAction]],
                       sets: Mapping[str, CompiledSet]) -> set[str]:
    """Sets whose entries change while a cgroup pointing at them now points
    elsewhere (or at nothing)."""
    name_of = {sid: n for n, sid in held.items()}
    left = set()
    for cg, e in programmed.workloads.items():
        name = name_of.get(e.policy_set)
        if name is None or name in left:
            continue
        now = owner.get(cg)
        if now is None or specs[now].policy_set != name:
            left.add(name)
    return {n for n in left if programmed.frontends.get(held[n], {}) != verdicts[n]
            or programmed.prefixes.get(held[n], {}) != sets[n].prefixes}


def _exempt(policy: NodePolicy, found: Mapping[str, Cgroup], wids: Mapping[str, int],
            frontend_id: Callable[[FrontendKey], int | None]) -> frozenset[tuple[int, int]]:
    """(workload id, redirect frontend id) of each exempt workload found on
    this node and each programmed redirect-table frontend of its redirect."""
    out = set()
    for r in policy.redirects.values():
        workloads = [wids[n] for n in r.exempt if n in found]
        if not workloads:
            continue
        for fe in r.frontends:
            fid = frontend_id(frontend_key(fe, "").in_table(Table.REDIRECT))
            if fid is not None:
                out.update((w, fid) for w in workloads)
    return frozenset(out)


def _verdicts(s: CompiledSet, frontend_id: Callable[[FrontendKey], int | None]) -> dict[int, PolicyAction]:
    out = {}
    for key, action in s.frontends.items():
        fid = frontend_id(key)
        if fid is not None:
            out[fid] = action
    return out


__all__ = ["CompiledSet", "Ids", "NodePolicy", "SET_BITS", "Workload", "apply_policy_delta", "cgroup_path",
           "compile_set", "desired_entries", "key_prefix", "node_policy", "prefix_is_v4",
           "prefix_key"]
