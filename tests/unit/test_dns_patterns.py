"""The pure parts of the DNS learner's user side (socklb/dataplane/dns.py):
names in wire form, the two hashes the kernel computes, name patterns
(Cilium's `*` and `**.`; anything else refused), the entries of
`dns_patterns`, and the reference matcher. The kernel side is checked on a
real kernel by tests/kernel/test_kernel_dns.py."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from socklb.dataplane import dns, layout


def fnv1a_reference(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) % 2**64
    return h


def test_wire_form():
    assert dns.wire("Api.Example.COM.") == b"\x03api\x07example\x03com\x00"
    assert dns.wire("") == dns.wire(".") == b"\x00"
    assert len(dns.wire(".".join(["a" * 63] * 3 + ["b" * 61]))) == 255
    with pytest.raises(dns.PatternError):
        dns.wire(".".join(["a" * 63] * 3 + ["b" * 62]))  # 256 bytes
    with pytest.raises(dns.PatternError):
        dns.wire("a" * 64 + ".com")
    with pytest.raises(dns.PatternError):
        dns.wire("a..com")


def test_hashes_are_fnv1a_of_the_wire_form_front_to_back_and_back_to_front():
    w = b"\x03api\x07example\x03com\x00"
    assert dns.name_hash("API.example.com") == fnv1a_reference(w)
    assert dns.suffix_hash("api.example.com") == fnv1a_reference(w[::-1])
    # the suffix hash of a suffix is a prefix of the whole name's reversed stream
    assert dns.suffix_hash("com") == fnv1a_reference(b"\x00moc\x03")
    assert dns.suffix_hash("") == fnv1a_reference(b"\x00")
    assert dns.fnv1a(b"") == 0xCBF29CE484222325


@pytest.mark.parametrize("text,kind,suffix", [
    ("api.example.com", layout.DnsKind.EXACT, "api.example.com"),
    ("API.Example.com.", layout.DnsKind.EXACT, "api.example.com"),
    ("*.example.com", layout.DnsKind.ONE_LABEL, "example.com"),
    ("**.example.com", layout.DnsKind.ANY_DEPTH, "example.com"),
    ("*", layout.DnsKind.ANY_DEPTH, ""),
    ("*.", layout.DnsKind.ANY_DEPTH, ""),   # the final dot ignored
    ("**", layout.DnsKind.ANY_DEPTH, ""),   # the same set as `*`
    ("*.com", layout.DnsKind.ONE_LABEL, "com"),
    ("_srv.example-1.com", layout.DnsKind.EXACT, "_srv.example-1.com"),
])
def test_patterns(text, kind, suffix):
    p = dns.parse_pattern(text)
    assert (p.kind, p.suffix) == (kind, suffix)


@pytest.mark.parametrize("text", ["api-*.example.com", "a.*.example.com", "*example.com", "***.a.com",
                                  "*.*.example.com", "", "a b.com", "-a.com", "a..com", "é.com",
                                  "a" * 64 + ".com"])
def test_refused_patterns_name_the_pattern(text):
    with pytest.raises(dns.PatternError) as e:
        dns.parse_pattern(text)
    assert repr(text) in str(e.value)


@pytest.mark.parametrize("pattern,name,ok", [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.EXAMPLE.COM.", True),
    ("api.example.com", "x.api.example.com", False),
    ("*.example.com", "api.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.b.example.com", False),
    ("**.example.com", "api.example.com", True),
    ("**.example.com", "a.b.c.example.com", True),
    ("**.example.com", "example.com", False),
    ("**.example.com", "badexample.com", False),
    ("*", "anything.at.all", True),
])
def test_matches_as_docs_fqdn_says(pattern, name, ok):
    assert dns.matches(pattern, name) is ok


def test_pattern_entries_share_a_suffix_key():
    entries = dns.pattern_entries(3, {"example.com": 1, "*.example.com": 2, "**.example.com": 3, "api.x.com": 4})
    key = (3, dns.suffix_hash("example.com"))
    val = entries[key]
    assert val.kinds == int(layout.DnsKind.EXACT | layout.DnsKind.ONE_LABEL | layout.DnsKind.ANY_DEPTH)
    assert (val.exact, val.one_label, val.any_depth) == (1, 2, 3)
    assert entries[(3, dns.suffix_hash("api.x.com"))].exact == 4
    assert len(entries) == 2
    with pytest.raises(dns.PatternError):
        dns.pattern_entries(3, {"a.com": 0})
    with pytest.raises(dns.PatternError):
        dns.pattern_entries(3, {"a-*.com": 1})


def test_tcp_switch_values():
    assert dns.tcp_refused("off") == "forced"
    assert dns.tcp_refused("auto") is None and dns.tcp_refused("sockmap") is None
    with pytest.raises(dns.DnsError):
        dns.tcp_refused("maybe")


labels = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=8)


@given(st.lists(labels, min_size=1, max_size=5), st.lists(labels, min_size=0, max_size=3))
def test_suffix_hash_of_a_suffix_matches_the_kernel_walk(suffix, prefix):
    """The kernel hashes the question back to front and looks up each label
    boundary: the hash there is suffix_hash(the suffix)."""
    name = ".".join(prefix + suffix)
    w = dns.wire(name)
    start = len(dns.wire(".".join(prefix + suffix))) - len(dns.wire(".".join(suffix)))
    assert fnv1a_reference(w[start:][::-1]) == dns.suffix_hash(".".join(suffix))
