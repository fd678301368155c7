"""What the DNS learner (bpf/dns.bpf.c) should learn from one exchange, by
its documented rules written again plainly in Python (the fuzz test's
oracle), and the generator of the fuzz test's answers and mutations.

    learn(query_wire, answer_wire, patterns) -> {address: pattern id}
    gen = Generator(random.Random(seed)); q = gen.query(); r = gen.answer(q)

Rules (docs/fqdn.md): the query has one question of class IN, type A or
AAAA, whose name matches a pattern; the answer is at least 12 and less than
SOCKLB_DNS_MSG_MAX bytes, QR set, opcode 0, the query's id, no TC, one
question equal to the query's (case-insensitive), RCODE 0, at most
SOCKLB_DNS_RRS_MAX records which all fit and end the message; names decode
with pointers strictly before the run they end, at most
SOCKLB_DNS_HOPS_MAX pointers, labels of 1..63 bytes, 255 bytes in all;
A/AAAA records of any section have 4/16 bytes of data; in the answer
section, class IN records owned by a chain name (the question, then CNAME
targets, at most SOCKLB_DNS_CHAIN_MAX names) extend the chain or, when of
the question's type, teach their address (the first SOCKLB_DNS_LEARN_MAX).
"""
from __future__ import annotations

import ipaddress
import random
import struct

from socklb.dataplane import dns, layout

A, CNAME, AAAA, TXT = 1, 5, 28, 16


def read_name(m: bytes, off: int):
    """(lowercased wire form, labels, offset after the name) or None."""
    pos = run_start = off
    end = None
    out = bytearray()
    labels = []
    hops = 0
    while True:
        if pos >= len(m):
            return None
        b = m[pos]
        if b == 0:
            out.append(0)
            return bytes(out), labels, pos + 1 if end is None else end
        if b & 0xC0 == 0xC0:
            if pos + 1 >= len(m):
                return None
            tgt = ((b & 0x3F) << 8) | m[pos + 1]
            hops += 1
            if tgt >= run_start or hops > layout.DNS_HOPS_MAX:
                return None
            if end is None:
                end = pos + 2
            pos = run_start = tgt
            continue
        if b & 0xC0:
            return None
        if len(out) + b + 2 > layout.DNS_NAME_MAX or pos + b >= len(m):
            return None
        label = m[pos + 1:pos + 1 + b].lower()
        out += bytes([b]) + label
        labels.append(label)
        pos += b + 1


def match(labels: list[bytes], patterns: dict[str, int]) -> int:
    """The pattern id the kernel picks: exact, else one label, else the
    any-depth pattern of the longest suffix."""
    best, rank = 0, -1
    for text, pid in patterns.items():
        p = dns.parse_pattern(text)
        suffix = [x.encode() for x in p.suffix.split(".") if x]
        if len(labels) < len(suffix) or labels[len(labels) - len(suffix):] != suffix:
            continue
        extra = len(labels) - len(suffix)
        r = -1
        if p.kind == layout.DnsKind.EXACT and extra == 0:
            r = 10_000
        elif p.kind == layout.DnsKind.ONE_LABEL and extra == 1:
            r = 5_000
        elif p.kind == layout.DnsKind.ANY_DEPTH and extra >= 1:
            r = len(suffix)
        if r > rank:
            best, rank = pid, r
    return best


def _addr(data: bytes) -> str:
    if len(data) == 4:
        return str(ipaddress.IPv4Address(data))
    a = ipaddress.IPv6Address(data)
    return str(a.ipv4_mapped) if a.ipv4_mapped else str(a)


def learn(q: bytes, r: bytes, patterns: dict[str, int]) -> dict[str, int]:
    # the query, as the egress program records it
    if len(q) < 12 or struct.unpack_from("!H", q, 2)[0] & 0xF800 or struct.unpack_from("!H", q, 4)[0] != 1:
        return {}
    qn = read_name(q, 12)
    if qn is None or qn[2] + 4 > len(q):
        return {}
    qtype, qclass = struct.unpack_from("!HH", q, qn[2])
    if qclass != 1 or qtype not in (A, AAAA):
        return {}
    pattern = match(qn[1], patterns)
    if not pattern:
        return {}
    # the answer
    if not 12 <= len(r) < layout.DNS_MSG_MAX or r[:2] != q[:2]:
        return {}
    flags, qd, an, ns, ar = struct.unpack_from("!HHHHH", r, 2)
    if not flags & 0x8000 or flags & 0x7800 or flags & 0x0200:
        return {}
    total = an + ns + ar
    if qd != 1 or total > layout.DNS_RRS_MAX:
        return {}
    n = read_name(r, 12)
    if n is None or n[2] + 4 > len(r) or n[0] != qn[0] or struct.unpack_from("!HH", r, n[2]) != (qtype, 1):
        return {}
    if flags & 0x000F:
        return {}
    chain = [qn[0]]
    addrs: list[str] = []
    pos = n[2] + 4
    for i in range(total):
        owner = read_name(r, pos)
        if owner is None or owner[2] + 10 > len(r):
            return {}
        rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", r, owner[2])
        rd = owner[2] + 10
        if rd + rdlen > len(r) or (rtype == A and rdlen != 4) or (rtype == AAAA and rdlen != 16):
            return {}
        pos = rd + rdlen
        if i >= an or rclass != 1 or owner[0] not in chain:
            continue
        if rtype == CNAME:
            t = read_name(r, rd)
            if t is None or t[2] != rd + rdlen:
                return {}
            if len(chain) < layout.DNS_CHAIN_MAX and t[0] not in chain:
                chain.append(t[0])
        elif rtype == qtype and len(addrs) < layout.DNS_LEARN_MAX:
            addrs.append(_addr(r[rd:rd + rdlen]))
    if pos != len(r):
        return {}
    return {a: pattern for a in addrs}


