import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_TCP: _ClassVar[Protocol]
    PROTOCOL_UDP: _ClassVar[Protocol]

class BackendState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKEND_STATE_UNSPECIFIED: _ClassVar[BackendState]
    BACKEND_STATE_ACTIVE: _ClassVar[BackendState]
    BACKEND_STATE_DRAINING: _ClassVar[BackendState]
    BACKEND_STATE_QUARANTINED: _ClassVar[BackendState]

class Selection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_UNSPECIFIED: _ClassVar[Selection]
    SELECTION_RANDOM: _ClassVar[Selection]
    SELECTION_MAGLEV: _ClassVar[Selection]
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_TCP: Protocol
PROTOCOL_UDP: Protocol
BACKEND_STATE_UNSPECIFIED: BackendState
BACKEND_STATE_ACTIVE: BackendState
BACKEND_STATE_DRAINING: BackendState
BACKEND_STATE_QUARANTINED: BackendState
SELECTION_UNSPECIFIED: Selection
SELECTION_RANDOM: Selection
SELECTION_MAGLEV: Selection

class Frontend(_message.Message):
    __slots__ = ("address", "port", "protocol")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    protocol: Protocol
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[_Union[Protocol, str]] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("address", "port", "weight", "state", "node", "zone", "drain_deadline")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    DRAIN_DEADLINE_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    weight: int
    state: BackendState
    node: str
    zone: str
    drain_deadline: _timestamp_pb2.Timestamp
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., weight: _Optional[int] = ..., state: _Optional[_Union[BackendState, str]] = ..., node: _Optional[str] = ..., zone: _Optional[str] = ..., drain_deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
