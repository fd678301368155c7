import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from socklb.v1 import node_pb2 as _node_pb2
from socklb.v1 import policy_pb2 as _policy_pb2
from socklb.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AffinityMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AFFINITY_MODE_UNSPECIFIED: _ClassVar[AffinityMode]
    AFFINITY_MODE_NONE: _ClassVar[AffinityMode]
    AFFINITY_MODE_CLIENT: _ClassVar[AffinityMode]

class TrafficPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAFFIC_POLICY_UNSPECIFIED: _ClassVar[TrafficPolicy]
    TRAFFIC_POLICY_CLUSTER: _ClassVar[TrafficPolicy]
    TRAFFIC_POLICY_LOCAL: _ClassVar[TrafficPolicy]

class NodeHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_HEALTH_UNSPECIFIED: _ClassVar[NodeHealth]
    NODE_HEALTH_READY: _ClassVar[NodeHealth]
    NODE_HEALTH_DEGRADED: _ClassVar[NodeHealth]
    NODE_HEALTH_DISCONNECTED: _ClassVar[NodeHealth]
    NODE_HEALTH_GONE: _ClassVar[NodeHealth]

class ResourceKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOURCE_KIND_UNSPECIFIED: _ClassVar[ResourceKind]
    RESOURCE_KIND_SERVICE: _ClassVar[ResourceKind]
    RESOURCE_KIND_WORKLOAD: _ClassVar[ResourceKind]
    RESOURCE_KIND_POLICY: _ClassVar[ResourceKind]
    RESOURCE_KIND_LOCAL_REDIRECT: _ClassVar[ResourceKind]
AFFINITY_MODE_UNSPECIFIED: AffinityMode
AFFINITY_MODE_NONE: AffinityMode
AFFINITY_MODE_CLIENT: AffinityMode
TRAFFIC_POLICY_UNSPECIFIED: TrafficPolicy
TRAFFIC_POLICY_CLUSTER: TrafficPolicy
TRAFFIC_POLICY_LOCAL: TrafficPolicy
NODE_HEALTH_UNSPECIFIED: NodeHealth
NODE_HEALTH_READY: NodeHealth
NODE_HEALTH_DEGRADED: NodeHealth
NODE_HEALTH_DISCONNECTED: NodeHealth
NODE_HEALTH_GONE: NodeHealth
RESOURCE_KIND_UNSPECIFIED: ResourceKind
RESOURCE_KIND_SERVICE: ResourceKind
RESOURCE_KIND_WORKLOAD: ResourceKind
RESOURCE_KIND_POLICY: ResourceKind
RESOURCE_KIND_LOCAL_REDIRECT: ResourceKind

class Affinity(_message.Message):
    __slots__ = ("mode", "timeout_seconds")
    MODE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    mode: AffinityMode
    timeout_seconds: int
    def __init__(self, mode: _Optional[_Union[AffinityMode, str]] = ..., timeout_seconds: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "frontends", "backends", "selection", "affinity", "traffic_policy", "resource_version", "released")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_FIELD_NUMBER: _ClassVar[int]
    TRAFFIC_POLICY_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    name: str
    frontends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Frontend]
    backends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    selection: _types_pb2.Selection
    affinity: Affinity
    traffic_policy: TrafficPolicy
    resource_version: int
    released: _containers.RepeatedCompositeFieldContainer[BackendRef]
    def __init__(self, name: _Optional[str] = ..., frontends: _Optional[_Iterable[_Union[_types_pb2.Frontend, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ..., selection: _Optional[_Union[_types_pb2.Selection, str]] = ..., affinity: _Optional[_Union[Affinity, _Mapping]] = ..., traffic_policy: _Optional[_Union[TrafficPolicy, str]] = ..., resource_version: _Optional[int] = ..., released: _Optional[_Iterable[_Union[BackendRef, _Mapping]]] = ...) -> None: ...

class PutServiceRequest(_message.Message):
    __slots__ = ("service", "expected_version", "create_only")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    service: Service
    expected_version: int
    create_only: bool
    def __init__(self, service: _Optional[_Union[Service, _Mapping]] = ..., expected_version: _Optional[int] = ..., create_only: _Optional[bool] = ...) -> None: ...

class GetServiceRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "revision")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    revision: int
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class DeleteServiceRequest(_message.Message):
    __slots__ = ("name", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DeleteServiceResponse(_message.Message):
    __slots__ = ("revision", "existed")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EXISTED_FIELD_NUMBER: _ClassVar[int]
    revision: int
    existed: bool
    def __init__(self, revision: _Optional[int] = ..., existed: _Optional[bool] = ...) -> None: ...

class BackendRef(_message.Message):
    __slots__ = ("address", "port")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class SetBackendsRequest(_message.Message):
    __slots__ = ("service", "backends", "expected_version")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    expected_version: int
    def __init__(self, service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class AddBackendsRequest(_message.Message):
    __slots__ = ("service", "backends", "expected_version")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    expected_version: int
    def __init__(self, service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class RemoveBackendsRequest(_message.Message):
    __slots__ = ("service", "backends", "keep_sockets", "expected_version")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    KEEP_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendRef]
    keep_sockets: bool
    expected_version: int
    def __init__(self, service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendRef, _Mapping]]] = ..., keep_sockets: _Optional[bool] = ..., expected_version: _Optional[int] = ...) -> None: ...

class DrainBackendsRequest(_message.Message):
    __slots__ = ("service", "backends", "deadline_seconds", "expected_version")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendRef]
    deadline_seconds: int
    expected_version: int
    def __init__(self, service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendRef, _Mapping]]] = ..., deadline_seconds: _Optional[int] = ..., expected_version: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "applied_version", "desired_version", "health", "capabilities", "kernel", "last_seen", "last_error", "replica", "stats_unavailable")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class StatsUnavailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    STATS_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    applied_version: int
    desired_version: int
    health: NodeHealth
    capabilities: _containers.ScalarMap[str, str]
    kernel: str
    last_seen: _timestamp_pb2.Timestamp
    last_error: str
    replica: str
    stats_unavailable: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., applied_version: _Optional[int] = ..., desired_version: _Optional[int] = ..., health: _Optional[_Union[NodeHealth, str]] = ..., capabilities: _Optional[_Mapping[str, str]] = ..., kernel: _Optional[str] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., replica: _Optional[str] = ..., stats_unavailable: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NodeVersions(_message.Message):
    __slots__ = ("replica", "written", "nodes", "applied_versions", "desired_versions")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    replica: str
    written: _timestamp_pb2.Timestamp
    nodes: _containers.RepeatedScalarFieldContainer[str]
    applied_versions: _containers.RepeatedScalarFieldContainer[int]
    desired_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, replica: _Optional[str] = ..., written: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., nodes: _Optional[_Iterable[str]] = ..., applied_versions: _Optional[_Iterable[int]] = ..., desired_versions: _Optional[_Iterable[int]] = ...) -> None: ...

