"""The Python mirror (socklb/dataplane/layout.py) of the headers user space
shares with the BPF programs (layout.HEADERS: socklb.h, flows.h,
sock_destroy.h, sock_stats.h) agrees with them: same sizes, same field
offsets, same enum values, same numeric constants (compiled by the C
compiler); and every struct, enum and numeric #define of those headers has
a mirror."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from socklb.dataplane import layout

BPF = Path(__file__).resolve().parents[2] / "bpf"
DEFINE = re.compile(r"^#define (SOCKLB_\w+)\s+(\d+)\b", re.M)


def _c_program() -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>', *(f'#include "{BPF / h}"' for h in layout.HEADERS),
             "int main(void) {", 'printf("{");']
    first = True
    for cname, pystruct in layout.STRUCTS.items():
        for field, *_ in pystruct._fields_:
            sep = "" if first else ","
            first = False
            lines.append(f'printf("{sep}\\"{cname}.{field}\\": %zu", offsetof(struct {cname}, {field}));')
        lines.append(f'printf(",\\"{cname}\\": %zu", sizeof(struct {cname}));')
    for enum_name, values in _header_enums().items():
        for name in values:
            lines.append(f'printf(",\\"{name}\\": %d", (int){name});')
    for macro in layout.CONSTANTS:
        lines.append(f'printf(",\\"{macro}\\": %lld", (long long){macro});')
    lines += ['printf("}");', "return 0; }"]
    return "\n".join(lines)


def _headers() -> str:
    return "\n".join((BPF / h).read_text() for h in layout.HEADERS)


def _header_enums() -> dict[str, list[str]]:
    enums = {}
    for name, body in re.findall(r"enum (\w+) \{(.*?)\};", _headers(), re.S):
        enums[name] = re.findall(r"^\s*(SOCKLB_\w+)", body, re.M)
    return enums


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler is needed to check the header layout")
    d = tmp_path_factory.mktemp("layout")
    src, exe = d / "layout.c", d / "layout"
    src.write_text(_c_program())
    subprocess.run([cc, "-DSOCKLB_USERSPACE", "-include", "linux/types.h", "-o", str(exe), str(src)], check=True)
    return json.loads(subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout)


@pytest.mark.parametrize("cname", sorted(layout.STRUCTS))
def test_struct_matches_header(c_layout, cname):
    pystruct = layout.STRUCTS[cname]
    assert ct_sizeof(pystruct) == c_layout[cname]
    for field, *_ in pystruct._fields_:
        assert getattr(pystruct, field).offset == c_layout[f"{cname}.{field}"], field


def ct_sizeof(s):
    import ctypes
    return ctypes.sizeof(s)


def test_enums_match_header(c_layout):
    enums = _header_enums()
    assert set(enums) == set(layout.ENUMS), "an enum of the headers has no mirror in layout.ENUMS (or the reverse)"
    for cenum, (pyenum, prefix) in layout.ENUMS.items():
        names = [n for n in enums[cenum] if not n.endswith("_MAX")]
        assert [n.removeprefix(prefix) for n in names] == [m.name for m in pyenum]
        for n in names:
            assert pyenum[n.removeprefix(prefix)] == c_layout[n]
    assert layout.COUNTER_MAX == c_layout["SOCKLB_CNT_MAX"]
    assert layout.META_MAX == c_layout["SOCKLB_META_MAX"]


def test_constants_match_header(c_layout):
    for name, value in layout.CONSTANTS.items():
        assert value == c_layout[name], name
    # every numeric #define of the headers is mirrored, with the value the
    # header spells (the compiled value is checked above)
    defined = dict(DEFINE.findall(_headers()))
    assert set(defined) == set(layout.CONSTANTS), "a #define of the headers has no mirror in layout.CONSTANTS"
    assert {k: int(v) for k, v in defined.items()} == layout.CONSTANTS


def test_addresses_round_trip():
    for a in ("127.96.0.10", "10.0.0.1", "fd00:96::10", "::1"):
        assert layout.unpack_addr(layout.pack_addr(a)) == a
    assert bytes(layout.pack_addr("1.2.3.4"))[-6:] == b"\xff\xff\x01\x02\x03\x04"


def test_every_header_struct_is_mirrored():
    declared = set(re.findall(r"^struct (\w+) \{", _headers(), re.M))
    assert declared == set(layout.STRUCTS)


@pytest.mark.parametrize("cname", sorted(layout.STRUCTS))
def test_record_struct_reads_what_ctypes_writes(cname):
    """layout.record_struct (the fast parsers' format) gives back, field by
    field, what the ctypes mirror holds."""
    import ctypes

    pystruct = layout.STRUCTS[cname]
    obj = pystruct()
    raw = bytes(i % 251 + 1 for i in range(ctypes.sizeof(pystruct)))
    ctypes.memmove(ctypes.byref(obj), raw, len(raw))
    got = layout.record_struct(pystruct).unpack(bytes(obj))
    want = []
    for field, ctype in pystruct._fields_:
        v = getattr(obj, field)
        want.append(bytes(v) if issubclass(ctype, (ctypes.Array, ctypes.Structure)) else v)
    assert list(got) == want


def test_sockstats_parser_agrees_with_the_mirror():
    from socklb.dataplane import sockstats

    values = {"cookie": 77, "bytes_sent": 1000, "bytes_received": 20, "frontend_id": 3, "backend_id": 4,
              "srtt_us": 55, "retransmits": 1, "drops": 2, "family": 2, "proto": 6, "state": 1}
    rec = layout.StatRec(**values)
    got = sockstats.parse(bytes(rec) * 2 + b"\0" * 5, "net:[9]")  # a torn tail is ignored
    assert len(got) == 2
    assert got[0] == sockstats.SocketSample("net:[9]", 77, 3, 4, "tcp", 2, 1, 1000, 20, 55, 1, 2)


def test_flow_record_parser_agrees_with_the_mirror():
    from socklb.dataplane import flows

    values = {"cookie": 0x1122334455667788, "frontend_id": 7, "backend_id": 9,
              "vip_port": 0x5000, "backend_port": 0x901F, "proto": 17, "state": 1, "family": 10}
    rec = layout.FlowRecord(**values)
    rec.vip = layout.pack_addr("127.96.0.10")
    rec.backend_addr = layout.pack_addr("fd00::2")
    parsed = flows.parse(bytes(rec) * 2 + b"\0" * 5)  # a torn tail is ignored
    assert len(parsed) == 2
    got = parsed[0]._asdict()
    assert got == {**values, "vip": layout.addr16("127.96.0.10"), "backend_addr": layout.addr16("fd00::2")}
    assert list(got) == [name for name, _ in layout.FlowRecord._fields_]


def test_policy_maps_hold_the_node_limits_twice():
    """The policy maps hold what limits.py lets a node take, twice over (an
    update writes the new entries before it deletes the old ones), and the
    kernel walks as many rules and cgroup levels as the limits allow."""
    from socklb.lb import limits
    from socklb.v1 import policy_pb2

    assert layout.PORT_RULES_MAX == limits.MAX_PORT_RULES
    assert layout.CGROUP_DEPTH_MAX == limits.MAX_CGROUP_DEPTH
    assert layout.WORKLOAD_IDS_MAX >= 2 * limits.MAX_WORKLOADS_PER_NODE
    assert layout.WORKLOAD_CGROUPS_MAX >= 2 * limits.MAX_WORKLOADS_PER_NODE
    assert layout.POLICY_FRONTENDS_MAX >= 2 * limits.MAX_FRONTEND_VERDICTS_PER_NODE
    assert layout.POLICY_PREFIXES_MAX >= 2 * limits.MAX_PREFIXES_PER_NODE
    assert layout.POLICY_FQDNS_MAX >= 2 * limits.MAX_FQDN_PATTERNS_PER_NODE
    assert layout.DNS_PATTERNS_MAX >= 2 * limits.MAX_FQDN_PATTERNS_PER_NODE
    assert layout.DNS_SERVERS_MAX >= 2 * limits.MAX_DNS_SERVERS_PER_NODE
    assert {a.name: int(a) for a in layout.PolicyAction} == {
        n.removeprefix("ACTION_"): v for n, v in policy_pb2.Action.items() if v}
