"""What a set of policies allows, as a node programs it. Pure.

A workload is selected by the policies whose selector its labels include; the
policies that select it make its **policy set**. Workloads selected by the
same policies share one set (one kernel entry per distinct set, not per
workload), named from the policies' names only, so that a rule edit changes
the set's content but not its name: it upserts the set, not every workload
that uses it.

A set holds, for the kernel:
- a **verdict** per frontend its rules name (through `to_services`): DENY when
  a matching DENY rule exists (deny wins), else ALLOW; a frontend not listed is
  denied;
- for destinations that are not a frontend, the port rules of each prefix
  (`to_cidrs`), **flattened**: each prefix carries the rules of every prefix
  that contains it, so the kernel's longest-prefix match finds everything that
  applies in one lookup;
- the port rules of each DNS name pattern (`to_fqdns`), flattened the same
  way: a pattern carries the rules of every pattern covering it (the kernel
  learns an address under the most specific pattern its name matched), and
  the **DNS servers** whose answers teach the set's workloads (see
  `dns_servers`).

Everything is ordered deterministically: the digest of a node's state
depends on it.
"""
from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

from socklb.lb import fqdn
from socklb.lb.addresses import canonical_address, unmapped
from socklb.lb.protocols import PROTOCOLS
from socklb.v1 import api_pb2, node_pb2, policy_pb2, types_pb2

SET_PREFIX = "ps-"
MAX_PORT = 65535
# Only these grant or refuse anything. A rule with another action (refused by
# the API, but the store may hold anything) grants nothing: the node denies
# what no ALLOW rule names, so skipping it fails closed.
_ACTIONS = (policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY)

# (port, end_port, protocol, action): a PortRule as a sortable, hashable value.
Rule = tuple[int, int, int, int]
# (IP version, network address as an int, prefix length): a prefix, sorted by
# family, then address, then length (a prefix before the longer ones inside it).
PrefixKey = tuple[int, int, int]


def set_name(policies: Iterable[str]) -> str:
    """The name of the set of these policies: "ps-" + 16 hex digits of the
    sha256 of their sorted names, one a line. Independent of their rules."""
    text = "\n".join(sorted(policies))
    return SET_PREFIX + hashlib.sha256(text.encode()).hexdigest()[:16]


def workload_state(w: policy_pb2.Workload, policy_set: str) -> node_pb2.WorkloadState:
    """A workload on its node; policy_set "" when no policy selects it."""
    return node_pb2.WorkloadState(name=w.name, cgroup=w.cgroup, bypass_socket_lb=w.bypass_socket_lb,
                                  policy_set=policy_set)


def policy_set(policies: Sequence[policy_pb2.Policy],
               services: Mapping[str, api_pb2.Service]) -> node_pb2.PolicySetState:
    """The set made of `policies` (at least one), against the current services."""
    frontends = frontend_verdicts(policies, services)
    prefixes = prefix_rules(policies)
    fqdns = fqdn_rules(policies)
    return node_pb2.PolicySetState(
        name=set_name(p.name for p in policies), policies=sorted(p.name for p in policies),
        frontends=frontends, prefixes=prefixes, fqdns=fqdns,
        dns_servers=dns_servers(frontends, prefixes, services) if fqdns else [])


def services_named(policy: policy_pb2.Policy) -> set[str]:
    """The services a policy's rules name (existing or not)."""
    return {name for rule in policy.egress for name in rule.to_services}


# --- frontends ------------------------------------------------------------------

def port_range(pr: policy_pb2.PortRange) -> tuple[int, int]:
    """The inclusive ports of a PortRange: port 0 with end_port 0 is every
    port; end_port 0 is just `port`."""
    if pr.port == 0 and pr.end_port == 0:
        return 0, MAX_PORT
    return pr.port, pr.end_port or pr.port


def matches_frontend(ports: Sequence[policy_pb2.PortRange], fe: types_pb2.Frontend) -> bool:
    """Whether a rule's ports match a frontend (no ports: every frontend).
    Protocols compare as the datapath sees them (a frontend's UNSPECIFIED
    is TCP)."""
    if not ports:
        return True
    for pr in ports:
        lo, hi = port_range(pr)
        if lo <= fe.port <= hi and (pr.protocol == types_pb2.PROTOCOL_UNSPECIFIED
                                    or PROTOCOLS.get(pr.protocol) == PROTOCOLS.get(fe.protocol)):
            return True
    return False


