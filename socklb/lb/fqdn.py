"""FQDN name patterns (issue 13): the syntax both planes check, the API when
a policy is written and the node when it programs the DNS learner, and the
reference of the kernel's matching. Pure.

Cilium's `matchPattern` semantics, case-insensitive, a final dot ignored:
`api.example.com` the name itself; `*.example.com` exactly one label before
example.com; `**.example.com` one or more labels before it; `*` (or `**`)
every name. A `*` anywhere else (`api-*.example.com`, `a.*.example.com`) is
refused rather than matched differently (Calico's `*.x` is `**.x` here).
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["Kind", "Pattern", "PatternError", "NAME_MAX", "wire", "parse_pattern", "canonical_pattern",
           "matches", "covers", "covering", "fnv1a", "pattern_id", "FNV_OFFSET", "FNV_PRIME"]

NAME_MAX = 255  # wire length of a name (RFC 1035); bpf/dns.h SOCKLB_DNS_NAME_MAX

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?$")


class Kind(enum.IntFlag):
    """The kinds of pattern, as bpf/dns.h's enum socklb_dns_kind."""
    EXACT = 1      # api.example.com
    ONE_LABEL = 2  # *.example.com
    ANY_DEPTH = 4  # **.example.com, *


class PatternError(ValueError):
    """A name pattern the learner cannot match (the message quotes it)."""


def wire(name: str) -> bytes:
    """The lowercased wire form of a name (labels, then the root byte);
    "" or "." is the root."""
    name = name.strip().lower().rstrip(".")
    out = bytearray()
    for label in name.split(".") if name else ():
        try:
            raw = label.encode("ascii")
        except UnicodeEncodeError:
            raise PatternError(f"{name!r}: not ASCII (write an internationalized name in its xn-- form)") from None
        if not 1 <= len(raw) <= 63:
            raise PatternError(f"{name!r}: a label has 1 to 63 characters")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > NAME_MAX:
        raise PatternError(f"{name!r}: longer than {NAME_MAX} bytes in wire form")
    return bytes(out)


@dataclass(frozen=True)
class Pattern:
    text: str    # as given
    kind: Kind
    suffix: str  # the name after the wildcard, lowercased, no final dot ("" for the root)

    @property
    def canonical(self) -> str:
        """The one spelling of the pattern: lowercase, no final dot, `*` for `**`."""
        if self.kind == Kind.EXACT:
            return self.suffix
        star = "*" if self.kind == Kind.ONE_LABEL else "**"
        return f"{star}.{self.suffix}" if self.suffix else "*"


def parse_pattern(text: str) -> Pattern:
    """`name`, `*.name`, `**.name` or `*`; case-insensitive."""
    p = text.strip().lower().rstrip(".")
    if p == "*" or p == "**":
        return Pattern(text, Kind.ANY_DEPTH, "")
    if p.startswith("**."):
        kind, rest = Kind.ANY_DEPTH, p[3:]
    elif p.startswith("*."):
        kind, rest = Kind.ONE_LABEL, p[2:]
    else:
        kind, rest = Kind.EXACT, p
    if not rest:
        raise PatternError(f"{text!r}: no name")
    if "*" in rest:
        raise PatternError(f"{text!r}: a wildcard stands only as the first label (`*.` or `**.`); "
                           "one inside a label or further right is not supported")
    for label in rest.split("."):
        if not _LABEL.match(label):
            raise PatternError(f"{text!r}: label {label!r} is not a DNS label (letters, digits, '-', '_')")
    wire(rest)  # length checks
    return Pattern(text, kind, rest)


def canonical_pattern(text: str) -> str:
    """The canonical spelling of a valid pattern; text that is none comes
    back unchanged (for validation to name)."""
    try:
        return parse_pattern(text).canonical
    except PatternError:
        return text


def _labels(name: str) -> list[str]:
    return [x for x in name.strip().lower().rstrip(".").split(".") if x]


def matches(pattern: str, name: str) -> bool:
    """The reference of the kernel's matching (for tests and tools)."""
    pat = parse_pattern(pattern)
    labels = _labels(name)
    suffix = _labels(pat.suffix)
    if len(labels) < len(suffix) or labels[len(labels) - len(suffix):] != suffix:
        return False
    extra = len(labels) - len(suffix)
    if pat.kind == Kind.EXACT:
        return extra == 0
    if pat.kind == Kind.ONE_LABEL:
        return extra == 1
    return extra >= 1


def covers(outer: Pattern, inner: Pattern) -> bool:
    """Whether every name `inner` matches, `outer` matches too (a pattern
    covers itself). What flattening the port rules of patterns needs: the
    kernel learns an address under the most specific pattern the name
    matched, which must carry the rules of every pattern matching it."""
    if outer == inner or (outer.kind, outer.suffix) == (inner.kind, inner.suffix):
        return True
    o, i = _labels(outer.suffix), _labels(inner.suffix)
    if len(i) < len(o) or i[len(i) - len(o):] != o:
        return False
    extra = len(i) - len(o)  # labels of inner's suffix beyond outer's
    if outer.kind == Kind.EXACT:
        return False  # only itself (handled above)
    if outer.kind == Kind.ONE_LABEL:
        return inner.kind == Kind.EXACT and extra == 1
    # ANY_DEPTH: names with one or more labels before its suffix
    if inner.kind == Kind.EXACT:
        return extra >= 1
    return True  # *.t or **.t with t equal to or below outer's suffix


def covering(pat: Pattern) -> list[Pattern]:
    """The patterns (by kind and suffix) that cover `pat`, itself included:
    what `covers` says, listed from the pattern's labels (one per suffix)."""
    labels = _labels(pat.suffix)
    out = [Pattern(pat.text, pat.kind, pat.suffix)]
    if pat.kind == Kind.EXACT:
        if labels:
            out.append(Pattern("", Kind.ONE_LABEL, ".".join(labels[1:])))
        out += [Pattern("", Kind.ANY_DEPTH, ".".join(labels[k:])) for k in range(1, len(labels) + 1)]
    else:
        out += [Pattern("", Kind.ANY_DEPTH, ".".join(labels[k:])) for k in range(0, len(labels) + 1)]
    return list({(p.kind, p.suffix): p for p in out}.values())


# --- hashes (the kernel's, bpf/dns.h) ------------------------------------------

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
_MASK64 = (1 << 64) - 1


def fnv1a(data) -> int:
    """64-bit FNV-1a of an iterable of bytes."""
    h = FNV_OFFSET
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & _MASK64
    return h


def pattern_id(pattern: str) -> int:
    """A pattern's id (`dns_learned` slots, `policy_fqdns` keys): FNV-1a of
    its canonical text folded to 32 bits, never 0; the same on every node
    and after a restart (the node judge finds a learned slot's pattern in a
    set by it)."""
    h = fnv1a(parse_pattern(pattern).canonical.encode())
    return ((h ^ (h >> 32)) & 0xFFFFFFFF) or 1
