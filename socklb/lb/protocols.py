"""Transport protocols: the API's enum, the kernel's IPPROTO_* numbers and their names."""
from __future__ import annotations

import socket

from socklb.v1 import types_pb2

TCP = socket.IPPROTO_TCP
UDP = socket.IPPROTO_UDP

PROTOCOLS = {  # API value -> IPPROTO_*
    types_pb2.PROTOCOL_UNSPECIFIED: TCP,  # like Kubernetes, TCP unless told
    types_pb2.PROTOCOL_TCP: TCP,
    types_pb2.PROTOCOL_UDP: UDP,
}
TO_PB = {TCP: types_pb2.PROTOCOL_TCP, UDP: types_pb2.PROTOCOL_UDP}
NAMES = {TCP: "tcp", UDP: "udp"}
