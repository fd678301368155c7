import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from socklb.v1 import policy_pb2 as _policy_pb2
from socklb.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ServiceState(_message.Message):
    __slots__ = ("name", "frontends", "backends", "selection", "affinity_timeout_seconds", "keep_flows")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    KEEP_FLOWS_FIELD_NUMBER: _ClassVar[int]
    name: str
    frontends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Frontend]
    backends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    selection: _types_pb2.Selection
    affinity_timeout_seconds: int
    keep_flows: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    def __init__(self, name: _Optional[str] = ..., frontends: _Optional[_Iterable[_Union[_types_pb2.Frontend, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ..., selection: _Optional[_Union[_types_pb2.Selection, str]] = ..., affinity_timeout_seconds: _Optional[int] = ..., keep_flows: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ...) -> None: ...

class NodeState(_message.Message):
    __slots__ = ("version", "services", "workloads", "policy_sets", "redirects")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SETS_FIELD_NUMBER: _ClassVar[int]
    REDIRECTS_FIELD_NUMBER: _ClassVar[int]
    version: int
    services: _containers.RepeatedCompositeFieldContainer[ServiceState]
    workloads: _containers.RepeatedCompositeFieldContainer[WorkloadState]
    policy_sets: _containers.RepeatedCompositeFieldContainer[PolicySetState]
    redirects: _containers.RepeatedCompositeFieldContainer[RedirectState]
    def __init__(self, version: _Optional[int] = ..., services: _Optional[_Iterable[_Union[ServiceState, _Mapping]]] = ..., workloads: _Optional[_Iterable[_Union[WorkloadState, _Mapping]]] = ..., policy_sets: _Optional[_Iterable[_Union[PolicySetState, _Mapping]]] = ..., redirects: _Optional[_Iterable[_Union[RedirectState, _Mapping]]] = ...) -> None: ...

class NodeStateDelta(_message.Message):
    __slots__ = ("from_version", "version", "upserts", "removals", "workload_upserts", "workload_removals", "policy_set_upserts", "policy_set_removals", "redirect_upserts", "redirect_removals")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPSERTS_FIELD_NUMBER: _ClassVar[int]
    REMOVALS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_UPSERTS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_REMOVALS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SET_UPSERTS_FIELD_NUMBER: _ClassVar[int]
    POLICY_SET_REMOVALS_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_UPSERTS_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_REMOVALS_FIELD_NUMBER: _ClassVar[int]
    from_version: int
    version: int
    upserts: _containers.RepeatedCompositeFieldContainer[ServiceState]
    removals: _containers.RepeatedScalarFieldContainer[str]
    workload_upserts: _containers.RepeatedCompositeFieldContainer[WorkloadState]
    workload_removals: _containers.RepeatedScalarFieldContainer[str]
    policy_set_upserts: _containers.RepeatedCompositeFieldContainer[PolicySetState]
    policy_set_removals: _containers.RepeatedScalarFieldContainer[str]
    redirect_upserts: _containers.RepeatedCompositeFieldContainer[RedirectState]
    redirect_removals: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, from_version: _Optional[int] = ..., version: _Optional[int] = ..., upserts: _Optional[_Iterable[_Union[ServiceState, _Mapping]]] = ..., removals: _Optional[_Iterable[str]] = ..., workload_upserts: _Optional[_Iterable[_Union[WorkloadState, _Mapping]]] = ..., workload_removals: _Optional[_Iterable[str]] = ..., policy_set_upserts: _Optional[_Iterable[_Union[PolicySetState, _Mapping]]] = ..., policy_set_removals: _Optional[_Iterable[str]] = ..., redirect_upserts: _Optional[_Iterable[_Union[RedirectState, _Mapping]]] = ..., redirect_removals: _Optional[_Iterable[str]] = ...) -> None: ...

class WorkloadState(_message.Message):
    __slots__ = ("name", "cgroup", "bypass_socket_lb", "policy_set")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    BYPASS_SOCKET_LB_FIELD_NUMBER: _ClassVar[int]
    POLICY_SET_FIELD_NUMBER: _ClassVar[int]
    name: str
    cgroup: str
    bypass_socket_lb: bool
    policy_set: str
    def __init__(self, name: _Optional[str] = ..., cgroup: _Optional[str] = ..., bypass_socket_lb: _Optional[bool] = ..., policy_set: _Optional[str] = ...) -> None: ...

class PolicySetState(_message.Message):
    __slots__ = ("name", "policies", "frontends", "prefixes", "fqdns", "dns_servers")
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    FQDNS_FIELD_NUMBER: _ClassVar[int]
    DNS_SERVERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    policies: _containers.RepeatedScalarFieldContainer[str]
    frontends: _containers.RepeatedCompositeFieldContainer[FrontendVerdict]
    prefixes: _containers.RepeatedCompositeFieldContainer[PrefixRules]
    fqdns: _containers.RepeatedCompositeFieldContainer[FqdnRules]
    dns_servers: _containers.RepeatedCompositeFieldContainer[DnsServer]
    def __init__(self, name: _Optional[str] = ..., policies: _Optional[_Iterable[str]] = ..., frontends: _Optional[_Iterable[_Union[FrontendVerdict, _Mapping]]] = ..., prefixes: _Optional[_Iterable[_Union[PrefixRules, _Mapping]]] = ..., fqdns: _Optional[_Iterable[_Union[FqdnRules, _Mapping]]] = ..., dns_servers: _Optional[_Iterable[_Union[DnsServer, _Mapping]]] = ...) -> None: ...

class FqdnRules(_message.Message):
    __slots__ = ("pattern", "rules")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    pattern: str
    rules: _containers.RepeatedCompositeFieldContainer[PortRule]
    def __init__(self, pattern: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[PortRule, _Mapping]]] = ...) -> None: ...

