"""IPv4 and IPv6 prefixes are apart in the kernel as they are in the node's
judge (socklb.lb.policy_eval): the policy_prefixes keys policy_desired
builds (IPv4 prefixes, those written inside ::ffff:0:0/96 too, in the set's
IPv4 space: SOCKLB_POL_SET_V4), looked up as bpf/sock_lb.c looks them up
and matched as the kernel's LPM trie matches them (simulated here over the
keys' bytes), pick the prefix the evaluator picks, for every destination."""
from __future__ import annotations

import ctypes as ct
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socklb.dataplane import layout, policy_desired
from socklb.dataplane.maps import _prefix_key
from socklb.dataplane.policy_desired import (Ids, compile_set, desired_entries, key_prefix,
                                             node_policy, prefix_is_v4, prefix_key)
from socklb.dataplane.policy_plan import PolicyEntries
from socklb.dataplane.workloads import Cgroup
from socklb.lb.addresses import V4MAPPED, addr16, parse_prefix
from socklb.lb.errors import InvalidState
from socklb.lb.policy_eval import PolicyEvaluator
from socklb.v1 import node_pb2, policy_pb2, types_pb2

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
ALLOW, DENY = policy_pb2.ACTION_ALLOW, policy_pb2.ACTION_DENY
PROTOS = {types_pb2.PROTOCOL_UNSPECIFIED: 0, types_pb2.PROTOCOL_TCP: TCP, types_pb2.PROTOCOL_UDP: UDP}
MARK = 10000  # prefix i of a set allows port MARK + i, and no other prefix does: the port names the prefix

# Small pools, so that prefixes nest and destinations fall in them; the IPv6
# ones around ::ffff:0:0/96 (::/0, ::/1, ::fffe:0:0/95 hold it; ::fffe:... is
# next to it but not v4-mapped; ::a00:1 is IPv4-compatible, i.e. IPv6).
V4 = ["10.0.0.1", "10.1.2.3", "10.1.255.1", "127.0.0.1", "192.168.1.1", "0.0.0.0", "255.255.255.255"]
V6 = ["::", "::1", "::a00:1", "::fffe:0:1", "::fffe:ffff:ffff", "::1:0:0:1", "fd00::1", "fd00:1::5",
      "64:ff9b::a00:1", "2001:db8::1", "8000::1", "ffff::1"]
V4_LENGTHS = [0, 1, 8, 15, 16, 24, 32]
V6_LENGTHS = [0, 1, 8, 64, 94, 95, 96, 97, 104, 127, 128]


@st.composite
def a_prefix(draw) -> str:
    """A prefix as a node state may write it: IPv4, IPv4 written inside
    ::ffff:0:0/96, or IPv6 (some of which hold ::ffff:0:0/96)."""
    kind = draw(st.sampled_from(["v4", "v4-in-v6", "v6"]))
    if kind == "v6":
        net = ipaddress.ip_network(f"{draw(st.sampled_from(V6 + ['::ffff:0:0']))}/{draw(st.sampled_from(V6_LENGTHS))}",
                                   strict=False)
        return str(net)
    net = ipaddress.ip_network(f"{draw(st.sampled_from(V4))}/{draw(st.sampled_from(V4_LENGTHS))}", strict=False)
    return str(net) if kind == "v4" else f"::ffff:{net.network_address}/{96 + net.prefixlen}"


def same_prefix(text: str) -> tuple[int, int, int]:
    """The test's own reading of which prefixes are one (an IPv4 one written
    in IPv6 is the IPv4 one), to give each set a prefix once."""
    net = ipaddress.ip_network(text)
    if net.version == 6 and net.prefixlen >= 96 and net.subnet_of(ipaddress.ip_network("::ffff:0:0/96")):
        return 4, int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96
    return net.version, int(net.network_address), net.prefixlen


@st.composite
def a_rule(draw) -> node_pb2.PortRule:
    lo, hi = sorted((draw(st.sampled_from([0, 22, 53, 80, 443, 65535])),
                     draw(st.sampled_from([0, 22, 53, 80, 443, 65535]))))
    return node_pb2.PortRule(port=lo, end_port=hi, protocol=draw(st.sampled_from(sorted(PROTOS))),
                             action=draw(st.sampled_from([ALLOW, DENY])))


