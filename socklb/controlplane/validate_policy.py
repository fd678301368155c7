"""Validation of the policy resources (Workload, Policy, LocalRedirect) and
their one stored form. Pure; errors name the field ("policy.egress[0].to_cidrs[2]: ...").

Checked here: what a write must satisfy on its own. What depends on other
resources or on a node (a service that does not exist yet, a node's map
capacities) is for compute and the node: a rule naming a missing service
applies once the service is created.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping

from socklb.lb.addresses import canonical_address, check_port, parse_ip, unmapped
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import frontend_key
from socklb.lb import fqdn
from socklb.lb.limits import (MAX_ADDRESSES_PER_WORKLOAD, MAX_CGROUP_DEPTH, MAX_CIDRS_PER_POLICY,
                              MAX_FQDNS_PER_POLICY, MAX_FQDNS_PER_RULE, MAX_LABELS, MAX_PORT_RULES,
                              MAX_PORTS_PER_RULE, MAX_RULES_PER_POLICY, MAX_SERVICES_PER_RULE)
from socklb.lb.names import check_name, validate_name
from socklb.v1 import policy_pb2, types_pb2

__all__ = ["validate_workload", "validate_policy", "validate_local_redirect", "parse_cidr",
           "normalized_workload", "normalized_policy", "normalized_local_redirect"]

# Kubernetes label syntax: a name segment (also a value) and an optional DNS-subdomain prefix.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME_MAX = 63
_LABEL_PREFIX_MAX = 253
_CGROUP_NAME_MAX = 255  # NAME_MAX: one directory name
_SHOWN = 64  # characters of bad input quoted back, so a huge value is not echoed whole

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _shown(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN else repr(text[:_SHOWN]) + f"... ({len(text)} characters)"


def _check_unique(values, field: str) -> None:
    seen: dict = {}
    for i, v in enumerate(values):
        if v in seen:
            raise InvalidState(f"{field}[{i}]", f"{v} is a duplicate of {field}[{seen[v]}]")
        seen[v] = i


# --- labels and selectors ------------------------------------------------------------

def _check_label_key(key: str, field: str) -> None:
    prefix, slash, name = key.rpartition("/")
    if slash and not (prefix and len(prefix) <= _LABEL_PREFIX_MAX and _DNS_SUBDOMAIN.fullmatch(prefix)):
        raise InvalidState(field, f"key {_shown(key)}: the prefix before '/' must be a DNS subdomain "
                                  f"(lowercase letters, digits, '-', '.'; at most {_LABEL_PREFIX_MAX} characters)")
    if not (name and len(name) <= _LABEL_NAME_MAX and _LABEL_NAME.fullmatch(name)):
        raise InvalidState(field, f"key {_shown(key)}: the name must be 1..{_LABEL_NAME_MAX} letters, digits, "
                                  "'-', '_' or '.', beginning and ending with a letter or digit")


def _check_label_value(key: str, value: str, field: str) -> None:
    if value and not (len(value) <= _LABEL_NAME_MAX and _LABEL_NAME.fullmatch(value)):
        raise InvalidState(field, f"value of {_shown(key)}: {_shown(value)} must be empty or "
                                  f"1..{_LABEL_NAME_MAX} letters, digits, '-', '_' or '.', beginning and "
                                  "ending with a letter or digit")


def check_labels(labels: Mapping[str, str], field: str) -> None:
    """Kubernetes-style keys and values, at most MAX_LABELS (labels and selectors alike)."""
    if len(labels) > MAX_LABELS:
        raise InvalidState(field, f"{len(labels)} entries: more than {MAX_LABELS}")
    for key in sorted(labels):  # sorted: the same input names the same culprit every time
        _check_label_key(key, field)
        _check_label_value(key, labels[key], field)


# --- workloads ---------------------------------------------------------------------------

def _check_cgroup(path: str, field: str) -> None:
    if not path:
        raise InvalidState(field, "must not be empty (a path below the node's cgroup2 mount, e.g. socklb/pod-a)")
    if path.startswith("/"):
        raise InvalidState(field, f"{_shown(path)} must be relative to the node's cgroup2 mount (no leading '/')")
    parts = path.split("/")
    if len(parts) > MAX_CGROUP_DEPTH:
        raise InvalidState(field, f"{_shown(path)} has {len(parts)} levels: more than {MAX_CGROUP_DEPTH}")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidState(field, f"{_shown(path)}: empty, '.' and '..' components are not allowed")
        if "\0" in part or len(part.encode()) > _CGROUP_NAME_MAX:
            raise InvalidState(field, f"{_shown(path)}: a component is not a directory name "
                                      f"(NUL, or longer than {_CGROUP_NAME_MAX} bytes)")


def _check_node(node: str, field: str) -> None:
    """A name a node can have (it says it in its Hello): not empty, at most
    MAX_NAME characters, no whitespace or control characters (a host name)."""
    check_name(node, field)
    if not node.isprintable() or any(c.isspace() for c in node):
        raise InvalidState(field, f"{_shown(node)} has whitespace or control characters")


def validate_workload(w: policy_pb2.Workload, field: str = "workload") -> None:
    validate_name(w.name, f"{field}.name")
    _check_node(w.node, f"{field}.node")
    _check_cgroup(w.cgroup, f"{field}.cgroup")
    check_labels(w.labels, f"{field}.labels")
    if len(w.addresses) > MAX_ADDRESSES_PER_WORKLOAD:
        raise InvalidState(f"{field}.addresses",
                           f"{len(w.addresses)} addresses: more than {MAX_ADDRESSES_PER_WORKLOAD}")
    _check_unique([parse_ip(text, f"{field}.addresses[{i}]") for i, text in enumerate(w.addresses)],
                  f"{field}.addresses")


def normalized_workload(w: policy_pb2.Workload) -> policy_pb2.Workload:
    """The stored form: addresses canonical, no version (output only)."""
    out = policy_pb2.Workload()
    out.CopyFrom(w)
    out.resource_version = 0
    out.addresses[:] = [canonical_address(a) for a in out.addresses]
    return out


# --- policies ------------------------------------------------------------------------------

def parse_cidr(text: str, field: str) -> Network:
    """A prefix ("10.0.0.0/8", "2001:db8::/32"); a bare address is /32 or /128.
    Host bits must be zero; an IPv4-mapped IPv6 prefix is read as the IPv4 one
    (as addresses are: the datapath keys IPv4 v4-mapped)."""
    if "%" in text:
        raise InvalidState(field, f"{_shown(text)}: zone ids (%...) are not supported")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise InvalidState(field, f"{_shown(text)} is not an IPv4 or IPv6 prefix (ADDRESS/LENGTH or an "
                                  "address)") from None
    if net.network_address != ipaddress.ip_interface(text).ip:
        raise InvalidState(field, f"{text} has host bits set: the prefix is {net}")
    return unmapped(net)


_ACTIONS = (policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY)
_PROTOCOLS = (types_pb2.PROTOCOL_UNSPECIFIED, types_pb2.PROTOCOL_TCP, types_pb2.PROTOCOL_UDP)


def _check_ports(ports, field: str) -> None:
    if len(ports) > MAX_PORTS_PER_RULE:
        raise InvalidState(field, f"{len(ports)} port ranges: more than {MAX_PORTS_PER_RULE}")
    for i, p in enumerate(ports):
        f = f"{field}[{i}]"
        check_port(p.port, f"{f}.port", allow_zero=True)
        check_port(p.end_port, f"{f}.end_port", allow_zero=True)
        if p.port == 0 and p.end_port:
            raise InvalidState(f"{f}.end_port", "must be 0 when port is 0 (port 0 means every port)")
        if p.end_port and p.end_port < p.port:
            raise InvalidState(f"{f}.end_port", f"{p.end_port} is below port {p.port}")
        if p.protocol not in _PROTOCOLS:
            raise InvalidState(f"{f}.protocol", f"unknown value {p.protocol} (PROTOCOL_TCP, PROTOCOL_UDP, "
                                                "or PROTOCOL_UNSPECIFIED for both)")


def _check_rule(rule: policy_pb2.EgressRule, field: str) -> list[Network]:
    """One rule on its own; its prefixes, in order."""
    if rule.action not in _ACTIONS:
        raise InvalidState(f"{field}.action", "must be ACTION_ALLOW or ACTION_DENY" if rule.action == 0
                           else f"unknown value {rule.action} (ACTION_ALLOW or ACTION_DENY)")
    if not rule.to_services and not rule.to_cidrs and not rule.to_fqdns:
        raise InvalidState(field, "needs to_services, to_cidrs or to_fqdns (a rule matches no destination "
                                  "without them)")
    if len(rule.to_services) > MAX_SERVICES_PER_RULE:
        raise InvalidState(f"{field}.to_services",
                           f"{len(rule.to_services)} services: more than {MAX_SERVICES_PER_RULE}")
    for i, name in enumerate(rule.to_services):
        validate_name(name, f"{field}.to_services[{i}]")
    _check_unique(rule.to_services, f"{field}.to_services")
    nets = [parse_cidr(text, f"{field}.to_cidrs[{i}]") for i, text in enumerate(rule.to_cidrs)]
    _check_unique(nets, f"{field}.to_cidrs")
    _check_ports(rule.ports, f"{field}.ports")
    return nets


def _check_fqdns(rule: policy_pb2.EgressRule, field: str) -> list[fqdn.Pattern]:
    """A rule's name patterns (docs/fqdn.md), in order."""
    if len(rule.to_fqdns) > MAX_FQDNS_PER_RULE:
        raise InvalidState(f"{field}.to_fqdns", f"{len(rule.to_fqdns)} patterns: more than {MAX_FQDNS_PER_RULE}")
    pats = []
    for i, text in enumerate(rule.to_fqdns):
        try:
            pats.append(fqdn.parse_pattern(text))
        except fqdn.PatternError as e:
            raise InvalidState(f"{field}.to_fqdns[{i}]", str(e)) from None
    _check_unique([(p.kind, p.suffix) for p in pats], f"{field}.to_fqdns")
    return pats