class DnsServer(_message.Message):
    __slots__ = ("address", "port")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class FrontendVerdict(_message.Message):
    __slots__ = ("service", "frontend", "action")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    service: str
    frontend: _types_pb2.Frontend
    action: _policy_pb2.Action
    def __init__(self, service: _Optional[str] = ..., frontend: _Optional[_Union[_types_pb2.Frontend, _Mapping]] = ..., action: _Optional[_Union[_policy_pb2.Action, str]] = ...) -> None: ...

class PortRule(_message.Message):
    __slots__ = ("port", "end_port", "protocol", "action")
    PORT_FIELD_NUMBER: _ClassVar[int]
    END_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    port: int
    end_port: int
    protocol: _types_pb2.Protocol
    action: _policy_pb2.Action
    def __init__(self, port: _Optional[int] = ..., end_port: _Optional[int] = ..., protocol: _Optional[_Union[_types_pb2.Protocol, str]] = ..., action: _Optional[_Union[_policy_pb2.Action, str]] = ...) -> None: ...

class PrefixRules(_message.Message):
    __slots__ = ("prefix", "rules")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    rules: _containers.RepeatedCompositeFieldContainer[PortRule]
    def __init__(self, prefix: _Optional[str] = ..., rules: _Optional[_Iterable[_Union[PortRule, _Mapping]]] = ...) -> None: ...

class RedirectState(_message.Message):
    __slots__ = ("name", "frontends", "backends", "exempt")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    EXEMPT_FIELD_NUMBER: _ClassVar[int]
    name: str
    frontends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Frontend]
    backends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    exempt: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., frontends: _Optional[_Iterable[_Union[_types_pb2.Frontend, _Mapping]]] = ..., backends: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ..., exempt: _Optional[_Iterable[str]] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ApplyStateRequest(_message.Message):
    __slots__ = ("full", "delta")
    FULL_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    full: NodeState
    delta: NodeStateDelta
    def __init__(self, full: _Optional[_Union[NodeState, _Mapping]] = ..., delta: _Optional[_Union[NodeStateDelta, _Mapping]] = ...) -> None: ...

class ApplyStateResponse(_message.Message):
    __slots__ = ("version", "frontends_written", "frontends_removed", "backends_written", "backends_removed", "duration_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    FRONTENDS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_REMOVED_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: int
    frontends_written: int
    frontends_removed: int
    backends_written: int
    backends_removed: int
    duration_seconds: float
    def __init__(self, version: _Optional[int] = ..., frontends_written: _Optional[int] = ..., frontends_removed: _Optional[int] = ..., backends_written: _Optional[int] = ..., backends_removed: _Optional[int] = ..., duration_seconds: _Optional[float] = ...) -> None: ...

class DumpRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ProgrammedFrontend(_message.Message):
    __slots__ = ("id", "service", "frontend", "selection", "affinity_timeout_seconds", "slots")
    ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    id: int
    service: str
    frontend: _types_pb2.Frontend
    selection: _types_pb2.Selection
    affinity_timeout_seconds: int
    slots: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[int] = ..., service: _Optional[str] = ..., frontend: _Optional[_Union[_types_pb2.Frontend, _Mapping]] = ..., selection: _Optional[_Union[_types_pb2.Selection, str]] = ..., affinity_timeout_seconds: _Optional[int] = ..., slots: _Optional[_Iterable[int]] = ...) -> None: ...

class DumpServicesResponse(_message.Message):
    __slots__ = ("frontends",)
    FRONTENDS_FIELD_NUMBER: _ClassVar[int]
    frontends: _containers.RepeatedCompositeFieldContainer[ProgrammedFrontend]
    def __init__(self, frontends: _Optional[_Iterable[_Union[ProgrammedFrontend, _Mapping]]] = ...) -> None: ...

