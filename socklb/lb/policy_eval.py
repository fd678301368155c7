"""What a policy set allows, read from a node state: the node's judge of
sockets that are already open when a policy changes (they are terminated
when the new state denies them; a dry run lists them). Pure.

    judge = PolicyEvaluator.of_state(state)          # built once per state
    judge.allowed("ps-...", None, "10.0.0.7", 443, IPPROTO_TCP)
    judge.allowed("ps-...", FrontendKey(...), ...)   # a frontend: its verdict decides
    judge.denial(...)                                 # None, or why it is denied (reports)

The rules are those the cgroup hooks apply at connect()/sendmsg():
- set "": unrestricted, everything is allowed;
- a destination that is a frontend (VIP, port, protocol as the application
  addressed it, before translation) is allowed only by an ALLOW verdict of
  the set for that frontend; DENY, or no verdict, denies;
- any other destination is decided by the longest prefix of the set that
  holds it: a matching DENY rule denies (deny wins), else a matching ALLOW
  rule allows, else it is denied; no prefix holds it: denied. A rule matches
  a port in [port, end_port] and its protocol, UNSPECIFIED matching both.
  The prefixes come flattened (PolicySetState: the longest one carries the
  rules of every prefix containing it), so one match finds all that applies;
- a destination no prefix decides (none holds it, or no rule of it matches)
  may have been allowed by an FQDN rule (`fqdns`: the kernel learned its
  address from a DNS answer). What was learned is not in the node state:
  the caller passes `learned`, the pattern ids of the slots of the
  workload's `dns_learned` entry for the address (an empty set: none),
  **expired or not** (a connection open when the TTL ran out stays open).
  Of those patterns, the ones the set still has decide as the hook does:
  one whose rules deny the port denies (deny wins), else one that allows
  allows; none: denied ("no allowed name resolved to it"). Without
  `learned` (None: not known, e.g. a dry run) the judge is conservative: it
  allows when some pattern of the set allows the port and protocol.
  bpf/sock_destroy.bpf.c's fqdn_keeps() is the kernel judge's copy.

IPv4 and IPv6 prefixes are apart, as the control plane flattens them: an
IPv4 destination, or a v4-mapped IPv6 one (socklb.lb.addresses reads those
as IPv4), is matched against the IPv4 prefixes only; an IPv6 prefix inside
::ffff:0:0/96 is an IPv4 prefix written in IPv6 and counts as one.

Lookups are a dict probe per prefix length the set uses (longest first), so
judging the sockets of a node (100k) costs a few hash lookups each.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import NamedTuple

from socklb.v1 import node_pb2, policy_pb2, types_pb2

from .addresses import V4MAPPED, IPAddress, join_host_port
from .errors import InvalidState
from .fqdn import pattern_id
from .frontends import FrontendKey, frontend_key
from .protocols import TCP, UDP, name_of

UNRESTRICTED = ""  # WorkloadState.policy_set of a workload no policy selects
# A port rule's protocol: UNSPECIFIED matches TCP and UDP (unlike a
# frontend's, which is TCP).
RULE_PROTOCOLS = {types_pb2.PROTOCOL_UNSPECIFIED: 0, types_pb2.PROTOCOL_TCP: TCP, types_pb2.PROTOCOL_UDP: UDP}
_V4_IN_V6 = ipaddress.IPv6Network("::ffff:0:0/96")


class _Rule(NamedTuple):
    lo: int
    hi: int
    proto: int  # IPPROTO_*, 0: any
    action: int  # policy_pb2.Action; one that is neither ALLOW nor DENY grants nothing


class _Prefix(NamedTuple):
    text: str  # canonical ("10.0.0.0/8")
    rules: tuple[_Rule, ...]


class _Family:
    """One address family's prefixes of a set: length -> {network -> prefix},
    and the lengths in use, longest first."""

    __slots__ = ("bits", "by_length", "_probes")

    def __init__(self, bits: int):
        self.bits = bits
        self.by_length: dict[int, dict[int, _Prefix]] = {}
        self._probes: tuple[tuple[int, dict[int, _Prefix]], ...] = ()  # (host bits, networks), longest first

    def add(self, network: int, length: int, prefix: _Prefix) -> bool:
        """False when the set has this prefix already."""
        nets = self.by_length.setdefault(length, {})
        if network in nets:
            return False
        nets[network] = prefix
        self._probes = tuple((self.bits - n, self.by_length[n]) for n in sorted(self.by_length, reverse=True))
        return True

    def longest(self, value: int) -> _Prefix | None:
        for host_bits, nets in self._probes:
            p = nets.get(value >> host_bits << host_bits)
            if p is not None:
                return p
        return None


class _Set:
    __slots__ = ("name", "frontends", "v4", "v6", "fqdns", "fqdn_ids")

    def __init__(self, name: str):
        self.name = name
        # (addr, port, proto) of a FrontendKey -> (action, service): tuples hash faster
        self.frontends: dict[tuple[bytes, int, int], tuple[int, str]] = {}
        self.v4 = _Family(32)
        self.v6 = _Family(128)
        self.fqdns: list[tuple[str, tuple[_Rule, ...]]] = []  # (pattern, its flattened rules)
        self.fqdn_ids: dict[int, tuple[str, tuple[_Rule, ...]]] = {}  # pattern id -> (pattern, rules)


def _destination(addr: bytes | str | IPAddress) -> tuple[int, int]:
    """(IP version, address as an int) of a destination: 16 bytes in the
    datapath's encoding (IPv4 v4-mapped), 4 bytes, a literal or an
    ipaddress object; v4-mapped IPv6 is IPv4."""
    if isinstance(addr, (bytes, bytearray)):
        if len(addr) == 16:
            if addr[:12] == V4MAPPED:
                return 4, int.from_bytes(addr[12:], "big")
            return 6, int.from_bytes(addr, "big")
        if len(addr) == 4:
            return 4, int.from_bytes(addr, "big")
        raise ValueError(f"an address is 4 or 16 bytes, not {len(addr)}")
    ip = ipaddress.ip_address(addr)
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


def _shown(version: int, value: int) -> str:
    return str(ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value))


def _network(text: str, field: str) -> tuple[int, int, int, str]:
    """(version, network as an int, length, canonical text) of a prefix;
    host bits past the length are cleared, as a bare address is a /32 or
    /128."""
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError as e:
        raise InvalidState(field, f"{text!r} is not an IPv4 or IPv6 prefix ({e})") from None
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(_V4_IN_V6):
        net = ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net.version, int(net.network_address), net.prefixlen, str(net)


def _rule(r: node_pb2.PortRule, field: str) -> _Rule:
    if r.protocol not in RULE_PROTOCOLS:
        raise InvalidState(f"{field}.protocol", f"unknown protocol {r.protocol}")
    return _Rule(r.port, r.end_port, RULE_PROTOCOLS[r.protocol], r.action)


def _compile(ps: node_pb2.PolicySetState, field: str) -> _Set:
    s = _Set(ps.name)
    for i, v in enumerate(ps.frontends):
        key = frontend_key(v.frontend, f"{field}.frontends[{i}].frontend")
        k = (key.addr, key.port, key.proto)
        if k in s.frontends:
            raise InvalidState(f"{field}.frontends[{i}].frontend", f"frontend {key} has a verdict already")
        s.frontends[k] = (v.action, v.service)
    for i, p in enumerate(ps.prefixes):
        pf = f"{field}.prefixes[{i}]"
        version, network, length, text = _network(p.prefix, f"{pf}.prefix")
        rules = tuple(_rule(r, f"{pf}.rules[{j}]") for j, r in enumerate(p.rules))
        if not (s.v4 if version == 4 else s.v6).add(network, length, _Prefix(text, rules)):
            raise InvalidState(f"{pf}.prefix", f"prefix {text} is in the set already")
    for i, f in enumerate(ps.fqdns):
        entry = (f.pattern, tuple(_rule(r, f"{field}.fqdns[{i}].rules[{j}]") for j, r in enumerate(f.rules)))
        s.fqdns.append(entry)
        try:
            s.fqdn_ids[pattern_id(f.pattern)] = entry
        except ValueError:  # a pattern the node refuses; the control plane checks them
            continue
    return s


def _by_fqdn(s: _Set, port: int, proto: int) -> str | None:
    """The first pattern of the set whose rules allow the port and protocol."""
    for pattern, rules in s.fqdns:
        if _decide(rules, port, proto) == _ALLOW:
            return pattern
    return None


def _by_learned(s: _Set, learned: Iterable[int], port: int, proto: int) -> tuple[int | None, list[str]]:
    """What the learned patterns the set still has decide (DENY wins over
    ALLOW, as in the connect hook), and those patterns, sorted."""
    verdict, names = None, []
    for pid in learned:
        entry = s.fqdn_ids.get(pid)
        if entry is None:
            continue
        names.append(entry[0])
        d = _decide(entry[1], port, proto)
        if d == _DENY or (d == _ALLOW and verdict is None):
            verdict = d
    return verdict, sorted(names)


class PolicyEvaluator:
    """The policy sets of one node state, ready to judge destinations (see
    the module doc). InvalidState, naming the field, for a set the node
    would refuse (a prefix or frontend that does not parse, one given
    twice, two sets of one name)."""

    def __init__(self, policy_sets: Iterable[node_pb2.PolicySetState]):
        self._sets: dict[str, _Set] = {}
        for i, ps in enumerate(policy_sets):
            if ps.name in self._sets or ps.name == UNRESTRICTED:
                raise InvalidState(f"policy_sets[{i}].name", f"{ps.name!r} is empty or named twice")
            self._sets[ps.name] = _compile(ps, f"policy_sets[{i}]")

    @classmethod
    def of_state(cls, state: node_pb2.NodeState) -> PolicyEvaluator:
        return cls(state.policy_sets)

    def has_fqdns(self, set_name: str) -> bool:
        """Whether the set has FQDN rules (False for "" or a set the state lacks)."""
        s = self._sets.get(set_name)
        return s is not None and bool(s.fqdns)

    def __contains__(self, set_name: str) -> bool:
        return set_name == UNRESTRICTED or set_name in self._sets

    def _set(self, name: str) -> _Set:
        s = self._sets.get(name)
        if s is None:
            raise KeyError(f"no policy set {name!r} in the state")
        return s

    def allowed(self, set_name: str, frontend: FrontendKey | None, addr: bytes | str | IPAddress,
                port: int, proto: int, learned: frozenset[int] | None = None) -> bool:
        """Whether a workload with this set may reach the destination:
        `frontend` when it is one (addr and port are then not looked at),
        else (addr, port, proto); learned: the pattern ids the workload
        learned the address through (see the module doc; None: not known).
        KeyError for a set the state lacks."""
        if set_name == UNRESTRICTED:
            return True
        s = self._set(set_name)
        if frontend is not None:
            return s.frontends.get((frontend.addr, frontend.port, frontend.proto), _NO_VERDICT)[0] == _ALLOW
        version, value = _destination(addr)
        prefix = (s.v4 if version == 4 else s.v6).longest(value)
        verdict = _decide(prefix.rules, port, proto) if prefix is not None else None
        if verdict is None and s.fqdns:
            if learned is None:
                return _by_fqdn(s, port, proto) is not None
            return _by_learned(s, learned, port, proto)[0] == _ALLOW
        return verdict == _ALLOW

    def denial(self, set_name: str, frontend: FrontendKey | None, addr: bytes | str | IPAddress,
               port: int, proto: int, learned: frozenset[int] | None = None) -> str | None:
        """None when allowed (see allowed()), else why not, for reports:
        "policy set ps-...: <what denies>"."""
        if self.allowed(set_name, frontend, addr, port, proto, learned):
            return None
        s = self._sets[set_name]
        if frontend is not None:
            action = s.frontends.get((frontend.addr, frontend.port, frontend.proto), _NO_VERDICT)[0]
            return f"policy set {s.name}: frontend {frontend} {'has no verdict' if action is None else 'is denied'}"
        version, value = _destination(addr)
        prefix = (s.v4 if version == 4 else s.v6).longest(value)
        shown = join_host_port(_shown(version, value), port) + "/" + name_of(proto)
        fqdn = s.fqdns and learned is not None and (prefix is None or _decide(prefix.rules, port, proto) is None)
        if fqdn:
            verdict, names = _by_learned(s, learned, port, proto)
            if not names:
                return f"policy set {s.name}: FQDN: no allowed name resolved to {shown}"
            how = "denies" if verdict == _DENY else "does not allow"
            return f"policy set {s.name}: FQDN: {', '.join(names)} (what resolved to it) {how} {shown}"
        if prefix is None:
            return f"policy set {s.name}: no prefix holds {shown}"
        if _decide(prefix.rules, port, proto) == _DENY:
            return f"policy set {s.name}: {prefix.text} denies {shown}"
        return f"policy set {s.name}: no rule of {prefix.text} allows {shown}"


_ALLOW, _DENY = policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY
_NO_VERDICT = (None, "")


def _decide(rules: tuple[_Rule, ...], port: int, proto: int) -> int | None:
    """DENY when a matching rule denies (deny wins), else ALLOW when one
    allows, else None."""
    allowed = None
    for lo, hi, rule_proto, action in rules:
        if lo <= port <= hi and (not rule_proto or rule_proto == proto):
            if action == _DENY:
                return _DENY
            if action == _ALLOW:
                allowed = _ALLOW
    return allowed


__all__ = ["PolicyEvaluator", "RULE_PROTOCOLS", "UNRESTRICTED"]