@st.composite
def a_set(draw, name: str) -> node_pb2.PolicySetState:
    texts = draw(st.lists(a_prefix(), max_size=10, unique_by=same_prefix))
    prefixes = []
    for i, text in enumerate(texts):
        # A DENY over the marks would hide which prefix decides; the extra rules stay below them.
        extra = [r for r in draw(st.lists(a_rule(), max_size=3)) if r.end_port < MARK]
        prefixes.append(node_pb2.PrefixRules(prefix=text, rules=[
            node_pb2.PortRule(port=MARK + i, end_port=MARK + i, action=ALLOW), *extra]))
    return node_pb2.PolicySetState(name=name, prefixes=prefixes)


@st.composite
def a_destination(draw) -> str | bytes:
    """An address literal or the 16 bytes the hooks see; IPv4, v4-mapped or IPv6."""
    addr = draw(st.sampled_from(V4 + V6 + ["::ffff:" + a for a in V4] + ["10.1.2.4", "11.0.0.1", "fd00:2::1"]))
    return addr16(ipaddress.ip_address(addr)) if draw(st.booleans()) else addr


# --- the kernel, simulated -----------------------------------------------------------------

def lpm(trie: dict[tuple[int, bytes], object], key: layout.PolicyPrefixKey):
    """What a lookup of `key` in a BPF LPM trie finds: the entry with the
    longest prefixlen whose first prefixlen bits of data (the key after its
    prefixlen field: set, then addr; bytes in memory order, bits most
    significant first) are those of the key."""
    data = int.from_bytes(bytes(key)[4:], "big")
    bits = 8 * (ct.sizeof(key) - 4)
    best = None
    for (prefixlen, entry_data), value in trie.items():
        shift = bits - prefixlen
        if data >> shift == int.from_bytes(entry_data, "big") >> shift and (best is None or prefixlen > best[0]):
            best = (prefixlen, value)
    return None if best is None else best[1]


def hook_key(set_id: int, addr: str | bytes) -> layout.PolicyPrefixKey:
    """The key bpf/sock_lb.c policy_allows looks up: the set, with
    SOCKLB_POL_SET_V4 for a v4 hook's address or a v4-mapped one of a v6
    hook, and the 16-byte address (IPv4 v4-mapped), matched whole."""
    raw = addr if isinstance(addr, bytes) else addr16(ipaddress.ip_address(addr))
    v4 = raw[:12] == V4MAPPED
    return layout.PolicyPrefixKey(prefixlen=32 + 128, set=set_id | (layout.POL_SET_V4 if v4 else 0),
                                  addr=(ct.c_ubyte * 16)(*raw))


def kernel_allows(trie, set_id: int, addr, port: int, proto: int) -> bool:
    """policy_allows for a destination that is no frontend."""
    rules = lpm(trie, hook_key(set_id, addr))
    if rules is None:
        return False
    allowed = False
    for r in rules:
        if r.port <= port <= r.end_port and (not r.proto or r.proto == proto):
            if r.action == layout.PolicyAction.DENY:
                return False
            allowed = True
    return allowed


def write_trie(sets: dict[int, node_pb2.PolicySetState]) -> dict[tuple[int, bytes], object]:
    """The policy_prefixes entries of the sets (set id -> set), keyed as the
    map writer keys them: (prefixlen, data) -> rules."""
    trie = {}
    for sid, ps in sets.items():
        for prefix, rules in compile_set(ps, "set").prefixes.items():
            key = _prefix_key(sid, prefix)
            entry = (key.prefixlen, bytes(key)[4:])
            assert entry not in trie, "two entries of one key"
            trie[entry] = rules
    return trie


# --- the property --------------------------------------------------------------------------

@settings(max_examples=400, deadline=None)
@given(a_set("ps-a"), a_set("ps-b"), st.integers(1, layout.POL_SET_V4 - 2),
       st.lists(a_destination(), min_size=1, max_size=12))