def _check_fqdn_port_rules(rules: list[tuple[str, list[fqdn.Pattern], int]]) -> None:
    """As _check_port_rules, for patterns: a pattern carries its rules' port
    rules and those of every pattern of this policy covering it."""
    count: dict[tuple, int] = {}
    for _, pats, per_rule in rules:
        for p in pats:
            count[(p.kind, p.suffix)] = count.get((p.kind, p.suffix), 0) + per_rule
    for field, pats, _ in rules:
        for i, p in enumerate(pats):
            total = sum(count.get((c.kind, c.suffix), 0) for c in fqdn.covering(p))
            if total > MAX_PORT_RULES:
                raise InvalidState(f"{field}.to_fqdns[{i}]",
                                   f"{p.text!r} would carry {total} port rules (its rules' and those of the "
                                   f"patterns of this policy covering it): more than {MAX_PORT_RULES}")


def _check_port_rules(rules: list[tuple[str, list[Network], int]]) -> None:
    """Refuse a prefix that would carry more than MAX_PORT_RULES port rules
    once flattened as a node holds it: its own rules' and those of every
    prefix of this policy containing it (one per (rule, port range), a rule
    without ports counting one). Ancestors are found by masking to the prefix
    lengths the policy uses, so 16k prefixes cost 16k x (lengths used)."""
    count: dict[tuple[int, int, int], int] = {}  # (version, network, length) -> port rules of its own
    lengths: dict[int, set[int]] = {4: set(), 6: set()}
    for _, nets, per_rule in rules:
        for net in nets:
            k = (net.version, int(net.network_address), net.prefixlen)
            count[k] = count.get(k, 0) + per_rule
            lengths[net.version].add(net.prefixlen)
    for field, nets, _ in rules:
        for i, net in enumerate(nets):
            bits = net.max_prefixlen
            addr = int(net.network_address)
            total = sum(count.get((net.version, addr >> (bits - n) << (bits - n) if n else 0, n), 0)
                        for n in lengths[net.version] if n <= net.prefixlen)
            if total > MAX_PORT_RULES:
                raise InvalidState(f"{field}.to_cidrs[{i}]",
                                   f"{net} would carry {total} port rules (its rules' and those of the prefixes "
                                   f"of this policy containing it): more than {MAX_PORT_RULES}")


