"""The Python mirror of bpf/socklb.h agrees with the C header: same sizes,
same field offsets, same enum values (compiled by the C compiler)."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from socklb.dataplane import layout

BPF = Path(__file__).resolve().parents[2] / "bpf"
HEADER = BPF / "socklb.h"


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
    for macro in ("SOCKLB_FLOW_RNAT_RING", "SOCKLB_LAYOUT_VERSION", "SOCKLB_SERVICES_MAX",
                  "SOCKLB_BACKENDS_MAX", "SOCKLB_AFFINITY_MAX", "SOCKLB_REV_NAT_MAX", "SOCKLB_FLOW_COUNTS_MAX"):
        lines.append(f'printf(",\\"{macro}\\": %d", (int){macro});')
    lines += ['printf("}");', "return 0; }"]
    return "\n".join(lines)


def _header_enums() -> dict[str, list[str]]:
    text = HEADER.read_text()
    enums = {}
    for name, body in re.findall(r"enum (\w+) \{(.*?)\};", text, re.S):
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
    py = {
        "socklb_selection": (layout.Selection, "SOCKLB_SEL_"),
        "socklb_backend_state": (layout.BackendState, "SOCKLB_BE_"),
        "socklb_counter": (layout.Counter, "SOCKLB_CNT_"),
        "socklb_meta": (layout.Meta, "SOCKLB_META_"),
    }
    assert set(enums) == set(py)
    for cenum, (pyenum, prefix) in py.items():
        names = [n for n in enums[cenum] if not n.endswith("_MAX")]
        assert [n.removeprefix(prefix) for n in names] == [m.name for m in pyenum]
        for n in names:
            assert pyenum[n.removeprefix(prefix)] == c_layout[n]
    assert layout.COUNTER_MAX == c_layout["SOCKLB_CNT_MAX"]
    assert layout.META_MAX == c_layout["SOCKLB_META_MAX"]


def test_constants_match_header(c_layout):
    assert layout.FLOW_RNAT_RING == c_layout["SOCKLB_FLOW_RNAT_RING"]
    assert layout.LAYOUT_VERSION == c_layout["SOCKLB_LAYOUT_VERSION"]
    assert layout.SERVICES_MAX == c_layout["SOCKLB_SERVICES_MAX"]
    assert layout.BACKENDS_MAX == c_layout["SOCKLB_BACKENDS_MAX"]
    assert layout.AFFINITY_MAX == c_layout["SOCKLB_AFFINITY_MAX"]
    assert layout.REV_NAT_MAX == c_layout["SOCKLB_REV_NAT_MAX"]
    assert layout.FLOW_COUNTS_MAX == c_layout["SOCKLB_FLOW_COUNTS_MAX"]


def test_addresses_round_trip():
    for a in ("127.96.0.10", "10.0.0.1", "fd00:96::10", "::1"):
        assert layout.unpack_addr(layout.pack_addr(a)) == a
    assert bytes(layout.pack_addr("1.2.3.4"))[-6:] == b"\xff\xff\x01\x02\x03\x04"


def test_every_header_struct_is_mirrored():
    declared = set()
    for h in layout.HEADERS:
        declared |= set(re.findall(r"^struct (\w+) \{", (BPF / h).read_text(), re.M))
    assert declared == set(layout.STRUCTS)


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
