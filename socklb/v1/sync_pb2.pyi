import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from socklb.v1 import node_pb2 as _node_pb2
from socklb.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NodeMessage(_message.Message):
    __slots__ = ("hello", "ack", "nack", "stats", "termination")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    TERMINATION_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ack: Ack
    nack: Nack
    stats: StatsReport
    termination: _node_pb2.TerminationReport
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., nack: _Optional[_Union[Nack, _Mapping]] = ..., stats: _Optional[_Union[StatsReport, _Mapping]] = ..., termination: _Optional[_Union[_node_pb2.TerminationReport, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node", "applied_version", "state_digest", "capabilities", "kernel")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    node: str
    applied_version: int
    state_digest: bytes
    capabilities: _containers.ScalarMap[str, str]
    kernel: str
    def __init__(self, node: _Optional[str] = ..., applied_version: _Optional[int] = ..., state_digest: _Optional[bytes] = ..., capabilities: _Optional[_Mapping[str, str]] = ..., kernel: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("version", "nonce")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ...) -> None: ...

class Nack(_message.Message):
    __slots__ = ("version", "nonce", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: int
    nonce: str
    error: str
    def __init__(self, version: _Optional[int] = ..., nonce: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class FlowCount(_message.Message):
    __slots__ = ("service", "backend_address", "backend_port", "active")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_PORT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    service: str
    backend_address: str
    backend_port: int
    active: int
    def __init__(self, service: _Optional[str] = ..., backend_address: _Optional[str] = ..., backend_port: _Optional[int] = ..., active: _Optional[int] = ...) -> None: ...

class StatsReport(_message.Message):
    __slots__ = ("at", "counters", "flows", "health", "sockets", "unavailable", "workloads")
    class UnavailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AT_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    counters: _node_pb2.Counters
    flows: _containers.RepeatedCompositeFieldContainer[FlowCount]
    health: str
    sockets: _containers.RepeatedCompositeFieldContainer[_node_pb2.SocketStats]
    unavailable: _containers.ScalarMap[str, str]
    workloads: _containers.RepeatedCompositeFieldContainer[WorkloadReport]
    def __init__(self, at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., counters: _Optional[_Union[_node_pb2.Counters, _Mapping]] = ..., flows: _Optional[_Iterable[_Union[FlowCount, _Mapping]]] = ..., health: _Optional[str] = ..., sockets: _Optional[_Iterable[_Union[_node_pb2.SocketStats, _Mapping]]] = ..., unavailable: _Optional[_Mapping[str, str]] = ..., workloads: _Optional[_Iterable[_Union[WorkloadReport, _Mapping]]] = ...) -> None: ...

class WorkloadReport(_message.Message):
    __slots__ = ("name", "cgroup_found", "denied")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FOUND_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    name: str
    cgroup_found: bool
    denied: int
    def __init__(self, name: _Optional[str] = ..., cgroup_found: _Optional[bool] = ..., denied: _Optional[int] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("nonce", "trace_context", "snapshot", "delta", "terminate")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NONCE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    TERMINATE_FIELD_NUMBER: _ClassVar[int]
    nonce: str
    trace_context: _containers.ScalarMap[str, str]
    snapshot: SnapshotChunk
    delta: _node_pb2.NodeStateDelta
    terminate: TerminateCommand
    def __init__(self, nonce: _Optional[str] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., snapshot: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., delta: _Optional[_Union[_node_pb2.NodeStateDelta, _Mapping]] = ..., terminate: _Optional[_Union[TerminateCommand, _Mapping]] = ...) -> None: ...

class TerminateCommand(_message.Message):
    __slots__ = ("id", "service", "backends", "dry_run", "preview")
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    id: str
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    dry_run: bool
    preview: NodePolicyPreview
    def __init__(self, id: _Optional[str] = ..., service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., preview: _Optional[_Union[NodePolicyPreview, _Mapping]] = ...) -> None: ...

class NodePolicyPreview(_message.Message):
    __slots__ = ("trigger", "workloads", "policy_sets", "redirects")
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SETS_FIELD_NUMBER: _ClassVar[int]
    REDIRECTS_FIELD_NUMBER: _ClassVar[int]
    trigger: str
    workloads: _containers.RepeatedCompositeFieldContainer[_node_pb2.WorkloadState]
    policy_sets: _containers.RepeatedCompositeFieldContainer[_node_pb2.PolicySetState]
    redirects: _containers.RepeatedCompositeFieldContainer[_node_pb2.RedirectState]
    def __init__(self, trigger: _Optional[str] = ..., workloads: _Optional[_Iterable[_Union[_node_pb2.WorkloadState, _Mapping]]] = ..., policy_sets: _Optional[_Iterable[_Union[_node_pb2.PolicySetState, _Mapping]]] = ..., redirects: _Optional[_Iterable[_Union[_node_pb2.RedirectState, _Mapping]]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("version", "services", "last", "workloads", "policy_sets", "redirects")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SETS_FIELD_NUMBER: _ClassVar[int]
    REDIRECTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    services: _containers.RepeatedCompositeFieldContainer[_node_pb2.ServiceState]
    last: bool
    workloads: _containers.RepeatedCompositeFieldContainer[_node_pb2.WorkloadState]
    policy_sets: _containers.RepeatedCompositeFieldContainer[_node_pb2.PolicySetState]
    redirects: _containers.RepeatedCompositeFieldContainer[_node_pb2.RedirectState]
    def __init__(self, version: _Optional[int] = ..., services: _Optional[_Iterable[_Union[_node_pb2.ServiceState, _Mapping]]] = ..., last: _Optional[bool] = ..., workloads: _Optional[_Iterable[_Union[_node_pb2.WorkloadState, _Mapping]]] = ..., policy_sets: _Optional[_Iterable[_Union[_node_pb2.PolicySetState, _Mapping]]] = ..., redirects: _Optional[_Iterable[_Union[_node_pb2.RedirectState, _Mapping]]] = ...) -> None: ...