def validate_policy(p: policy_pb2.Policy, field: str = "policy") -> None:
    validate_name(p.name, f"{field}.name")
    check_labels(p.selector, f"{field}.selector")
    if len(p.egress) > MAX_RULES_PER_POLICY:
        raise InvalidState(f"{field}.egress", f"{len(p.egress)} rules: more than {MAX_RULES_PER_POLICY}")
    cidrs = sum(len(r.to_cidrs) for r in p.egress)
    if cidrs > MAX_CIDRS_PER_POLICY:
        raise InvalidState(f"{field}.egress", f"{cidrs} prefixes over all rules: more than {MAX_CIDRS_PER_POLICY}")
    fqdns = sum(len(r.to_fqdns) for r in p.egress)
    if fqdns > MAX_FQDNS_PER_POLICY:
        raise InvalidState(f"{field}.egress", f"{fqdns} FQDN patterns over all rules: more than "
                                              f"{MAX_FQDNS_PER_POLICY}")
    rules, patterns = [], []
    for i, rule in enumerate(p.egress):
        f = f"{field}.egress[{i}]"
        rules.append((f, _check_rule(rule, f), max(len(rule.ports), 1)))
        patterns.append((f, _check_fqdns(rule, f), max(len(rule.ports), 1)))
    _check_port_rules(rules)
    _check_fqdn_port_rules(patterns)