# --- the fuzz generator ----------------------------------------------------------------

NAMES = ["a.fz.test", "b.c.fz.test", "x.one.fz.test", "y.x.one.fz.test", "exact.fz.test", "fz.test",
         "one.fz.test", "other.test", "a.fz.testx", "deep.d.e.f.g.fz.test"]


def _case(rng: random.Random, name: str) -> str:
    return "".join(ch.upper() if rng.random() < 0.3 else ch for ch in name)


class Generator:
    """Queries of names near the patterns, answers with CNAME chains and
    several addresses (each address used once), most of them mutated."""

    def __init__(self, rng: random.Random, mutate_rate: float = 0.75):
        self.rng = rng
        self.mutate_rate = mutate_rate
        self.counter = 0
        self.counts = {"answers": 0, "mutated": 0, "chains": 0}

    def stats(self) -> dict[str, int]:
        return dict(self.counts)

    def query(self, name: str | None = None) -> bytes:
        import dns.message

        rng = self.rng
        name = name or _case(rng, rng.choice(NAMES))
        q = dns.message.make_query(name, rng.choice(["A", "AAAA"]), use_edns=0 if rng.random() < 0.5 else False)
        return q.to_wire()

    def _address(self, rdtype: int) -> str:
        self.counter += 1
        c = self.counter
        if rdtype == A:
            return f"10.{(c >> 16) & 255}.{(c >> 8) & 255}.{c & 255}"
        return f"fd00:f::{c >> 16:x}:{c & 0xFFFF:x}"

    def answer(self, q: bytes) -> bytes:
        import dns.message
        import dns.name
        import dns.rrset

        rng = self.rng
        self.counts["answers"] += 1
        m = dns.message.from_wire(q)
        r = dns.message.make_response(m)
        qname = m.question[0].name
        qtype = m.question[0].rdtype
        owner = qname
        links = rng.choice([0, 0, 1, 2, 3, 9])
        if links:
            self.counts["chains"] += 1
        for k in range(links):
            target = dns.name.from_text(_case(rng, f"c{k}.{rng.choice(['cn.fz.test', 'elsewhere.test'])}"))
            r.answer.append(dns.rrset.from_text(owner, rng.randint(0, 7200), "IN", "CNAME", target.to_text()))
            owner = target
        for _ in range(rng.choice([1, 1, 2, 3, 5, 40])):
            rt = qtype if rng.random() < 0.9 else (A if qtype == AAAA else AAAA)
            r.answer.append(dns.rrset.from_text(owner, rng.randint(0, 7200), "IN", dns.rdatatype.to_text(rt),
                                                self._address(rt)))
        if rng.random() < 0.3:  # an address for a name outside the chain
            r.answer.append(dns.rrset.from_text("stray.fz.test.", 60, "IN", "A", self._address(A)))
        if rng.random() < 0.3:
            r.additional.append(dns.rrset.from_text(owner, 60, "IN", "A", self._address(A)))
        if rng.random() < 0.2:
            r.answer.append(dns.rrset.from_text(owner, 60, "IN", "TXT", '"hello"'))
        wire = bytearray(r.to_wire(max_size=65535))
        if rng.random() < self.mutate_rate:
            self.counts["mutated"] += 1
            for _ in range(rng.choice([1, 1, 1, 2, 3])):
                wire = self._mutate(wire)
        return bytes(wire)

    def _mutate(self, w: bytearray) -> bytearray:
        rng = self.rng
        if not w:
            return w
        kind = rng.randrange(10)
        i = rng.randrange(len(w))
        if kind == 0:  # flip a bit
            w[i] ^= 1 << rng.randrange(8)
        elif kind == 1:  # a random byte
            w[i] = rng.randrange(256)
        elif kind == 2 and len(w) >= 12:  # a count
            f = 4 + 2 * rng.randrange(4)
            n = struct.unpack_from("!H", w, f)[0]
            struct.pack_into("!H", w, f, rng.choice([0, 1, 2, 65, 0xFFFF, (n + 1) & 0xFFFF, max(0, n - 1)]))
        elif kind == 3:  # truncate
            del w[rng.randrange(len(w)):]
        elif kind == 4:  # junk at the end
            w += bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        elif kind == 5:  # a pointer: to itself, forward, out of bounds, or anywhere
            ptrs = [j for j in range(12, len(w) - 1) if w[j] & 0xC0 == 0xC0]
            j = rng.choice(ptrs) if ptrs else i
            if j + 1 < len(w):
                tgt = rng.choice([j, j + 2, len(w) + 5, 0x3FFF, rng.randrange(len(w)), 12])
                struct.pack_into("!H", w, j, 0xC000 | (tgt & 0x3FFF))
        elif kind == 6:  # a label length past the end, or a reserved label type
            j = rng.randrange(12, len(w)) if len(w) > 12 else i
            w[j] = rng.choice([63, 64, 0x40, 0x80, 0xFF, len(w) & 0x3F])
        elif kind == 7 and len(w) >= 4:  # flags: TC, RCODE, QR, opcode
            w[2] ^= rng.choice([0x02, 0x80, 0x08])
            w[3] ^= rng.choice([0x00, 0x01, 0x03])
        elif kind == 8:  # an rdlength-like field
            if len(w) > 14:
                j = rng.randrange(12, len(w) - 1)
                struct.pack_into("!H", w, j, rng.choice([0, 3, 4, 5, 16, 17, 0xFFFF]))
        else:  # a byte inserted or removed
            if rng.random() < 0.5:
                w.insert(i, rng.randrange(256))
            else:
                del w[i]
        return w