class ProgrammedBackend(_message.Message):
    __slots__ = ("id", "frontend_id", "address", "port", "protocol", "state")
    ID_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    id: int
    frontend_id: int
    address: str
    port: int
    protocol: _types_pb2.Protocol
    state: _types_pb2.BackendState
    def __init__(self, id: _Optional[int] = ..., frontend_id: _Optional[int] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., protocol: _Optional[_Union[_types_pb2.Protocol, str]] = ..., state: _Optional[_Union[_types_pb2.BackendState, str]] = ...) -> None: ...

class DumpBackendsResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[ProgrammedBackend]
    def __init__(self, backends: _Optional[_Iterable[_Union[ProgrammedBackend, _Mapping]]] = ...) -> None: ...

class Flow(_message.Message):
    __slots__ = ("frontend_id", "backend_id", "frontend", "backend_address", "backend_port")
    FRONTEND_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    FRONTEND_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_PORT_FIELD_NUMBER: _ClassVar[int]
    frontend_id: int
    backend_id: int
    frontend: _types_pb2.Frontend
    backend_address: str
    backend_port: int
    def __init__(self, frontend_id: _Optional[int] = ..., backend_id: _Optional[int] = ..., frontend: _Optional[_Union[_types_pb2.Frontend, _Mapping]] = ..., backend_address: _Optional[str] = ..., backend_port: _Optional[int] = ...) -> None: ...