def frontend_verdicts(policies: Iterable[policy_pb2.Policy],
                      services: Mapping[str, api_pb2.Service]) -> list[node_pb2.FrontendVerdict]:
    """ALLOW or DENY for every frontend some rule matches, deny winning;
    sorted by service, address, port, protocol. Rules naming a service that
    does not exist match nothing (yet)."""
    verdicts: dict[tuple, tuple[types_pb2.Frontend, int]] = {}
    for p in policies:
        for rule in p.egress:
            if rule.action not in _ACTIONS:
                continue
            for name in rule.to_services:
                svc = services.get(name)
                if svc is None:
                    continue
                for fe in svc.frontends:
                    if not matches_frontend(rule.ports, fe):
                        continue
                    key = (name, fe.address, fe.port, fe.protocol)
                    seen = verdicts.get(key)
                    if seen is None or rule.action == policy_pb2.ACTION_DENY:
                        verdicts[key] = (fe, rule.action)
    return [node_pb2.FrontendVerdict(service=key[0], frontend=fe, action=action)
            for key, (fe, action) in sorted(verdicts.items(), key=lambda kv: kv[0])]


# --- prefixes -------------------------------------------------------------------

def port_rules(rule: policy_pb2.EgressRule) -> list[Rule]:
    """The port rules a rule gives each of its prefixes: one per port range;
    no ports: every port of every protocol."""
    if not rule.ports:
        return [(0, MAX_PORT, types_pb2.PROTOCOL_UNSPECIFIED, rule.action)]
    return [(*port_range(pr), pr.protocol, rule.action) for pr in rule.ports]


