"""The one host:port grammar, address encoding and protocol/state naming
(socklb.lb), and the places that used to have their own copy of them."""
import ipaddress
import socket

import pytest

from socklb.controlplane import server
from socklb.dataplane import sockdestroy
from socklb.lb import protocols
from socklb.lb.errors import InvalidState
from socklb.lb.addresses import addr16, addr_text, join_host_port, parse_prefix, prefix_text, split_host_port
from socklb.observability import metrics
from socklb.v1 import types_pb2


@pytest.mark.parametrize("host,port", [("10.0.0.1", 80), ("fd00::1", 443), ("localhost", 0), ("", 9100)])
def test_join_is_what_split_reads(host, port):
    text = join_host_port(host, port)
    assert split_host_port(text) == (host, str(port))
    assert (":" in host) == text.startswith("[")


@pytest.mark.parametrize("text", ["1.2.3.4", "::1", "fd00:96::10", "::ffff:10.0.0.1", "::1.2.3.4", "1:0:0:0:0:0:0:8"])
def test_addr_text_agrees_with_ipaddress(text):
    ip = ipaddress.ip_address(text)
    want = str(ip.ipv4_mapped or ip) if ip.version == 6 else str(ip)
    assert addr_text(addr16(text)) == want
    # every spelling the datapath may be given encodes the same
    assert addr16(ip) == addr16(ip.packed) == addr16(text)


def test_protocol_and_state_names():
    assert protocols.name_of(socket.IPPROTO_UDP) == "udp" and protocols.name_of(132) == "132"
    assert protocols.pb_of_name("tcp") == types_pb2.PROTOCOL_TCP
    assert protocols.pb_of_name("sctp") == types_pb2.PROTOCOL_UNSPECIFIED
    assert protocols.state_name("tcp", 8) == "CLOSE_WAIT" and protocols.state_name("tcp", 12) == "NEW_SYN_RECV"
    assert protocols.state_name("udp", 1) == "CONNECTED" and protocols.state_name("udp", 7) == "7"


def test_termination_dsts_use_the_model_encoding():
    k = sockdestroy.dst_key("[::ffff:127.0.0.2]", 8080)
    assert bytes(k.addr) == addr16("127.0.0.2") and k.port == socket.htons(8080)
    assert bytes(sockdestroy.dst_key(socket.inet_aton("127.0.0.2"), 8080)) == bytes(k)
    assert bytes(sockdestroy.dst_key(bytearray(addr16("127.0.0.2")), 8080)) == bytes(k)
    for addr, port in (("127.0.0.2", 0), ("127.0.0.2", 65536), ("not-an-address", 80), (b"\x01\x02", 80)):
        with pytest.raises(ValueError):
            sockdestroy.dst_key(addr, port)


@pytest.mark.parametrize("listen,why", [
    ("::1:7400", "an IPv6 address must be in brackets"),  # gRPC cannot bind it either
    ("[::1", "missing ']'"),
    ("[::1]7400", "expected [ADDR]:PORT"),
    (":7400", "expected HOST:PORT"),
    ("127.0.0.1:", "expected HOST:PORT"),
])
def test_check_listen_refuses(listen, why):
    with pytest.raises(ValueError) as e:
        server.check_listen(listen)
    assert str(e.value).startswith(f"--listen {listen!r}: ") and why in str(e.value)


def test_check_listen_and_is_loopback_accept():
    for listen in ("127.0.0.1:0", "[::1]:7400", "localhost:7400", "unix:/run/x.sock"):
        server.check_listen(listen)
        assert server.is_loopback(listen)
    assert not server.is_loopback("[::]:7400") and not server.is_loopback("::1:7400")


@pytest.mark.parametrize("address", ["9100", "127.0.0.1", "::1:9100", "127.0.0.1:http", "127.0.0.1:65536"])
def test_metrics_listen_refuses(address):
    with pytest.raises(ValueError):
        metrics.serve(address)


def test_the_node_cli_reads_backends_with_the_one_grammar():
    """`socklb-dataplane terminate SERVICE ADDR:PORT`: split_host_port, like
    every other host:port in socklb (IPv6 only in brackets)."""
    from socklb.dataplane import cli as node_cli

    assert (node_cli._backend_arg("[::1]:80").address, node_cli._backend_arg("[::1]:80").port) == ("::1", 80)
    assert node_cli._backend_arg("127.0.0.2:8080").address == "127.0.0.2"
    for bad in ("::1:80", "[::1", "x", "1.2.3.4:", "1.2.3.4:http"):
        with pytest.raises(node_cli.CliError, match=r"expected ADDRESS:PORT \(IPv6 as \[addr\]:port\)"):
            node_cli._backend_arg(bad)


@pytest.mark.parametrize("text, length, shown", [
    ("10.0.0.0/8", 104, "10.0.0.0/8"), ("1.2.3.4", 128, "1.2.3.4/32"), ("0.0.0.0/0", 96, "0.0.0.0/0"),
    ("::/0", 0, "::/0"), ("2001:db8::/32", 32, "2001:db8::/32"), ("::1", 128, "::1/128"),
    ("::ffff:10.0.0.0/104", 104, "10.0.0.0/8"),  # a v4-mapped prefix is the IPv4 one
])
def test_prefixes_in_the_datapath_encoding(text, length, shown):
    """A prefix is keyed like an address (16 bytes, IPv4 v4-mapped), its
    length counted in those 128 bits; the same as ipaddress reads it."""
    addr, n = parse_prefix(text, "prefix")
    assert n == length and prefix_text(addr, n) == shown
    net = ipaddress.ip_network(text)
    assert addr == addr16(net.network_address) or net.network_address.ipv4_mapped is not None


@pytest.mark.parametrize("text", ["10.1.0.0/8", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/08", "x/8", " 10.0.0.0/8",
                                  "fe80::1%eth0/128", "::1/129", "10.0.0.0/-1", "1.2.3/24"])
def test_prefixes_refused(text):
    with pytest.raises(InvalidState):
        parse_prefix(text, "prefix")
