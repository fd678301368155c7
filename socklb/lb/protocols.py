"""Transport protocols: the API's enum, the kernel's IPPROTO_* numbers and
their names ("tcp", "udp"); and the names under which socket states are
reported (TerminatedSocket.state, SocketStats.states)."""
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
NAMES = {TCP: "tcp", UDP: "udp"}  # IPPROTO_* -> name
BY_NAME = {name: proto for proto, name in NAMES.items()}  # name -> IPPROTO_*

# The kernel's TCP states (enum in include/net/tcp_states.h), skc_state values.
TCP_STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
    6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
    11: "CLOSING", 12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE",
}


def name_of(proto: int) -> str:
    """"tcp" or "udp" for IPPROTO_TCP / IPPROTO_UDP; the number of another."""
    return NAMES.get(proto, str(proto))


def pb_of_name(name: str) -> int:
    """The API's protocol of "tcp" / "udp"; PROTOCOL_UNSPECIFIED for another name."""
    return TO_PB.get(BY_NAME.get(name, -1), types_pb2.PROTOCOL_UNSPECIFIED)


def state_name(protocol: str, state: int) -> str:
    """A socket's state as reported: for "tcp" the kernel's name (ESTABLISHED,
    CLOSE_WAIT, ...); for "udp" CONNECTED for a connected socket (skc_state
    1); otherwise the number."""
    if protocol == "tcp":
        return TCP_STATES.get(state, str(state))
    return "CONNECTED" if state == 1 else str(state)