class DumpFlowsResponse(_message.Message):
    __slots__ = ("flows", "method", "duration_seconds", "namespaces", "errors")
    FLOWS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    flows: _containers.RepeatedCompositeFieldContainer[Flow]
    method: str
    duration_seconds: float
    namespaces: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, flows: _Optional[_Iterable[_Union[Flow, _Mapping]]] = ..., method: _Optional[str] = ..., duration_seconds: _Optional[float] = ..., namespaces: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("translations", "affinity_hits", "no_backend", "policy_denies", "rev_nat_hits", "rev_nat_misses", "rev_nat_cleaned", "affinity_misses", "dns_queries", "dns_answers", "dns_learned", "dns_unsolicited", "dns_malformed", "dns_truncated", "fqdn_denies", "fqdn_expired", "dns_pruned")
    TRANSLATIONS_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_HITS_FIELD_NUMBER: _ClassVar[int]
    NO_BACKEND_FIELD_NUMBER: _ClassVar[int]
    POLICY_DENIES_FIELD_NUMBER: _ClassVar[int]
    REV_NAT_HITS_FIELD_NUMBER: _ClassVar[int]
    REV_NAT_MISSES_FIELD_NUMBER: _ClassVar[int]
    REV_NAT_CLEANED_FIELD_NUMBER: _ClassVar[int]
    AFFINITY_MISSES_FIELD_NUMBER: _ClassVar[int]
    DNS_QUERIES_FIELD_NUMBER: _ClassVar[int]
    DNS_ANSWERS_FIELD_NUMBER: _ClassVar[int]
    DNS_LEARNED_FIELD_NUMBER: _ClassVar[int]
    DNS_UNSOLICITED_FIELD_NUMBER: _ClassVar[int]
    DNS_MALFORMED_FIELD_NUMBER: _ClassVar[int]
    DNS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    FQDN_DENIES_FIELD_NUMBER: _ClassVar[int]
    FQDN_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    DNS_PRUNED_FIELD_NUMBER: _ClassVar[int]
    translations: int
    affinity_hits: int
    no_backend: int
    policy_denies: int
    rev_nat_hits: int
    rev_nat_misses: int
    rev_nat_cleaned: int
    affinity_misses: int
    dns_queries: int
    dns_answers: int
    dns_learned: int
    dns_unsolicited: int
    dns_malformed: int
    dns_truncated: int
    fqdn_denies: int
    fqdn_expired: int
    dns_pruned: int
    def __init__(self, translations: _Optional[int] = ..., affinity_hits: _Optional[int] = ..., no_backend: _Optional[int] = ..., policy_denies: _Optional[int] = ..., rev_nat_hits: _Optional[int] = ..., rev_nat_misses: _Optional[int] = ..., rev_nat_cleaned: _Optional[int] = ..., affinity_misses: _Optional[int] = ..., dns_queries: _Optional[int] = ..., dns_answers: _Optional[int] = ..., dns_learned: _Optional[int] = ..., dns_unsolicited: _Optional[int] = ..., dns_malformed: _Optional[int] = ..., dns_truncated: _Optional[int] = ..., fqdn_denies: _Optional[int] = ..., fqdn_expired: _Optional[int] = ..., dns_pruned: _Optional[int] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node", "cgroup", "pin_dir", "applied_version", "adopted", "kernel", "capabilities")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_FIELD_NUMBER: _ClassVar[int]
    CGROUP_FIELD_NUMBER: _ClassVar[int]
    PIN_DIR_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADOPTED_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    node: str
    cgroup: str
    pin_dir: str
    applied_version: int
    adopted: bool
    kernel: str
    capabilities: _containers.ScalarMap[str, str]
    def __init__(self, node: _Optional[str] = ..., cgroup: _Optional[str] = ..., pin_dir: _Optional[str] = ..., applied_version: _Optional[int] = ..., adopted: _Optional[bool] = ..., kernel: _Optional[str] = ..., capabilities: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TerminateRequest(_message.Message):
    __slots__ = ("service", "backends", "dry_run")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    service: str
    backends: _containers.RepeatedCompositeFieldContainer[_types_pb2.Backend]
    dry_run: bool
    def __init__(self, service: _Optional[str] = ..., backends: _Optional[_Iterable[_Union[_types_pb2.Backend, _Mapping]]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class BackendTermination(_message.Message):
    __slots__ = ("address", "port", "found", "destroyed")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    address: str
    port: int
    found: int
    destroyed: int
    def __init__(self, address: _Optional[str] = ..., port: _Optional[int] = ..., found: _Optional[int] = ..., destroyed: _Optional[int] = ...) -> None: ...

class TerminatedSocket(_message.Message):
    __slots__ = ("netns", "cookie", "protocol", "state", "source", "destination", "result", "workload", "reason")
    NETNS_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    netns: str
    cookie: int
    protocol: _types_pb2.Protocol
    state: str
    source: str
    destination: str
    result: int
    workload: str
    reason: str
    def __init__(self, netns: _Optional[str] = ..., cookie: _Optional[int] = ..., protocol: _Optional[_Union[_types_pb2.Protocol, str]] = ..., state: _Optional[str] = ..., source: _Optional[str] = ..., destination: _Optional[str] = ..., result: _Optional[int] = ..., workload: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TerminationReport(_message.Message):
    __slots__ = ("id", "node", "service", "trigger", "dry_run", "method", "found", "destroyed", "failed", "duration_seconds", "namespaces", "backends", "sockets", "error", "at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    DESTROYED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    node: str
    service: str
    trigger: str
    dry_run: bool
    method: str
    found: int
    destroyed: int
    failed: int
    duration_seconds: float
    namespaces: int
    backends: _containers.RepeatedCompositeFieldContainer[BackendTermination]
    sockets: _containers.RepeatedCompositeFieldContainer[TerminatedSocket]
    error: str
    at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., node: _Optional[str] = ..., service: _Optional[str] = ..., trigger: _Optional[str] = ..., dry_run: _Optional[bool] = ..., method: _Optional[str] = ..., found: _Optional[int] = ..., destroyed: _Optional[int] = ..., failed: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., namespaces: _Optional[int] = ..., backends: _Optional[_Iterable[_Union[BackendTermination, _Mapping]]] = ..., sockets: _Optional[_Iterable[_Union[TerminatedSocket, _Mapping]]] = ..., error: _Optional[str] = ..., at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SocketStats(_message.Message):
    __slots__ = ("service", "backend_address", "backend_port", "protocol", "sockets", "states", "bytes_sent", "bytes_received", "srtt_us", "retransmits", "drops")
    class StatesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_PORT_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    SOCKETS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SRTT_US_FIELD_NUMBER: _ClassVar[int]
    RETRANSMITS_FIELD_NUMBER: _ClassVar[int]
    DROPS_FIELD_NUMBER: _ClassVar[int]
    service: str
    backend_address: str
    backend_port: int
    protocol: _types_pb2.Protocol
    sockets: int
    states: _containers.ScalarMap[str, int]
    bytes_sent: int
    bytes_received: int
    srtt_us: int
    retransmits: int
    drops: int
    def __init__(self, service: _Optional[str] = ..., backend_address: _Optional[str] = ..., backend_port: _Optional[int] = ..., protocol: _Optional[_Union[_types_pb2.Protocol, str]] = ..., sockets: _Optional[int] = ..., states: _Optional[_Mapping[str, int]] = ..., bytes_sent: _Optional[int] = ..., bytes_received: _Optional[int] = ..., srtt_us: _Optional[int] = ..., retransmits: _Optional[int] = ..., drops: _Optional[int] = ...) -> None: ...

class SocketStatsResponse(_message.Message):
    __slots__ = ("stats",)
    STATS_FIELD_NUMBER: _ClassVar[int]
    stats: _containers.RepeatedCompositeFieldContainer[SocketStats]
    def __init__(self, stats: _Optional[_Iterable[_Union[SocketStats, _Mapping]]] = ...) -> None: ...

class TerminationReports(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[TerminationReport]
    def __init__(self, reports: _Optional[_Iterable[_Union[TerminationReport, _Mapping]]] = ...) -> None: ...