def normalized_policy(p: policy_pb2.Policy) -> policy_pb2.Policy:
    """The stored form: prefixes canonical ("10.0.0.1" -> "10.0.0.1/32"),
    patterns canonical ("*.Example.COM." -> "*.example.com"), no version. Text that is no prefix comes back unchanged, for validation to name."""
    out = policy_pb2.Policy()
    out.CopyFrom(p)
    out.resource_version = 0
    for rule in out.egress:
        rule.to_cidrs[:] = [_canonical_cidr(c) for c in rule.to_cidrs]
        rule.to_fqdns[:] = [fqdn.canonical_pattern(t) for t in rule.to_fqdns]
    return out


def _canonical_cidr(text: str) -> str:
    try:
        return str(parse_cidr(text, "cidr"))
    except InvalidState:
        return text


# --- local redirects -------------------------------------------------------------------------

_REDIRECT_PROTOCOLS = (types_pb2.PROTOCOL_TCP, types_pb2.PROTOCOL_UDP)


def validate_local_redirect(r: policy_pb2.LocalRedirect, field: str = "local_redirect") -> None:
    validate_name(r.name, f"{field}.name")
    if r.service and r.HasField("frontend"):
        raise InvalidState(f"{field}.frontend", "give a service or a frontend, not both")
    if r.service:
        validate_name(r.service, f"{field}.service")
    elif r.HasField("frontend"):
        frontend_key(r.frontend, f"{field}.frontend")
        if r.frontend.protocol not in _REDIRECT_PROTOCOLS:
            raise InvalidState(f"{field}.frontend.protocol", "must be PROTOCOL_TCP or PROTOCOL_UDP")
    else:
        raise InvalidState(f"{field}.service", "give a service name, or a frontend (address, port, protocol)")
    if not r.selector:
        raise InvalidState(f"{field}.selector", "must not be empty: the redirect goes to the workloads it "
                                                "selects on the client's node (selecting every workload is a "
                                                "mistake)")
    check_labels(r.selector, f"{field}.selector")
    check_port(r.backend_port, f"{field}.backend_port", allow_zero=True)


def normalized_local_redirect(r: policy_pb2.LocalRedirect) -> policy_pb2.LocalRedirect:
    out = policy_pb2.LocalRedirect()
    out.CopyFrom(r)
    out.resource_version = 0
    if out.HasField("frontend"):
        out.frontend.address = canonical_address(out.frontend.address)
    return out