class TerminateFlowsRequest(_message.Message):
    __slots__ = ("service", "backends", "dry_run")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendRef]
    dry_run: bool
    def __init__(self, service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendRef, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class GetTerminationRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListTerminationsRequest(_message.Message):
    __slots__ = ("service", "page_size", "page_token")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    page_size: int
    page_token: str
    def __init__(self, service: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTerminationsResponse(_message.Message):
    __slots__ = ("terminations", "next_page_token")
    TERMINATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    terminations: _containers.RepeatedCompositeFieldContainer[Termination]
    next_page_token: str
    def __init__(self, terminations: _Optional[_Iterable[_Union[Termination, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Termination(_message.Message):
    __slots__ = ("id", "service", "backends", "dry_run", "trigger", "created", "reports", "found", "destroyed", "failed", "pending_nodes", "policy", "local_redirect")
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    PENDING_NODES_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_REDIRECT_FIELD_NUMBER: _ClassVar[int]
    id: str
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[BackendRef]
    dry_run: bool
    trigger: str
    created: _timestamp_pb2.Timestamp
    reports: _containers.RepeatedCompositeFieldContainer[_node_pb2.TerminationReport]
    found: int
    destroyed: int
    failed: int
    pending_nodes: _containers.RepeatedScalarFieldContainer[str]
    policy: _policy_pb2.Policy
    local_redirect: _policy_pb2.LocalRedirect
    def __init__(self, id: _Optional[str] = ..., service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[BackendRef, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., trigger: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reports: _Optional[_Iterable[_Union[_node_pb2.TerminationReport, _Mapping]]] = ..., found: _Optional[int] = ..., destroyed: _Optional[int] = ..., failed: _Optional[int] = ..., pending_nodes: _Optional[_Iterable[str]] = ..., policy: _Optional[_Union[_policy_pb2.Policy, _Mapping]] = ..., local_redirect: _Optional[_Union[_policy_pb2.LocalRedirect, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ("service", "node")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    service: str
    node: str
    def __init__(self, service: _Optional[str] = ..., node: _Optional[str] = ...) -> None: ...

class BackendStats(_message.Message):
    __slots__ = ("address", "port", "active_flows", "sockets")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FLOWS_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    active_flows: int
    sockets: _containers.RepeatedCompositeFieldContainer[_node_pb2.SocketStats]
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., active_flows: _Optional[int] = ..., sockets: _Optional[_Iterable[_Union[_node_pb2.SocketStats, _Mapping]]] = ...) -> None: ...

class ServiceStats(_message.Message):
    __slots__ = ("service", "active_flows", "backends")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FLOWS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    active_flows: int
    backends: _containers.RepeatedCompositeFieldContainer[BackendStats]
    def __init__(self, service: _Optional[str] = ..., active_flows: _Optional[int] = ..., backends: _Optional[_Iterable[_Union[BackendStats, _Mapping]]] = ...) -> None: ...

class NodeStats(_message.Message):
    __slots__ = ("node", "counters", "active_flows", "reported_at", "unavailable")
    class UnavailableEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FLOWS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    node: str
    counters: _node_pb2.Counters
    active_flows: int
    reported_at: _timestamp_pb2.Timestamp
    unavailable: _containers.ScalarMap[str, str]
    def __init__(self, node: _Optional[str] = ..., counters: _Optional[_Union[_node_pb2.Counters, _Mapping]] = ..., active_flows: _Optional[int] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., unavailable: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("services", "nodes", "workloads")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[ServiceStats]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStats]
    workloads: _containers.RepeatedCompositeFieldContainer[WorkloadStatus]
    def __init__(self, services: _Optional[_Iterable[_Union[ServiceStats, _Mapping]]] = ..., nodes: _Optional[_Iterable[_Union[NodeStats, _Mapping]]] = ..., workloads: _Optional[_Iterable[_Union[WorkloadStatus, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("from_revision",)
    FROM_REVISION_FIELD_NUMBER: _ClassVar[int]
    from_revision: int
    def __init__(self, from_revision: _Optional[int] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("revision", "type", "name", "service", "kind", "workload", "policy", "local_redirect")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[WatchEvent.Type]
        TYPE_PUT: _ClassVar[WatchEvent.Type]
        TYPE_DELETE: _ClassVar[WatchEvent.Type]
    TYPE_UNSPECIFIED: WatchEvent.Type
    TYPE_PUT: WatchEvent.Type
    TYPE_DELETE: WatchEvent.Type
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_REDIRECT_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: WatchEvent.Type
    name: str
    service: Service
    kind: ResourceKind
    workload: _policy_pb2.Workload
    policy: _policy_pb2.Policy
    local_redirect: _policy_pb2.LocalRedirect
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[WatchEvent.Type, str]] = ..., name: _Optional[str] = ..., service: _Optional[_Union[Service, _Mapping]] = ..., kind: _Optional[_Union[ResourceKind, str]] = ..., workload: _Optional[_Union[_policy_pb2.Workload, _Mapping]] = ..., policy: _Optional[_Union[_policy_pb2.Policy, _Mapping]] = ..., local_redirect: _Optional[_Union[_policy_pb2.LocalRedirect, _Mapping]] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("name", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., expected_version: _Optional[int] = ...) -> None: ...

class PutWorkloadRequest(_message.Message):
    __slots__ = ("workload", "expected_version", "create_only")
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    workload: _policy_pb2.Workload
    expected_version: int
    create_only: bool
    def __init__(self, workload: _Optional[_Union[_policy_pb2.Workload, _Mapping]] = ..., expected_version: _Optional[int] = ..., create_only: _Optional[bool] = ...) -> None: ...

class ListWorkloadsRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class WorkloadStatus(_message.Message):
    __slots__ = ("name", "reported", "cgroup_found", "denied")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPORTED_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FOUND_FIELD_NUMBER: _ClassVar[int]
    DENIED_FIELD_NUMBER: _ClassVar[int]
    name: str
    reported: bool
    cgroup_found: bool
    denied: int
    def __init__(self, name: _Optional[str] = ..., reported: _Optional[bool] = ..., cgroup_found: _Optional[bool] = ..., denied: _Optional[int] = ...) -> None: ...

class ListWorkloadsResponse(_message.Message):
    __slots__ = ("workloads", "revision", "status")
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Workload]
    revision: int
    status: _containers.RepeatedCompositeFieldContainer[WorkloadStatus]
    def __init__(self, workloads: _Optional[_Iterable[_Union[_policy_pb2.Workload, _Mapping]]] = ..., revision: _Optional[int] = ..., status: _Optional[_Iterable[_Union[WorkloadStatus, _Mapping]]] = ...) -> None: ...

class PutPolicyRequest(_message.Message):
    __slots__ = ("policy", "expected_version", "create_only")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    policy: _policy_pb2.Policy
    expected_version: int
    create_only: bool
    def __init__(self, policy: _Optional[_Union[_policy_pb2.Policy, _Mapping]] = ..., expected_version: _Optional[int] = ..., create_only: _Optional[bool] = ...) -> None: ...

class ListPoliciesResponse(_message.Message):
    __slots__ = ("policies", "revision")
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    policies: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Policy]
    revision: int
    def __init__(self, policies: _Optional[_Iterable[_Union[_policy_pb2.Policy, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...

class PutLocalRedirectRequest(_message.Message):
    __slots__ = ("local_redirect", "expected_version", "create_only")
    LOCAL_REDIRECT_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    local_redirect: _policy_pb2.LocalRedirect
    expected_version: int
    create_only: bool
    def __init__(self, local_redirect: _Optional[_Union[_policy_pb2.LocalRedirect, _Mapping]] = ..., expected_version: _Optional[int] = ..., create_only: _Optional[bool] = ...) -> None: ...

class ListLocalRedirectsResponse(_message.Message):
    __slots__ = ("local_redirects", "revision")
    LOCAL_REDIRECTS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    local_redirects: _containers.RepeatedCompositeFieldContainer[_policy_pb2.LocalRedirect]
    revision: int
    def __init__(self, local_redirects: _Optional[_Iterable[_Union[_policy_pb2.LocalRedirect, _Mapping]]] = ..., revision: _Optional[int] = ...) -> None: ...
