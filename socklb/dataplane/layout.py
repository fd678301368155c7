"""Python mirror of the headers in bpf/ that user space shares with the BPF
programs, byte for byte: socklb.h (the datapath's map keys and values, the
policy maps among them),
flows.h (the flow reader's records), sock_destroy.h (termination: maps,
records, limits, modes) and sock_stats.h (socket statistics records).

tests/unit/test_layout.py compiles the headers and compares every size,
field offset, enum value and numeric constant with these (STRUCTS, ENUMS,
CONSTANTS), and fails on a header struct, enum or constant with no mirror,
so the two cannot drift apart silently.
"""
from __future__ import annotations

import ctypes as ct
import enum
import socket
import struct

from socklb.lb.addresses import addr16, addr_text  # noqa: F401 (the model's encoding, used by the mirror)
from socklb.lb.frontends import BackendState, Selection  # noqa: F401 (the values of socklb.h's enums)

U32x4 = ct.c_uint32 * 4

FLOW_RNAT_RING = 4
LAYOUT_VERSION = 2
CONN_SLOTS = 65536  # conn_flows slots (a power of 2)
CONN_PROBE = 4      # slots a socket may take, from cookie % CONN_SLOTS on

# Default capacities (SOCKLB_*_MAX in the header); the loader may override them.
SERVICES_MAX = 262144
BACKENDS_MAX = 262144
AFFINITY_MAX = 65536
REV_NAT_MAX = 65536


class Counter(enum.IntEnum):
    TRANSLATED = 0
    AFFINITY_HIT = 1
    AFFINITY_MISS = 2
    NO_BACKEND = 3
    POLICY_DENY = 4
    RNAT_HIT = 5
    RNAT_MISS = 6
    RNAT_CLEANED = 7
    FQDN_DENY = 8
    FQDN_EXPIRED = 9


COUNTER_MAX = len(Counter)


class Meta(enum.IntEnum):
    VERSION = 0
    NEXT_FRONTEND_ID = 1
    NEXT_BACKEND_ID = 2
    LAYOUT = 3


META_MAX = len(Meta)

# Policy maps (sizes: twice the per-node limits, see socklb.h).
WORKLOAD_IDS_MAX = 8192
WORKLOAD_CGROUPS_MAX = 65536
POLICY_FRONTENDS_MAX = 131072
POLICY_PREFIXES_MAX = 131072
POLICY_FQDNS_MAX = 65536
PORT_RULES_MAX = 16
CGROUP_DEPTH_MAX = 16
REDIRECT_EXEMPT_MAX = 65536
CFG_F_EXEMPT_ONLY = 1  # PolicyCfg.flags: the workload entries serve redirect exemptions only
# The family bit of a policy_prefixes key's set: IPv4 prefixes (and the
# hooks' IPv4 and v4-mapped lookups) have it, IPv6 ones not; set ids stay below it.
POL_SET_V4 = 1 << 31


class PolicyAction(enum.IntEnum):
    """The verdict of a frontend or a port rule (socklb.v1.Action's values)."""
    ALLOW = 1
    DENY = 2


class WorkloadFlag(enum.IntFlag):
    BYPASS = 1


class Table(enum.IntEnum):
    """Whose entries a services key holds (socklb_svc_key.table)."""
    SERVICE = 0
    REDIRECT = 1


class SvcFlag(enum.IntFlag):
    """socklb_svc_val.flags of a service-table master."""
    REDIRECTED = 1   # a local redirect serves it: the hooks look up the redirect table
    NOT_SERVICE = 2  # a placeholder for a redirect of an address that is no VIP


class SvcKey(ct.Structure):
    _fields_ = [
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("table", ct.c_uint8),
        ("slot", ct.c_uint16),
        ("pad2", ct.c_uint16),
    ]


class SvcVal(ct.Structure):
    _fields_ = [
        ("id", ct.c_uint32),
        ("count", ct.c_uint32),
        ("affinity_timeout", ct.c_uint32),
        ("selection", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint16),
    ]


