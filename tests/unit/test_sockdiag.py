"""The netlink SOCK_DESTROY client (socklb/dataplane/sockdiag.py) speaks the
protocol as pyroute2 encodes it: same constants, same request bytes (header
and struct inet_diag_req_v2) for IPv4 and IPv6 sockets. No root needed."""
import socket
import struct

import pytest
from pyroute2 import netlink
from pyroute2.netlink import diag

from socklb.dataplane import sockdiag


def test_constants_are_pyroute2s():
    assert sockdiag.NETLINK_SOCK_DIAG == netlink.NETLINK_SOCK_DIAG
    assert sockdiag.SOCK_DESTROY == diag.SOCK_DESTROY
    assert (sockdiag.NLM_F_REQUEST, sockdiag.NLM_F_ACK) == (netlink.NLM_F_REQUEST, netlink.NLM_F_ACK)
    assert sockdiag.NLMSG_ERROR == netlink.NLMSG_ERROR


def _pyroute2(s: sockdiag.Socket, seq: int) -> bytes:
    req = diag.inet_diag_req()
    req["header"]["type"] = diag.SOCK_DESTROY
    req["header"]["flags"] = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK
    req["header"]["sequence_number"] = seq
    req["sdiag_family"] = s.family
    req["sdiag_protocol"] = s.proto
    req["idiag_states"] = 0xFFFFFFFF
    req["idiag_sport"], req["idiag_dport"] = s.sport, s.dport
    if s.family == socket.AF_INET:  # inet_diag_sockid: IPv4 in the first word
        src, dst = s.src[12:] + bytes(12), s.dst[12:] + bytes(12)
    else:
        src, dst = s.src, s.dst
    req["idiag_src"], req["idiag_dst"] = struct.unpack(">4I", src), struct.unpack(">4I", dst)
    req["idiag_cookie"] = s.cookie
    req.encode()
    return bytes(req.data)


V4 = bytes(10) + b"\xff\xff"


@pytest.mark.parametrize("sock", [
    sockdiag.Socket(socket.AF_INET, socket.IPPROTO_TCP, 41000, 8080, V4 + bytes([127, 0, 0, 1]),
                    V4 + bytes([127, 61, 0, 1]), 0x0000_1234_8765_4321),
    sockdiag.Socket(socket.AF_INET6, socket.IPPROTO_UDP, 53, 5353, socket.inet_pton(socket.AF_INET6, "fd00::1"),
                    socket.inet_pton(socket.AF_INET6, "fd00:96::10"), 0xFFFF_FFFF_0000_0001),
])
def test_request_bytes_are_pyroute2s(sock):
    body = sockdiag.request(sock)
    ours = sockdiag.NLHDR.pack(sockdiag.NLHDR.size + len(body), sockdiag.SOCK_DESTROY,
                               sockdiag.NLM_F_REQUEST | sockdiag.NLM_F_ACK, 7, 0) + body
    assert ours == _pyroute2(sock, 7)
