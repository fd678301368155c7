"""Addresses and ports as both planes read them: one parser, one stored form,
one 16-byte encoding (the datapath's, IPv4 v4-mapped), one host:port
grammar both ways (split_host_port, join_host_port)."""
from __future__ import annotations

import ipaddress
import socket

from .errors import InvalidState

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
V4MAPPED = b"\0" * 10 + b"\xff\xff"  # the first 12 bytes of a v4-mapped address
MAX_PORT = 65535


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 64 else repr(text[:64]) + f"... ({len(text)} characters)"


def ipv4_packed(text: str) -> bytes | None:
    """The 4 bytes of an IPv4 literal, read in C; None for anything else.
    inet_pton takes exactly what ipaddress takes (four decimal octets, no
    leading zeros)."""
    try:
        return socket.inet_pton(socket.AF_INET, text)
    except (OSError, ValueError):  # ValueError: an embedded NUL; UnicodeError is one
        return None


def usable_ipv4(packed: bytes) -> bool:
    """Neither unspecified (0.0.0.0) nor multicast: what parse_ip accepts."""
    return packed != b"\0\0\0\0" and not 224 <= packed[0] <= 239


def parse_ip(text: str, field: str) -> IPAddress:
    """An address literal: IPv4, IPv6, or IPv6 in one pair of brackets.
    Zone ids are refused: the datapath keys on the 16-byte address alone, so
    fe80::1%a and fe80::1%b would be one backend."""
    raw = text
    if text.startswith("[") or text.endswith("]"):
        if not (text.startswith("[") and text.endswith("]")) or text.count("[") + text.count("]") != 2:
            raise InvalidState(field, f"{_shown(text)} has unbalanced brackets")
        raw = text[1:-1]
        if ":" not in raw:
            raise InvalidState(field, f"{_shown(text)}: brackets are for IPv6 addresses only")
    if raw is text:
        # Plain IPv4 first, in C: a full state holds 100k+ backend addresses.
        # Anything inet_pton refuses gets the full parse below, and its error.
        packed = ipv4_packed(raw)
        if packed is not None:
            if not usable_ipv4(packed):
                raise InvalidState(field, f"{raw} cannot be used (unspecified or multicast)")
            return ipaddress.IPv4Address(packed)
    if "%" in raw:
        raise InvalidState(field, f"{_shown(text)}: zone ids (%...) are not supported")
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        raise InvalidState(field, f"{_shown(text)} is not an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        raise InvalidState(field, f"{ip} cannot be used (unspecified or multicast)")
    return ip


def canonical_address(text: str) -> str:
    """The one stored form of an address (IPv6 compressed, no brackets,
    v4-mapped as IPv4); text that is no address comes back unchanged, for
    validation to name."""
    try:
        return str(parse_ip(text, "address"))
    except InvalidState:
        return text


def check_port(value: int, field: str, allow_zero: bool) -> int:
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_PORT:
        raise InvalidState(field, f"port {value} is out of range {low}..{MAX_PORT}")
    return value


def split_host_port(text: str) -> tuple[str, str | None]:
    """`host:port`, `[v6]:port`, `host` or `[v6]` -> (host, port text or None);
    the host and port are the caller's to judge. ValueError: a '[' without
    ']', anything but ':port' after ']', or IPv6 (two ':' or more) without
    brackets."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("missing ']' after the IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError("expected [ADDR]:PORT")
        return host, rest[1:] if rest else None
    if text.count(":") > 1:
        raise ValueError("an IPv6 address must be in brackets, as [ADDR]:PORT")
    host, colon, port = text.partition(":")
    return host, port if colon else None


def join_host_port(host: str, port: int | str) -> str:
    """`host:port`, IPv6 in brackets (`[v6]:port`): what split_host_port reads."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def addr16(addr: str | IPAddress | bytes) -> bytes:
    """16 bytes in network order, IPv4 v4-mapped: how the datapath keys an
    address (a literal without brackets, an ipaddress object, or 4 or 16
    packed bytes)."""
    ip = addr if isinstance(addr, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(addr)
    return V4MAPPED + ip.packed if ip.version == 4 else ip.packed


def addr_text(raw: bytes) -> str:
    """The literal of a 16-byte address (IPv4 for v4-mapped ones)."""
    if raw[:12] == V4MAPPED:  # inet_ntop: several times cheaper than ipaddress (socket records)
        return socket.inet_ntop(socket.AF_INET, raw[12:])
    return str(ipaddress.IPv6Address(raw))


def unmapped(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An IPv4 prefix written v4-mapped ("::ffff:10.0.0.0/104") as the IPv4
    one (10.0.0.0/8), as the datapath keys it; any other prefix as it is.
    A shorter IPv6 prefix holding ::ffff:0:0/96 (::/0) stays IPv6."""
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def parse_prefix(text: str, field: str) -> tuple[bytes, int]:
    """An IPv4/IPv6 prefix ("10.0.0.0/8", "2001:db8::/32"; a bare address is
    /32 or /128) as the datapath keys it: the 16-byte network address and
    its length within those 128 bits (an IPv4 /8 is 96 + 8, v4-mapped).
    Bits set past the length are refused: "10.1.0.0/8" is a typo more often
    than a wish for 10.0.0.0/8. (inet_pton, not ipaddress: a node parses
    tens of thousands of them per state.)"""
    addr, slash, length = text.partition("/")
    v6 = ":" in addr
    try:
        raw = socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, addr)
    except (OSError, ValueError):
        raise InvalidState(field, f"{_shown(text)} is not an IPv4 or IPv6 prefix") from None
    bits = len(raw) * 8
    if not slash:
        n = bits
    elif length.isdigit() and length.isascii() and int(length) <= bits and (length == "0" or length[0] != "0"):
        n = int(length)
    else:
        raise InvalidState(field, f"{_shown(text)}: the length must be 0..{bits}")
    if int.from_bytes(raw, "big") & ((1 << (bits - n)) - 1):
        raise InvalidState(field, f"{_shown(text)} has bits set past its length /{n}")
    return (V4MAPPED + raw, 96 + n) if not v6 else (raw, n)  # ::ffff:a.b.c.d/96+n is a.b.c.d/n already


def prefix_text(addr: bytes, length: int) -> str:
    """The text of a prefix as parse_prefix returns it (IPv4 for v4-mapped ones)."""
    if addr[:12] == V4MAPPED and length >= 96:
        return f"{addr_text(addr)}/{length - 96}"
    return f"{ipaddress.IPv6Address(addr)}/{length}"
