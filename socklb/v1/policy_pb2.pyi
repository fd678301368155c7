from socklb.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_ALLOW: _ClassVar[Action]
    ACTION_DENY: _ClassVar[Action]
ACTION_UNSPECIFIED: Action
ACTION_ALLOW: Action
ACTION_DENY: Action

class Workload(_message.Message):
    __slots__ = ("name", "node", "cgroup", "labels", "addresses", "bypass_socket_lb", "resource_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    BYPASS_SOCKET_LB_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    node: str
    cgroup: str
    labels: _containers.ScalarMap[str, str]
    addresses: _containers.RepeatedScalarFieldContainer[str]
    bypass_socket_lb: bool
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., node: _Optional[str] = ..., cgroup: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., addresses: _Optional[_Iterable[str]] = ..., bypass_socket_lb: _Optional[bool] = ..., resource_version: _Optional[int] = ...) -> None: ...

class PortRange(_message.Message):
    __slots__ = ("port", "end_port", "protocol")
    PORT_FIELD_NUMBER: _ClassVar[int]
    END_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    port: int
    end_port: int
    protocol: _types_pb2.Protocol
    def __init__(self, port: _Optional[int] = ..., end_port: _Optional[int] = ..., protocol: _Optional[_Union[_types_pb2.Protocol, str]] = ...) -> None: ...

class EgressRule(_message.Message):
    __slots__ = ("action", "to_services", "to_cidrs", "ports", "to_fqdns")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TO_SERVICES_FIELD_NUMBER: _ClassVar[int]
    TO_CIDRS_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    TO_FQDNS_FIELD_NUMBER: _ClassVar[int]
    action: Action
    to_services: _containers.RepeatedScalarFieldContainer[str]
    to_cidrs: _containers.RepeatedScalarFieldContainer[str]
    ports: _containers.RepeatedCompositeFieldContainer[PortRange]
    to_fqdns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, action: _Optional[_Union[Action, str]] = ..., to_services: _Optional[_Iterable[str]] = ..., to_cidrs: _Optional[_Iterable[str]] = ..., ports: _Optional[_Iterable[_Union[PortRange, _Mapping]]] = ..., to_fqdns: _Optional[_Iterable[str]] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("name", "selector", "egress", "resource_version")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    selector: _containers.ScalarMap[str, str]
    egress: _containers.RepeatedCompositeFieldContainer[EgressRule]
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., selector: _Optional[_Mapping[str, str]] = ..., egress: _Optional[_Iterable[_Union[EgressRule, _Mapping]]] = ..., resource_version: _Optional[int] = ...) -> None: ...

class LocalRedirect(_message.Message):
    __slots__ = ("name", "service", "frontend", "selector", "backend_port", "resource_version")
    class SelectorEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    BACKEND_PORT_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    service: str
    frontend: _types_pb2.Frontend
    selector: _containers.ScalarMap[str, str]
    backend_port: int
    resource_version: int
    def __init__(self, name: _Optional[str] = ..., service: _Optional[str] = ..., frontend: _Optional[_Union[_types_pb2.Frontend, _Mapping]] = ..., selector: _Optional[_Mapping[str, str]] = ..., backend_port: _Optional[int] = ..., resource_version: _Optional[int] = ...) -> None: ...