def test_the_kernels_longest_prefix_is_the_evaluators(ps_a, ps_b, sid, dests):
    judge = PolicyEvaluator([ps_a, ps_b])
    ids = {"ps-a": sid, "ps-b": sid + 1}
    trie = write_trie({ids["ps-a"]: ps_a, ids["ps-b"]: ps_b})
    for ps in (ps_a, ps_b):
        marks = [MARK + i for i in range(len(ps.prefixes))]
        for addr in dests:
            for proto in (TCP, UDP):
                for port in [*marks, 0, 22, 53, 80, 443, 65535]:
                    want = judge.allowed(ps.name, None, addr, port, proto)
                    assert kernel_allows(trie, ids[ps.name], addr, port, proto) == want, (
                        ps.name, addr, port, proto, judge.denial(ps.name, None, addr, port, proto), ps)
            # The mark the kernel allows names the prefix that decides: the evaluator's.
            picked = [m for m in marks if kernel_allows(trie, ids[ps.name], addr, m, TCP)]
            assert picked == [m for m in marks if judge.allowed(ps.name, None, addr, m, TCP)]
            assert len(picked) <= 1


# --- examples ------------------------------------------------------------------------------

def one_prefix_set(text: str) -> node_pb2.PolicySetState:
    return node_pb2.PolicySetState(name="ps-x", prefixes=[node_pb2.PrefixRules(
        prefix=text, rules=[node_pb2.PortRule(port=0, end_port=65535, action=ALLOW)])])


@pytest.mark.parametrize("text, allowed, denied", [
    ("::/0", ["::1", "fd00::1", "::fffe:0:1", "::a00:1"], ["127.0.0.1", "::ffff:127.0.0.1", "0.0.0.0"]),
    ("::/1", ["::1", "::fffe:0:1"], ["10.0.0.1", "::ffff:10.0.0.1", "8000::1"]),
    ("::fffe:0:0/95", ["::fffe:0:1", "::fffe:ffff:ffff"], ["10.0.0.1", "::ffff:10.0.0.1", "::1"]),
    ("0.0.0.0/0", ["127.0.0.1", "::ffff:127.0.0.1", "255.255.255.255"], ["::1", "::", "::a00:1", "fd00::1"]),
    ("::ffff:0:0/96", ["127.0.0.1", "::ffff:10.1.2.3"], ["::1", "::fffe:0:1"]),
    ("::ffff:127.0.0.0/104", ["127.0.0.1", "127.255.0.9", "::ffff:127.0.0.1"], ["128.0.0.1", "::1", "::7f00:1"]),
])
def test_each_family_in_its_own_space(text, allowed, denied):
    ps = one_prefix_set(text)
    trie = write_trie({7: ps})
    judge = PolicyEvaluator([ps])
    for addr in allowed + denied:
        want = addr in allowed
        assert judge.allowed("ps-x", None, addr, 80, TCP) == want, addr
        assert kernel_allows(trie, 7, addr, 80, TCP) == want, addr


def test_keys():
    v4 = parse_prefix("::ffff:127.0.0.0/104", "p")
    assert v4 == parse_prefix("127.0.0.0/8", "p") and prefix_is_v4(v4)
    assert prefix_key(5, v4) == (32 + 104, 5 | layout.POL_SET_V4, addr16("127.0.0.0"))
    for text in ("::/0", "::fffe:0:0/95", "fd00::/8"):
        p = parse_prefix(text, "p")
        assert not prefix_is_v4(p) and prefix_key(5, p)[1] == 5
    for text in ("0.0.0.0/0", "10.0.0.0/8", "::/0", "::1/128", "::ffff:0:0/96"):
        p = parse_prefix(text, "p")
        k = prefix_key(9, p)
        assert key_prefix(*k) == (9, p)
    for bad in (0, layout.POL_SET_V4, layout.POL_SET_V4 + 1):
        with pytest.raises(ValueError):
            prefix_key(bad, v4)


def test_set_ids_stay_below_the_family_bit(monkeypatch):
    """desired_entries gives set ids below POL_SET_V4 only: with the bit
    made 4 and ids 1..3 still in the maps, a new set finds none."""
    state = node_pb2.NodeState(policy_sets=[one_prefix_set("10.0.0.0/8")],
                               workloads=[node_pb2.WorkloadState(name="w", cgroup="socklb/w", policy_set="ps-x")])
    policy = node_policy(state)
    ids, _, _ = desired_entries(policy, {"w": Cgroup(101)}, lambda k: None, Ids(), PolicyEntries())
    assert ids.sets == {"ps-x": 1}
    monkeypatch.setattr(policy_desired, "POL_SET_V4", 4)
    busy = PolicyEntries(prefixes={i: {} for i in (1, 2, 3)})
    with pytest.raises(InvalidState, match="no free id left below 4"):
        desired_entries(policy, {"w": Cgroup(101)}, lambda k: None, Ids(), busy)