# Memoized: a policy's prefixes are read again for every set it is in, and
# parsing is most of what a set costs.
@lru_cache(maxsize=1 << 16)
def prefix_key(text: str) -> PrefixKey | None:
    """A prefix's key; a bare address is a /32 or /128, host bits are
    cleared, an IPv4 prefix written v4-mapped is the IPv4 one (the API
    stores it so; stored data that bypassed it must not make two keys of
    one prefix). None when the text is no prefix."""
    try:
        net = unmapped(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return None
    return net.version, int(net.network_address), net.prefixlen


@lru_cache(maxsize=1 << 16)
def prefix_text(key: PrefixKey) -> str:
    """The canonical text of a prefix key ("10.0.0.0/8", "2001:db8::/32")."""
    version, addr, length = key
    address = ipaddress.IPv4Address(addr) if version == 4 else ipaddress.IPv6Address(addr)
    return f"{address}/{length}"


def prefix_rules(policies: Iterable[policy_pb2.Policy]) -> list[node_pb2.PrefixRules]:
    """Every prefix of the policies' rules with its flattened port rules."""
    rules, unparsed = _targets(policies, "to_cidrs", prefix_key)
    out = [_prefix_rules(prefix_text(key), merged) for key, merged in flatten(rules)]
    # A prefix the API would have refused (the store may hold anything) goes
    # as written, on its own: the node refuses the set naming it, where
    # dropping it would change what the policy allows without a word.
    out.extend(_prefix_rules(text, unparsed[text]) for text in sorted(unparsed))
    return out


def _targets(policies: Iterable[policy_pb2.Policy], field: str, key_of) -> tuple[dict, dict[str, set[Rule]]]:
    """The port rules the policies' rules give each entry of `field`
    (to_cidrs, to_fqdns), by its key; entries whose key is None (text the
    API would have refused) by their text."""
    rules: dict = {}
    unparsed: dict[str, set[Rule]] = {}
    for p in policies:
        for rule in p.egress:
            targets = getattr(rule, field)
            if rule.action not in _ACTIONS or not targets:
                continue
            given = port_rules(rule)
            for text in targets:
                key = key_of(text)
                if key is None:
                    unparsed.setdefault(text, set()).update(given)
                else:
                    rules.setdefault(key, set()).update(given)
    return rules, unparsed


def flatten(rules: Mapping[PrefixKey, set[Rule]]) -> list[tuple[PrefixKey, set[Rule]]]:
    """Each prefix with its own rules and those of every prefix of the same
    family containing it, sorted by prefix. A prefix looks up its supernets
    at the prefix lengths in use only: at most one lookup per distinct length
    shorter than its own, not one per other prefix."""
    lengths: dict[int, list[int]] = {}
    for version, _, length in rules:
        lengths.setdefault(version, []).append(length)
    lengths = {v: sorted(set(ls)) for v, ls in lengths.items()}
    out = []
    for key in sorted(rules):
        version, addr, length = key
        bits = 32 if version == 4 else 128
        merged = set(rules[key])
        for shorter in lengths[version]:
            if shorter >= length:
                break
            mask = ((1 << shorter) - 1) << (bits - shorter)
            outer = rules.get((version, addr & mask, shorter))
            if outer is not None:
                merged |= outer
        out.append((key, merged))
    return out


def _prefix_rules(prefix: str, rules: Iterable[Rule]) -> node_pb2.PrefixRules:
    return node_pb2.PrefixRules(prefix=prefix, rules=[
        node_pb2.PortRule(port=lo, end_port=hi, protocol=proto, action=action)
        for lo, hi, proto, action in sorted(rules)])


# --- FQDN patterns --------------------------------------------------------------

PatternKey = tuple[int, str]  # (fqdn.Kind, suffix): a parsed pattern


def fqdn_rules(policies: Iterable[policy_pb2.Policy]) -> list[node_pb2.FqdnRules]:
    """Every pattern of the policies' `to_fqdns` (canonical spelling) with
    its flattened port rules, sorted by pattern."""
    rules, unparsed = _targets(policies, "to_fqdns", pattern_key)
    out = []
    for key, merged in flatten_patterns(rules):
        out.append(node_pb2.FqdnRules(pattern=fqdn.Pattern("", *key).canonical, rules=_port_rules(merged)))
    out.sort(key=lambda f: f.pattern)
    # As prefix_rules does: a pattern the API would have refused goes as
    # written, for the node to refuse the set.
    out.extend(node_pb2.FqdnRules(pattern=text, rules=_port_rules(unparsed[text])) for text in sorted(unparsed))
    return out


@lru_cache(maxsize=1 << 16)
def pattern_key(text: str) -> PatternKey | None:
    try:
        pat = fqdn.parse_pattern(text)
    except fqdn.PatternError:
        return None
    return int(pat.kind), pat.suffix


def flatten_patterns(rules: Mapping[PatternKey, set[Rule]]) -> list[tuple[PatternKey, set[Rule]]]:
    """Each pattern with its own rules and those of every pattern covering
    it: a few lookups per pattern (one per suffix of its name), not one per
    other pattern."""
    out = []
    for key in rules:
        merged: set[Rule] = set()
        for outer in fqdn.covering(fqdn.Pattern("", fqdn.Kind(key[0]), key[1])):
            merged |= rules.get((int(outer.kind), outer.suffix), set())
        out.append((key, merged))
    return out


def _port_rules(rules: Iterable[Rule]) -> list[node_pb2.PortRule]:
    return [node_pb2.PortRule(port=lo, end_port=hi, protocol=proto, action=action)
            for lo, hi, proto, action in sorted(rules)]


# --- DNS servers ----------------------------------------------------------------

DNS_PORT = 53


def dns_servers(frontends: Iterable[node_pb2.FrontendVerdict], prefixes: Iterable[node_pb2.PrefixRules],
                services: Mapping[str, api_pb2.Service]) -> list[node_pb2.DnsServer]:
    """The DNS servers a set's workloads learn from: each frontend on port
    53 the set ALLOWs, and its service's backends at their port (the
    learner's hooks see a query after the socket LB translated it to a
    backend); each single address (/32, /128) of the set's prefixes whose
    rules allow port 53 (UDP or TCP). Sorted by address, then port."""
    servers: set[tuple[str, int]] = set()
    for v in frontends:
        if v.action != policy_pb2.ACTION_ALLOW or v.frontend.port != DNS_PORT:
            continue
        servers.add((canonical_address(v.frontend.address), DNS_PORT))
        svc = services.get(v.service)
        for b in svc.backends if svc is not None else ():
            servers.add((canonical_address(b.address), b.port or DNS_PORT))
    for p in prefixes:
        key = prefix_key(p.prefix)
        if key is None or key[2] != (32 if key[0] == 4 else 128):
            continue
        if any(_allows_dns(p.rules, proto) for proto in (types_pb2.PROTOCOL_UDP, types_pb2.PROTOCOL_TCP)):
            servers.add((prefix_text(key).split("/")[0], DNS_PORT))
    return [node_pb2.DnsServer(address=a, port=port) for a, port in sorted(servers, key=_server_order)]


def _server_order(server: tuple[str, int]) -> tuple:
    a = ipaddress.ip_address(server[0])
    return a.version, int(a), server[1]


def _allows_dns(rules: Iterable[node_pb2.PortRule], proto: int) -> bool:
    """Whether these rules allow port 53 of `proto` (a matching DENY wins)."""
    allowed = False
    for r in rules:
        if r.port <= DNS_PORT <= r.end_port and r.protocol in (types_pb2.PROTOCOL_UNSPECIFIED, proto):
            if r.action == policy_pb2.ACTION_DENY:
                return False
            allowed = allowed or r.action == policy_pb2.ACTION_ALLOW
    return allowed


def dns_relevant(svc: api_pb2.Service | None) -> list | None:
    """What the sets see of a service: its frontends, and, when one is on
    port 53 (it may be a set's DNS service), its backends' addresses."""
    if svc is None:
        return None
    if not any(fe.port == DNS_PORT for fe in svc.frontends):
        return [list(svc.frontends)]
    return [list(svc.frontends), sorted((b.address, b.port) for b in svc.backends)]