class Backend(ct.Structure):
    _fields_ = [
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
        ("frontend_id", ct.c_uint32),
    ]


class AffinityKey(ct.Structure):
    _fields_ = [
        ("netns_cookie", ct.c_uint64),
        ("frontend_id", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class AffinityVal(ct.Structure):
    _fields_ = [
        ("last_used_ns", ct.c_uint64),
        ("backend_id", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class RnatKey(ct.Structure):
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("pad2", ct.c_uint32),
    ]


class RnatVal(ct.Structure):
    _fields_ = [
        ("addr", U32x4),
        ("port", ct.c_uint16),
        ("pad", ct.c_uint16),
        ("frontend_id", ct.c_uint32),
    ]


class Flow(ct.Structure):
    _fields_ = [
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("vip", U32x4),
        ("backend_addr", U32x4),
        ("vip_port", ct.c_uint16),
        ("backend_port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("pad", ct.c_uint8 * 3),
    ]


class SkFlow(ct.Structure):
    """struct socklb_sk_flow: the `flows` socket storage's value."""
    _fields_ = [
        ("flow", Flow),
        ("rnat_next", ct.c_uint8),
        ("rnat_used", ct.c_uint8),
        ("pad", ct.c_uint8 * 6),
        ("rnat", RnatKey * FLOW_RNAT_RING),
    ]


class ConnSlot(ct.Structure):
    """struct socklb_conn_slot: a `conn_flows` slot (cookie 0: free)."""
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("flow", Flow),
    ]


class Workload(ct.Structure):
    _fields_ = [
        ("id", ct.c_uint32),
        ("policy_set", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("pad", ct.c_uint32),
    ]


class ExemptKey(ct.Structure):
    _fields_ = [("workload_id", ct.c_uint32), ("frontend_id", ct.c_uint32)]


class PolicyFeKey(ct.Structure):
    _fields_ = [("set", ct.c_uint32), ("frontend_id", ct.c_uint32)]


class PolicyVerdict(ct.Structure):
    _fields_ = [("action", ct.c_uint32)]


class PolicyFqdnKey(ct.Structure):
    """struct socklb_policy_fqdn_key: policy_fqdns' key."""
    _fields_ = [("set", ct.c_uint32), ("pattern", ct.c_uint32)]


class PolicyPrefixKey(ct.Structure):
    _fields_ = [
        ("prefixlen", ct.c_uint32),
        ("set", ct.c_uint32),
        ("addr", ct.c_ubyte * 16),
    ]


class PortRule(ct.Structure):
    _fields_ = [
        ("port", ct.c_uint16),
        ("end_port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("action", ct.c_uint8),
        ("pad", ct.c_uint16),
    ]


class PolicyRules(ct.Structure):
    _fields_ = [("n", ct.c_uint32), ("rules", PortRule * PORT_RULES_MAX)]


class PolicyCfg(ct.Structure):
    _fields_ = [
        ("cgroups", ct.c_uint32),
        ("min_level", ct.c_uint8),
        ("max_level", ct.c_uint8),
        ("flags", ct.c_uint8),
        ("pad", ct.c_uint8),
    ]


class FlowRecord(ct.Structure):
    """struct socklb_flow_rec of bpf/flows.h: what the flow reader emits."""
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("vip", U32x4),
        ("backend_addr", U32x4),
        ("vip_port", ct.c_uint16),
        ("backend_port", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
        ("family", ct.c_uint16),
    ]


class FlowCountKey(ct.Structure):
    """struct socklb_flow_count_key of bpf/flows.h: key of the flow_counts map."""
    _fields_ = [
        ("frontend_id", ct.c_uint32),
        ("backend_addr", U32x4),
        ("backend_port", ct.c_uint16),
        ("pad", ct.c_uint16),
    ]


FLOW_COUNTS_MAX = 65536


# --- bpf/sock_destroy.h: socket termination ----------------------------------

TERM_TARGETS_MAX = 16384  # max_entries of `targets`
TERM_DSTS_MAX = 16384     # max_entries of `dsts`
TERM_CGROUPS_MAX = 65536  # max_entries of `cgroups` and `judge_sets`
TERM_COOKIES_MAX = 131072  # max_entries of `cookies`
TERM_NOT_TRIED = 1        # TermRec.result of a socket not destroyed here (dry run)
TERM_F_DSTS = 1           # TermCfg.flags: prefilter on the `dsts` map
TERM_F_ALL_CGROUPS = 2    # TermCfg.flags: the socket programs select every cgroup
TERM_F_COOKIES = 4        # TermCfg.flags: the socket programs select by `cookies`


class TermMode(enum.IntEnum):
    """TermCfg.mode."""
    DESTROY = 0
    DRY_RUN = 1
    STATS = 2


class TermKind(enum.IntEnum):
    """TermRec.target_kind: which key of `targets` matched."""
    EXACT = 1      # {frontend, backend}
    BACKEND = 2    # {0, backend}
    FRONTEND = 3   # {frontend, 0}


class TermKey(ct.Structure):
    _fields_ = [("frontend_id", ct.c_uint32), ("backend_id", ct.c_uint32)]


class TermVal(ct.Structure):
    _fields_ = [("matched", ct.c_uint64), ("destroyed", ct.c_uint64), ("failed", ct.c_uint64)]


class TermCfg(ct.Structure):
    _fields_ = [("mode", ct.c_uint32), ("flags", ct.c_uint32)]


class TermDst(ct.Structure):
    _fields_ = [("addr", ct.c_ubyte * 16), ("port", ct.c_uint16), ("pad", ct.c_uint16)]


class TermRec(ct.Structure):
    """struct socklb_term_rec: one matched socket."""
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("src", U32x4),
        ("dst", U32x4),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("family", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("result", ct.c_int32),
        ("target_kind", ct.c_uint32),
    ]


class TermSockRec(ct.Structure):
    """struct socklb_term_sock_rec: one socket a socket program selected."""
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("cgroup_id", ct.c_uint64),
        ("src", U32x4),
        ("dst", U32x4),
        ("vip", U32x4),
        ("sport", ct.c_uint16),
        ("dport", ct.c_uint16),
        ("vip_port", ct.c_uint16),
        ("family", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
        ("pad", ct.c_uint16),
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("result", ct.c_int32),
    ]


class JudgeStats(ct.Structure):
    """struct socklb_judge_stats: what a run of the judge programs looked at."""
    _fields_ = [("judged", ct.c_uint64), ("denied", ct.c_uint64)]


# --- bpf/sock_stats.h: socket statistics --------------------------------------

class StatRec(ct.Structure):
    """struct socklb_stat_rec: one counted socket."""
    _fields_ = [
        ("cookie", ct.c_uint64),
        ("bytes_sent", ct.c_uint64),
        ("bytes_received", ct.c_uint64),
        ("frontend_id", ct.c_uint32),
        ("backend_id", ct.c_uint32),
        ("srtt_us", ct.c_uint32),
        ("retransmits", ct.c_uint32),
        ("drops", ct.c_uint32),
        ("family", ct.c_uint16),
        ("proto", ct.c_uint8),
        ("state", ct.c_uint8),
    ]


# --- bpf/dns.h: the DNS learner -------------------------------------------------

DNS_MSG_MAX = 8192
DNS_NAME_MAX = 255
DNS_HOPS_MAX = 16
DNS_RRS_MAX = 64
DNS_LEARN_MAX = 32
DNS_CHAIN_MAX = 8
DNS_WORKLOADS_MAX = 65536
DNS_SERVERS_MAX = 4096
DNS_PATTERNS_MAX = 65536
DNS_QUERY_SLOTS = 4
DNS_LEARNED_MAX = 262144
DNS_LEARNED_SLOTS = 4
DNS_SOCKS_MAX = 65536
DNS_SET_ANY = 0


class DnsKind(enum.IntFlag):
    EXACT = 1
    ONE_LABEL = 2
    ANY_DEPTH = 4


class DnsCounter(enum.IntEnum):
    QUERIES = 0
    QUERIES_IGNORED = 1
    ANSWERS = 2
    UNSOLICITED = 3
    MALFORMED = 4
    TRUNCATED = 5
    LEARNED = 6
    TCP_SOCKETS = 7
    TCP_MESSAGES = 8
    PRUNED = 9
    REPLACED = 10


DNS_COUNTER_MAX = len(DnsCounter)


class DnsWorkload(ct.Structure):
    """struct socklb_dns_workload: cgroup id -> workload and FQDN set."""
    _fields_ = [("id", ct.c_uint32), ("set", ct.c_uint32)]


class DnsServer(ct.Structure):
    """struct socklb_dns_server: a server a set may learn from."""
    _fields_ = [("set", ct.c_uint32), ("port", ct.c_uint16), ("pad", ct.c_uint16), ("addr", U32x4)]


class DnsPatternKey(ct.Structure):
    _fields_ = [("set", ct.c_uint32), ("pad", ct.c_uint32), ("hash", ct.c_uint64)]


class DnsPatternVal(ct.Structure):
    _fields_ = [("kinds", ct.c_uint32), ("exact", ct.c_uint32), ("one_label", ct.c_uint32),
                ("any_depth", ct.c_uint32)]


class DnsQuery(ct.Structure):
    """struct socklb_dns_query: one outstanding query slot of a socket."""
    _fields_ = [("sent_ns", ct.c_uint64), ("name_hash", ct.c_uint64), ("server", U32x4), ("port", ct.c_uint16),
                ("txid", ct.c_uint16), ("qtype", ct.c_uint16), ("pad", ct.c_uint16), ("workload", ct.c_uint32),
                ("set", ct.c_uint32), ("pattern", ct.c_uint32), ("pad2", ct.c_uint32)]


class DnsQueries(ct.Structure):
    """struct socklb_dns_queries: a socket's storage in `dns_queries`."""
    _fields_ = [("slots", DnsQuery * DNS_QUERY_SLOTS)]


class DnsLearnedKey(ct.Structure):
    _fields_ = [("workload", ct.c_uint32), ("pad", ct.c_uint32), ("addr", U32x4)]


class DnsLearnedSlot(ct.Structure):
    _fields_ = [("expiry_ns", ct.c_uint64), ("pattern", ct.c_uint32), ("ttl", ct.c_uint32)]


class DnsLearnedVal(ct.Structure):
    _fields_ = [("name_hash", ct.c_uint64), ("slots", DnsLearnedSlot * DNS_LEARNED_SLOTS)]


class DnsCfg(ct.Structure):
    _fields_ = [("ttl_cap", ct.c_uint32), ("grace", ct.c_uint32), ("query_window", ct.c_uint32),
                ("pad", ct.c_uint32)]


# --- what the layout test compares --------------------------------------------

# The headers (in bpf/) of everything below.
HEADERS = ("socklb.h", "flows.h", "sock_destroy.h", "sock_stats.h", "dns.h")

# Every struct of those headers, by its C name.
STRUCTS: dict[str, type[ct.Structure]] = {
    "socklb_svc_key": SvcKey,
    "socklb_svc_val": SvcVal,
    "socklb_backend": Backend,
    "socklb_affinity_key": AffinityKey,
    "socklb_affinity_val": AffinityVal,
    "socklb_rnat_key": RnatKey,
    "socklb_rnat_val": RnatVal,
    "socklb_flow": Flow,
    "socklb_sk_flow": SkFlow,
    "socklb_conn_slot": ConnSlot,
    "socklb_workload": Workload,
    "socklb_policy_fe_key": PolicyFeKey,
    "socklb_policy_verdict": PolicyVerdict,
    "socklb_policy_prefix_key": PolicyPrefixKey,
    "socklb_port_rule": PortRule,
    "socklb_policy_rules": PolicyRules,
    "socklb_policy_fqdn_key": PolicyFqdnKey,
    "socklb_policy_cfg": PolicyCfg,
    "socklb_exempt_key": ExemptKey,
    "socklb_flow_rec": FlowRecord,
    "socklb_flow_count_key": FlowCountKey,
    "socklb_term_key": TermKey,
    "socklb_term_val": TermVal,
    "socklb_term_cfg": TermCfg,
    "socklb_term_dst": TermDst,
    "socklb_term_rec": TermRec,
    "socklb_term_sock_rec": TermSockRec,
    "socklb_judge_stats": JudgeStats,
    "socklb_stat_rec": StatRec,
    "socklb_dns_workload": DnsWorkload,
    "socklb_dns_server": DnsServer,
    "socklb_dns_pattern_key": DnsPatternKey,
    "socklb_dns_pattern_val": DnsPatternVal,
    "socklb_dns_query": DnsQuery,
    "socklb_dns_queries": DnsQueries,
    "socklb_dns_learned_key": DnsLearnedKey,
    "socklb_dns_learned_slot": DnsLearnedSlot,
    "socklb_dns_learned_val": DnsLearnedVal,
    "socklb_dns_cfg": DnsCfg,
}

# Every enum of those headers: C name -> (mirror, prefix of its C constants).
ENUMS: dict[str, tuple[type[enum.IntEnum], str]] = {
    "socklb_selection": (Selection, "SOCKLB_SEL_"),
    "socklb_backend_state": (BackendState, "SOCKLB_BE_"),
    "socklb_counter": (Counter, "SOCKLB_CNT_"),
    "socklb_meta": (Meta, "SOCKLB_META_"),
    "socklb_policy_action": (PolicyAction, "SOCKLB_POL_"),
    "socklb_workload_flag": (WorkloadFlag, "SOCKLB_WL_"),
    "socklb_table": (Table, "SOCKLB_TABLE_"),
    "socklb_svc_flag": (SvcFlag, "SOCKLB_SVC_F_"),
    "socklb_term_mode": (TermMode, "SOCKLB_TERM_"),
    "socklb_term_kind": (TermKind, "SOCKLB_TERM_KIND_"),
    "socklb_dns_kind": (DnsKind, "SOCKLB_DNS_"),
    "socklb_dns_counter": (DnsCounter, "SOCKLB_DNS_CNT_"),
}

# Every numeric #define of those headers.
CONSTANTS: dict[str, int] = {
    "SOCKLB_SERVICES_MAX": SERVICES_MAX,
    "SOCKLB_BACKENDS_MAX": BACKENDS_MAX,
    "SOCKLB_AFFINITY_MAX": AFFINITY_MAX,
    "SOCKLB_REV_NAT_MAX": REV_NAT_MAX,
    "SOCKLB_FLOW_RNAT_RING": FLOW_RNAT_RING,
    "SOCKLB_CONN_SLOTS": CONN_SLOTS,
    "SOCKLB_CONN_PROBE": CONN_PROBE,
    "SOCKLB_LAYOUT_VERSION": LAYOUT_VERSION,
    "SOCKLB_WORKLOAD_IDS_MAX": WORKLOAD_IDS_MAX,
    "SOCKLB_WORKLOAD_CGROUPS_MAX": WORKLOAD_CGROUPS_MAX,
    "SOCKLB_POLICY_FRONTENDS_MAX": POLICY_FRONTENDS_MAX,
    "SOCKLB_POLICY_PREFIXES_MAX": POLICY_PREFIXES_MAX,
    "SOCKLB_POLICY_FQDNS_MAX": POLICY_FQDNS_MAX,
    "SOCKLB_PORT_RULES_MAX": PORT_RULES_MAX,
    "SOCKLB_CGROUP_DEPTH_MAX": CGROUP_DEPTH_MAX,
    "SOCKLB_POL_SET_V4": POL_SET_V4,
    "SOCKLB_REDIRECT_EXEMPT_MAX": REDIRECT_EXEMPT_MAX,
    "SOCKLB_CFG_F_EXEMPT_ONLY": CFG_F_EXEMPT_ONLY,
    "SOCKLB_FLOW_COUNTS_MAX": FLOW_COUNTS_MAX,
    "SOCKLB_TERM_TARGETS_MAX": TERM_TARGETS_MAX,
    "SOCKLB_TERM_DSTS_MAX": TERM_DSTS_MAX,
    "SOCKLB_TERM_NOT_TRIED": TERM_NOT_TRIED,
    "SOCKLB_TERM_CGROUPS_MAX": TERM_CGROUPS_MAX,
    "SOCKLB_TERM_COOKIES_MAX": TERM_COOKIES_MAX,
    "SOCKLB_TERM_F_DSTS": TERM_F_DSTS,
    "SOCKLB_TERM_F_ALL_CGROUPS": TERM_F_ALL_CGROUPS,
    "SOCKLB_TERM_F_COOKIES": TERM_F_COOKIES,
    "SOCKLB_DNS_MSG_MAX": DNS_MSG_MAX,
    "SOCKLB_DNS_NAME_MAX": DNS_NAME_MAX,
    "SOCKLB_DNS_HOPS_MAX": DNS_HOPS_MAX,
    "SOCKLB_DNS_RRS_MAX": DNS_RRS_MAX,
    "SOCKLB_DNS_LEARN_MAX": DNS_LEARN_MAX,
    "SOCKLB_DNS_CHAIN_MAX": DNS_CHAIN_MAX,
    "SOCKLB_DNS_WORKLOADS_MAX": DNS_WORKLOADS_MAX,
    "SOCKLB_DNS_SERVERS_MAX": DNS_SERVERS_MAX,
    "SOCKLB_DNS_PATTERNS_MAX": DNS_PATTERNS_MAX,
    "SOCKLB_DNS_QUERY_SLOTS": DNS_QUERY_SLOTS,
    "SOCKLB_DNS_LEARNED_MAX": DNS_LEARNED_MAX,
    "SOCKLB_DNS_LEARNED_SLOTS": DNS_LEARNED_SLOTS,
    "SOCKLB_DNS_SOCKS_MAX": DNS_SOCKS_MAX,
    "SOCKLB_DNS_SET_ANY": DNS_SET_ANY,
}


def record_struct(rec: type[ct.Structure]) -> struct.Struct:
    """A struct.Struct with the layout of a mirrored record, for parsing many
    of them at once (iter_unpack is several times faster than a ctypes
    object per record): one value per field in _fields_ order, integers as
    such, arrays and nested structs as raw bytes (an address: 16 bytes in
    network order), padding skipped as the offsets say."""
    codes = {ct.c_uint8: "B", ct.c_uint16: "H", ct.c_uint32: "I", ct.c_uint64: "Q",
             ct.c_int8: "b", ct.c_int16: "h", ct.c_int32: "i", ct.c_int64: "q"}
    fmt, pos = "=", 0
    for name, ctype in rec._fields_:
        off = getattr(rec, name).offset
        if off > pos:
            fmt += f"{off - pos}x"
        fmt += f"{ct.sizeof(ctype)}s" if issubclass(ctype, (ct.Array, ct.Structure)) else codes[ctype]
        pos = off + ct.sizeof(ctype)
    if ct.sizeof(rec) > pos:
        fmt += f"{ct.sizeof(rec) - pos}x"
    out = struct.Struct(fmt)
    assert out.size == ct.sizeof(rec), (rec, fmt)
    return out


# --- address and port encoding -------------------------------------------

def pack_addr(addr: str | bytes) -> U32x4:
    """16 bytes in network order; IPv4 v4-mapped, as the header says."""
    raw = addr if isinstance(addr, bytes) else addr16(addr)
    return U32x4(*struct.unpack("=4I", raw))


def unpack_addr(words: U32x4) -> str:
    return addr_text(struct.pack("=4I", *words))


def port_be(port: int) -> int:
    return socket.htons(port)


def port_host(port: int) -> int:
    return socket.ntohs(port)
