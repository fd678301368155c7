"""socklb: the operator CLI for the control plane (service socklb.v1.LoadBalancer).

  socklb service put -f FILE | get NAME | list | delete NAME
  socklb backend set|add SERVICE ADDR:PORT[@WEIGHT] ... | remove|drain SERVICE ADDR:PORT ...
  socklb node list
  socklb stats [--service S] [--node N]
  socklb watch [--from-revision R] [--count N]
  socklb terminate SERVICE [ADDR:PORT ...] | termination list | termination get ID

The CLI parses only its own syntax (ADDR:PORT[@WEIGHT], files, flags) and
refuses a weight of 0 (the API would read it as 1); every rule about what a
service may contain is the server's, which answers INVALID_ARGUMENT naming the
field. Exit codes: see EXIT_* below and docs/cli.md.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from dataclasses import dataclass

import grpc
import yaml
from google.protobuf import json_format

from socklb.grpcauth import channel_credentials, token_metadata
from socklb.lb.addresses import split_host_port
from socklb.v1 import api_pb2, api_pb2_grpc, types_pb2

DEFAULT_SERVER = "127.0.0.1:7400"
DEFAULT_TIMEOUT = 10.0
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1

EXIT_OK = 0
EXIT_ERROR = 1        # anything not listed below (INTERNAL, UNKNOWN, ...)
EXIT_INPUT = 2        # bad CLI input, INVALID_ARGUMENT, OUT_OF_RANGE
EXIT_NOT_FOUND = 3    # NOT_FOUND
EXIT_CONFLICT = 4     # ABORTED (expected version), ALREADY_EXISTS (create only), FAILED_PRECONDITION
EXIT_UNAVAILABLE = 5  # control plane unreachable, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
EXIT_DENIED = 6       # UNAUTHENTICATED, PERMISSION_DENIED
EXIT_INTERRUPTED = 130

_EXIT_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: EXIT_INPUT,
    grpc.StatusCode.OUT_OF_RANGE: EXIT_INPUT,
    grpc.StatusCode.NOT_FOUND: EXIT_NOT_FOUND,
    grpc.StatusCode.ABORTED: EXIT_CONFLICT,
    grpc.StatusCode.ALREADY_EXISTS: EXIT_CONFLICT,
    grpc.StatusCode.FAILED_PRECONDITION: EXIT_CONFLICT,
    grpc.StatusCode.UNAVAILABLE: EXIT_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: EXIT_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: EXIT_UNAVAILABLE,  # the store is full: retry once space is freed
    grpc.StatusCode.UNAUTHENTICATED: EXIT_DENIED,
    grpc.StatusCode.PERMISSION_DENIED: EXIT_DENIED,
}

BACKEND_STATES = {
    "active": types_pb2.BACKEND_STATE_ACTIVE,
    "draining": types_pb2.BACKEND_STATE_DRAINING,
    "quarantined": types_pb2.BACKEND_STATE_QUARANTINED,
}


class UsageError(Exception):
    """Bad command-line input: reported as `error: ...`, exit 2, nothing sent."""


def exit_code_for(code: grpc.StatusCode) -> int:
    return _EXIT_BY_CODE.get(code, EXIT_ERROR)


# --- argument syntax ------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    weight: int | None = None


def _parse_uint(text: str, what: str, spec: str, maximum: int) -> int:
    if not (text.isascii() and text.isdigit()):
        raise UsageError(f"{spec!r}: {what} {text!r} is not a non-negative integer")
    value = int(text)
    if value > maximum:
        raise UsageError(f"{spec!r}: {what} {value} is out of range 0..{maximum}")
    return value


def _split_host_port(spec: str, text: str) -> tuple[str, str]:
    try:
        addr, port = split_host_port(spec)
    except ValueError as e:
        raise UsageError(f"{text!r}: {e}") from None
    if port is None:
        raise UsageError(f"{text!r}: expected [ADDR]:PORT" if spec.startswith("[")
                         else f"{text!r}: expected ADDR:PORT (IPv6 as [ADDR]:PORT)")
    return addr, port


def parse_endpoint(text: str, allow_weight: bool = True) -> Endpoint:
    """ADDR:PORT[@WEIGHT], IPv6 as [ADDR]:PORT. The address itself is the server's to judge."""
    spec, weight = text, None
    if "@" in text:
        if not allow_weight:
            raise UsageError(f"{text!r}: a weight (@N) is not accepted here, give ADDR:PORT")
        spec, _, w = text.rpartition("@")
        weight = _parse_uint(w, "weight", text, UINT32_MAX)
        if weight == 0:
            # Backend.weight 0 is "unset" on the wire: the server would store weight 1.
            raise UsageError(f"{text!r}: weight 0 is refused: the API reads 0 as 1 "
                             "(to send a backend no new flows, drain it)")
    addr, port = _split_host_port(spec, text)
    if not addr:
        raise UsageError(f"{text!r}: missing address")
    return Endpoint(addr, _parse_uint(port, "port", text, 65535), weight)


def format_endpoint(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _uint_arg(maximum: int):
    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value} is out of range 0..{maximum}")
        return value
    parse.__name__ = "integer"
    return parse


# --- files -----------------------------------------------------------------------

def _plain(value):
    """YAML turns unquoted timestamps into datetimes; protobuf JSON wants RFC 3339 strings."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.timezone.utc)
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def load_document(path: str):
    """YAML or JSON (JSON is YAML) from a file, or stdin for '-'."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {e}") from e
    try:
        return _plain(yaml.safe_load(text))
    except yaml.YAMLError as e:
        raise UsageError(f"{path} is not valid YAML/JSON: {_yaml_problem(e)}") from e


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = " ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
    if mark is None or not problem:
        return str(e)
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def _parse_message(data, message, where: str):
    try:
        return json_format.ParseDict(data, message)
    except json_format.ParseError as e:
        raise UsageError(f"{where}: {e}") from e


def load_service(path: str) -> api_pb2.Service:
    data = load_document(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a mapping (a socklb.v1.Service), got {type(data).__name__}")
    return _parse_message(data, api_pb2.Service(), path)


def load_backends(path: str) -> list[types_pb2.Backend]:
    """A list of socklb.v1.Backend, or a mapping with a `backends` list (a Service file works)."""
    data = load_document(path)
    if isinstance(data, dict) and "backends" in data:
        data = data["backends"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise UsageError(f"{path}: expected a list of backends or a mapping with 'backends', "
                         f"got {type(data).__name__}")
    return [_parse_message(item, types_pb2.Backend(), f"{path}: backends[{i}]") for i, item in enumerate(data)]


# --- output ------------------------------------------------------------------------

def to_dict(msg) -> dict:
    return json_format.MessageToDict(msg, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True)


def to_json(msg, indent: int | None = 2) -> str:
    return json_format.MessageToJson(msg, always_print_fields_with_no_presence=True,
                                     preserving_proto_field_name=True, indent=indent)


def to_yaml(msg, explicit_start: bool = False) -> str:
    return yaml.safe_dump(to_dict(msg), sort_keys=False, explicit_start=explicit_start)


def emit(msg, output: str, out=None) -> None:
    out = out or sys.stdout
    if output == "json":
        print(to_json(msg), file=out)
    elif output == "yaml":
        out.write(to_yaml(msg))
    else:
        print(render_text(msg), file=out)
    out.flush()


def _enum_word(enum_type, value: int, prefix: str) -> str:
    try:
        name = enum_type.Name(value)
    except ValueError:
        return str(value)
    return name.removeprefix(prefix).lower()


def _table(header: list[str], rows: list[list[str]], indent: str = "") -> str:
    rows = [header] + rows
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(indent + line for line in lines)


def _time(ts) -> str:
    if not (ts.seconds or ts.nanos):
        return "-"
    return ts.ToDatetime(tzinfo=dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _age(ts) -> str:
    if not (ts.seconds or ts.nanos):
        return "-"
    seconds = int(dt.datetime.now(dt.timezone.utc).timestamp() - ts.seconds)
    return f"{max(seconds, 0)}s ago"


def _frontend(f) -> str:
    protocol = f.protocol or types_pb2.PROTOCOL_TCP  # unspecified is read as TCP (as Kubernetes)
    return f"{format_endpoint(f.address, f.port)}/{_enum_word(types_pb2.Protocol, protocol, 'PROTOCOL_')}"


def _backend_row(b) -> list[str]:
    return [format_endpoint(b.address, b.port), str(b.weight or 1),
            _enum_word(types_pb2.BackendState, b.state or types_pb2.BACKEND_STATE_ACTIVE, "BACKEND_STATE_"),
            b.node or "-", b.zone or "-", _time(b.drain_deadline)]


def _policy(svc) -> str:
    selection = _enum_word(types_pb2.Selection, svc.selection or types_pb2.SELECTION_RANDOM, "SELECTION_")
    mode = svc.affinity.mode or api_pb2.AFFINITY_MODE_NONE
    affinity = _enum_word(api_pb2.AffinityMode, mode, "AFFINITY_MODE_")
    if mode == api_pb2.AFFINITY_MODE_CLIENT:
        affinity += f" {svc.affinity.timeout_seconds or 10800}s"
    traffic = _enum_word(api_pb2.TrafficPolicy, svc.traffic_policy or api_pb2.TRAFFIC_POLICY_CLUSTER,
                         "TRAFFIC_POLICY_")
    return f"selection {selection}, affinity {affinity}, traffic {traffic}"


def text_service(svc) -> str:
    lines = [f"{svc.name}  (version {svc.resource_version})",
             f"  frontends: {', '.join(_frontend(f) for f in svc.frontends) or '-'}",
             f"  {_policy(svc)}",
             f"  backends: {len(svc.backends)}"]
    if svc.backends:
        lines.append(_table(["ADDRESS", "WEIGHT", "STATE", "NODE", "ZONE", "DRAIN-DEADLINE"],
                            [_backend_row(b) for b in svc.backends], indent="    "))
    return "\n".join(lines)


def _backend_summary(svc) -> str:
    active = sum(1 for b in svc.backends if b.state in (types_pb2.BACKEND_STATE_UNSPECIFIED,
                                                         types_pb2.BACKEND_STATE_ACTIVE))
    return f"{active}/{len(svc.backends)}"


def text_service_list(resp) -> str:
    rows = [[s.name, ", ".join(_frontend(f) for f in s.frontends) or "-", _backend_summary(s),
             str(s.resource_version)] for s in resp.services]
    return _table(["NAME", "FRONTENDS", "ACTIVE/BACKENDS", "VERSION"], rows) + \
        f"\n(services: {len(resp.services)}, revision {resp.revision})"


def text_delete(resp, name: str = "") -> str:
    what = "deleted" if resp.existed else "nothing to delete:"
    return f"{what} {name or 'service'} (revision {resp.revision})"


def text_nodes(resp) -> str:
    rows = [[n.name, _enum_word(api_pb2.NodeHealth, n.health, "NODE_HEALTH_"),
             f"{n.applied_version}/{n.desired_version}", n.replica or "-", n.kernel or "-",
             _age(n.last_seen), n.last_error or "-"] for n in resp.nodes]
    out = _table(["NAME", "HEALTH", "APPLIED/DESIRED", "REPLICA", "KERNEL", "LAST-SEEN", "LAST-ERROR"], rows)
    details = [line for n in resp.nodes for line in _node_details(n)]
    return out + ("\n\n" + "\n".join(details) if details else "")


def _node_details(n) -> list[str]:
    """The ways the node's duties take, the kernel features it does not
    have (refused or missing), and the statistics it cannot read (capabilities: "yes", "no: <why>", or
    the way a duty takes)."""
    caps = dict(sorted(n.capabilities.items()))
    ways = [f"{k}={v}" for k, v in caps.items() if v != "yes" and not v.startswith("no:")]
    refused = [f"{k} ({v.removeprefix('no:').strip()})" for k, v in caps.items() if v.startswith("no:")]
    lines = []
    if ways:
        lines.append(f"{n.name}: " + "  ".join(ways))
    if refused:
        lines.append(f"{n.name}: not available: " + "; ".join(refused))
    if n.stats_unavailable:
        lines.append(f"{n.name}: statistics unavailable: "
                     + "; ".join(f"{k} ({v})" for k, v in sorted(n.stats_unavailable.items())))
    return lines


def text_stats(resp) -> str:
    svc_rows = []
    for s in resp.services:
        svc_rows.append([s.service, "*", str(s.active_flows), "", "", "", "", ""])
        for b in s.backends:
            socks = {_enum_word(types_pb2.Protocol, x.protocol, "PROTOCOL_"): x for x in b.sockets}
            tcp, udp = socks.get("tcp"), socks.get("udp")
            svc_rows.append(["", format_endpoint(b.address, b.port), str(b.active_flows),
                             str(sum(x.sockets for x in b.sockets)),
                             f"{tcp.bytes_sent}/{tcp.bytes_received}" if tcp else "-",
                             f"{tcp.srtt_us}" if tcp else "-", str(tcp.retransmits) if tcp else "-",
                             str(udp.drops) if udp else "-"])
    def unread(n, part, text):
        return "?" if part in n.unavailable else text

    node_rows = [[n.node, unread(n, "flows", str(n.active_flows)),
                  unread(n, "counters", str(n.counters.translations)), unread(n, "counters", str(n.counters.no_backend)),
                  unread(n, "counters", str(n.counters.affinity_hits)), _time(n.reported_at)] for n in resp.nodes]
    notes = [f"{n.node}: {part} unavailable: {why}" for n in resp.nodes for part, why in sorted(n.unavailable.items())]
    return (_table(["SERVICE", "BACKEND", "ACTIVE-FLOWS", "SOCKETS", "TCP-BYTES-OUT/IN", "SRTT-US",
                    "RETRANS", "UDP-DROPS"], svc_rows) + "\n\n" +
            _table(["NODE", "ACTIVE-FLOWS", "TRANSLATIONS", "NO-BACKEND", "AFFINITY-HITS", "REPORTED"], node_rows)
            + ("\n\n" + "\n".join(notes) + "\n(? = not read: the numbers above leave those nodes' parts out)"
               if notes else ""))


def text_termination(t) -> str:
    head = (f"termination {t.id}  service {t.service}  trigger {t.trigger or '-'}"
            f"{'  (dry run)' if t.dry_run else ''}  created {_time(t.created)}\n"
            f"found {t.found}  destroyed {t.destroyed}  failed {t.failed}"
            f"  pending {', '.join(t.pending_nodes) or '-'}")
    rows = [[r.node, r.method or "-", str(r.found), str(r.destroyed), str(r.failed),
             f"{r.duration_seconds * 1000:.1f} ms", str(r.namespaces), r.error or "-"] for r in t.reports]
    out = head + "\n" + _table(["NODE", "METHOD", "FOUND", "DESTROYED", "FAILED", "TOOK", "NETNS", "ERROR"], rows)
    socks = [[r.node, s.netns, s.state, s.source, s.destination,
              "listed" if t.dry_run else ("destroyed" if s.result == 0 else str(s.result))]
             for r in t.reports for s in r.sockets]
    if socks:
        out += "\n\n" + _table(["NODE", "NETNS", "STATE", "SOURCE", "DESTINATION", "RESULT"], socks)
    return out


def text_terminations(resp) -> str:
    rows = [[t.id, t.service, t.trigger or "-", "yes" if t.dry_run else "no", str(len(t.reports)),
             str(t.found), str(t.destroyed), ", ".join(t.pending_nodes) or "-", _time(t.created)]
            for t in resp.terminations]
    return _table(["ID", "SERVICE", "TRIGGER", "DRY-RUN", "NODES", "FOUND", "DESTROYED", "PENDING", "CREATED"], rows)


def text_event(ev) -> str:
    kind = _enum_word(api_pb2.WatchEvent.Type, ev.type, "TYPE_").upper()
    line = f"{ev.revision} {kind} {ev.name}"
    if ev.type == api_pb2.WatchEvent.TYPE_PUT:
        s = ev.service
        line += f"  frontends {', '.join(_frontend(f) for f in s.frontends) or '-'}  backends {_backend_summary(s)}"
    return line


_TEXT = {
    api_pb2.Service: text_service,
    api_pb2.ListServicesResponse: text_service_list,
    api_pb2.DeleteServiceResponse: text_delete,
    api_pb2.ListNodesResponse: text_nodes,
    api_pb2.StatsResponse: text_stats,
    api_pb2.WatchEvent: text_event,
    api_pb2.Termination: text_termination,
    api_pb2.ListTerminationsResponse: text_terminations,
}


def render_text(msg) -> str:
    render = _TEXT.get(type(msg))
    return render(msg) if render else to_json(msg)


# --- the connection ----------------------------------------------------------------

class Client:
    def __init__(self, server: str, timeout: float | None, tls_ca: str = "", tls_cert: str = "",
                 tls_key: str = "", token: str = ""):
        self.server = server
        self.timeout = timeout
        if tls_ca or tls_cert:
            creds = channel_credentials(tls_ca or None, tls_cert or None, tls_key or None)
            self.channel = grpc.secure_channel(server, creds)
        else:
            self.channel = grpc.insecure_channel(server)
        self.metadata = token_metadata(token)
        self.stub = api_pb2_grpc.LoadBalancerStub(self.channel)

    def call(self, method: str, request):
        return getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)

    def connected(self) -> bool:
        """Whether the channel reached the server (tells a refused connection from a server's answer)."""
        ready = grpc.channel_ready_future(self.channel)
        try:
            ready.result(timeout=0.5)
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            ready.cancel()  # else it keeps polling the channel close() shuts

    def close(self) -> None:
        self.channel.close()


def report_rpc_error(e: grpc.RpcError, client: Client) -> int:
    code = e.code() if callable(getattr(e, "code", None)) else grpc.StatusCode.UNKNOWN
    details = (e.details() if callable(getattr(e, "details", None)) else None) or str(e)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not client.connected():
        print(f"error: {code.name}: cannot reach the control plane at {client.server}: {details}",
              file=sys.stderr)
    else:
        print(f"error: {code.name}: {details}", file=sys.stderr)
    return exit_code_for(code)


# --- commands ------------------------------------------------------------------------

def cmd_service_put(args, client: Client) -> int:
    req = api_pb2.PutServiceRequest(service=load_service(args.file), expected_version=args.expected_version,
                                    create_only=args.create_only)
    emit(client.call("PutService", req), args.output)
    return EXIT_OK


def cmd_service_get(args, client: Client) -> int:
    emit(client.call("GetService", api_pb2.GetServiceRequest(name=args.name)), args.output)
    return EXIT_OK


def cmd_service_list(args, client: Client) -> int:
    emit(client.call("ListServices", api_pb2.ListServicesRequest()), args.output)
    return EXIT_OK


def cmd_service_delete(args, client: Client) -> int:
    req = api_pb2.DeleteServiceRequest(name=args.name, expected_version=args.expected_version)
    resp = client.call("DeleteService", req)
    if args.output == "text":
        print(text_delete(resp, args.name), flush=True)
    else:
        emit(resp, args.output)
    return EXIT_OK


def backends_from_args(args) -> list[types_pb2.Backend]:
    """-f FILE backends as written, then the listed ones with --node/--zone/--state applied."""
    backends = load_backends(args.file) if args.file else []
    for spec in args.backends:
        ep = parse_endpoint(spec)
        b = types_pb2.Backend(address=ep.address, port=ep.port, weight=ep.weight or 0,
                              node=args.node or "", zone=args.zone or "")
        if args.state:
            b.state = BACKEND_STATES[args.state]
        backends.append(b)
    return backends


def cmd_backend_set(args, client: Client) -> int:
    if not (args.backends or args.file or args.none):
        raise UsageError("give backends (ADDR:PORT[@WEIGHT] ... or -f FILE), or --none to remove them all")
    if args.none and (args.backends or args.file):
        raise UsageError("--none sets no backends: do not list any")
    req = api_pb2.SetBackendsRequest(service=args.service, backends=backends_from_args(args),
                                     expected_version=args.expected_version)
    emit(client.call("SetBackends", req), args.output)
    return EXIT_OK


def cmd_backend_add(args, client: Client) -> int:
    if not (args.backends or args.file):
        raise UsageError("give backends: ADDR:PORT[@WEIGHT] ... or -f FILE")
    req = api_pb2.AddBackendsRequest(service=args.service, backends=backends_from_args(args),
                                     expected_version=args.expected_version)
    emit(client.call("AddBackends", req), args.output)
    return EXIT_OK


def backend_refs(specs: list[str]) -> list[api_pb2.BackendRef]:
    eps = [parse_endpoint(s, allow_weight=False) for s in specs]
    return [api_pb2.BackendRef(address=e.address, port=e.port) for e in eps]


def cmd_backend_remove(args, client: Client) -> int:
    req = api_pb2.RemoveBackendsRequest(service=args.service, backends=backend_refs(args.backends),
                                        keep_sockets=args.keep_sockets, expected_version=args.expected_version)
    emit(client.call("RemoveBackends", req), args.output)
    return EXIT_OK


def cmd_backend_drain(args, client: Client) -> int:
    req = api_pb2.DrainBackendsRequest(service=args.service, backends=backend_refs(args.backends),
                                       deadline_seconds=args.deadline, expected_version=args.expected_version)
    emit(client.call("DrainBackends", req), args.output)
    return EXIT_OK


def cmd_node_list(args, client: Client) -> int:
    emit(client.call("ListNodes", api_pb2.ListNodesRequest()), args.output)
    return EXIT_OK


def cmd_stats(args, client: Client) -> int:
    emit(client.call("GetStats", api_pb2.GetStatsRequest(service=args.service, node=args.node)), args.output)
    return EXIT_OK


def cmd_terminate(args, client: Client) -> int:
    req = api_pb2.TerminateFlowsRequest(service=args.service, backends=backend_refs(args.backends),
                                        dry_run=args.dry_run)
    term = client.call("TerminateFlows", req)
    if args.wait:
        # Poll until every node that was connected has reported (bounded by --wait seconds).
        end = time.monotonic() + args.wait
        while term.pending_nodes and time.monotonic() < end:
            time.sleep(0.2)
            term = client.call("GetTermination", api_pb2.GetTerminationRequest(id=term.id))
    emit(term, args.output)
    return EXIT_OK


def cmd_termination_get(args, client: Client) -> int:
    emit(client.call("GetTermination", api_pb2.GetTerminationRequest(id=args.id)), args.output)
    return EXIT_OK


def cmd_termination_list(args, client: Client) -> int:
    out = api_pb2.ListTerminationsResponse()
    token = ""
    while True:  # every page: the control plane keeps at most 1000 terminations
        page = client.call("ListTerminations", api_pb2.ListTerminationsRequest(
            service=args.service, page_size=1000, page_token=token))
        out.terminations.extend(page.terminations)
        token = page.next_page_token
        if not token:
            break
    emit(out, args.output)
    return EXIT_OK


def emit_event(ev, output: str) -> None:
    """One event per line (json: JSON Lines; yaml: one document each) so a pipe sees it at once."""
    if output == "json":
        print(to_json(ev, indent=None))
    elif output == "yaml":
        sys.stdout.write(to_yaml(ev, explicit_start=True))
    else:
        print(text_event(ev))
    sys.stdout.flush()


def cmd_watch(args, client: Client) -> int:
    if args.count == 0:
        return EXIT_OK
    # No deadline on the stream itself: it lasts until Ctrl-C or --count events.
    call = client.stub.Watch(api_pb2.WatchRequest(from_revision=args.from_revision), metadata=client.metadata)
    seen = 0
    try:
        for ev in call:
            emit_event(ev, args.output)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a watch ends
    finally:
        call.cancel()
    return EXIT_OK


# --- the parser ----------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"error: {message} (see '{self.prog} --help')\n")


def _global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
    """On the top parser with defaults; repeated on each subcommand (suppressed) so they go anywhere."""
    def d(value):
        return value if defaults else argparse.SUPPRESS

    g = p.add_argument_group("global options")
    g.add_argument("--server", metavar="HOST:PORT",
                   default=d(os.environ.get("SOCKLB_SERVER") or DEFAULT_SERVER),
                   help=f"control plane address (default: $SOCKLB_SERVER or {DEFAULT_SERVER})")
    g.add_argument("-o", "--output", choices=("text", "json", "yaml"), default=d("text"),
                   help="output format (default text; json/yaml keep the proto field names)")
    g.add_argument("--timeout", type=float, metavar="SECONDS", default=d(DEFAULT_TIMEOUT),
                   help=f"deadline of each call in seconds (default {DEFAULT_TIMEOUT:g}; not applied to watch)")
    g.add_argument("--tls-ca", metavar="PEM", default=d(os.environ.get("SOCKLB_TLS_CA", "")),
                   help="CA of the control plane's certificate: connect with TLS ($SOCKLB_TLS_CA)")
    g.add_argument("--tls-cert", metavar="PEM", default=d(os.environ.get("SOCKLB_TLS_CERT", "")),
                   help="client certificate for mTLS ($SOCKLB_TLS_CERT)")
    g.add_argument("--tls-key", metavar="PEM", default=d(os.environ.get("SOCKLB_TLS_KEY", "")),
                   help="client key for mTLS ($SOCKLB_TLS_KEY)")
    g.add_argument("--token", metavar="TOKEN", default=d(os.environ.get("SOCKLB_TOKEN", "")),
                   help="bearer token ($SOCKLB_TOKEN)")


def _add(sub, name: str, fn, help: str, **kw) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, **kw)
    _global_options(p, defaults=False)
    p.set_defaults(func=fn)
    return p


def _expected_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expected-version", type=_uint_arg(UINT64_MAX), default=0, metavar="N",
                   help="write only if the service's resource_version is N (else ABORTED, exit 4); 0: always")


def _service_commands(sub) -> None:
    svc = sub.add_parser("service", help="put, get, list, delete services").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = _add(svc, "put", cmd_service_put, "create or replace a service from a YAML/JSON socklb.v1.Service")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="YAML or JSON file, '-' for stdin")
    p.add_argument("--create-only", action="store_true", help="fail (ALREADY_EXISTS, exit 4) if it exists")
    _expected_version(p)
    p = _add(svc, "get", cmd_service_get, "show one service")
    p.add_argument("name", metavar="NAME")
    _add(svc, "list", cmd_service_list, "list the services")
    p = _add(svc, "delete", cmd_service_delete, "delete a service (idempotent)")
    p.add_argument("name", metavar="NAME")
    _expected_version(p)


def _backend_specs(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("backends", nargs="*", metavar="ADDR:PORT[@WEIGHT]",
                   help="backend; IPv6 as [ADDR]:PORT; PORT 0 = the frontend's port; WEIGHT 1..65535, default 1")
    p.add_argument("-f", "--file", metavar="FILE",
                   help="YAML/JSON list of socklb.v1.Backend (or a mapping with 'backends'), '-' for stdin")
    p.add_argument("--node", metavar="NODE", help="node running the listed backends (traffic policy LOCAL)")
    p.add_argument("--zone", metavar="ZONE", help="zone of the listed backends")
    p.add_argument("--state", choices=sorted(BACKEND_STATES), help="state of the listed backends (default active)")
    _expected_version(p)


def _backend_commands(sub) -> None:
    be = sub.add_parser("backend", help="set, add, remove, drain backends of a service").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = _add(be, "set", cmd_backend_set, "replace all backends of a service")
    _backend_specs(p)
    p.add_argument("--none", action="store_true", help="remove every backend")
    p = _add(be, "add", cmd_backend_add, "add backends (a backend with the same ADDR:PORT is replaced)")
    _backend_specs(p)
    p = _add(be, "remove", cmd_backend_remove, "remove backends (absent ones are ignored)")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("backends", nargs="+", metavar="ADDR:PORT")
    p.add_argument("--keep-sockets", action="store_true",
                   help="keep the sockets still connected to them instead of terminating them")
    _expected_version(p)
    p = _add(be, "drain", cmd_backend_drain, "stop new flows to backends; existing flows live on")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("backends", nargs="+", metavar="ADDR:PORT")
    p.add_argument("--deadline", type=_uint_arg(UINT32_MAX), default=0, metavar="SECONDS",
                   help="remove them (and end their flows) after SECONDS; default 0: no deadline")
    _expected_version(p)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="socklb", description="Operate the socklb control plane (socklb.v1.LoadBalancer).",
               epilog="exit codes: 0 ok, 1 other error, 2 bad input, 3 not found, 4 conflict, "
                      "5 control plane unavailable, 6 not authenticated or not allowed")
    _global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _service_commands(sub)
    _backend_commands(sub)
    nodes = sub.add_parser("node", help="list nodes").add_subparsers(dest="action", metavar="ACTION", required=True)
    _add(nodes, "list", cmd_node_list, "list the nodes and their health")
    s = _add(sub, "stats", cmd_stats, "active flows per service and backend, counters per node")
    s.add_argument("--service", default="", metavar="SERVICE", help="only this service")
    s.add_argument("--node", default="", metavar="NODE", help="only this node")
    t = _add(sub, "terminate", cmd_terminate,
             "terminate (or --dry-run: list) the flows of a service's backends on every node")
    t.add_argument("service", metavar="SERVICE")
    t.add_argument("backends", nargs="*", metavar="ADDR:PORT", help="only flows to these backends (default: all)")
    t.add_argument("--dry-run", action="store_true", help="list the flows, terminate nothing")
    t.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for every node's report (0: return at once)")
    terms = sub.add_parser("termination", help="show terminations").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    g = _add(terms, "get", cmd_termination_get, "one termination with every node's report")
    g.add_argument("id", metavar="ID")
    tl = _add(terms, "list", cmd_termination_list, "terminations, newest first")
    tl.add_argument("--service", default="", metavar="SERVICE")
    w = _add(sub, "watch", cmd_watch, "stream service changes until Ctrl-C")
    w.add_argument("--from-revision", type=_uint_arg(UINT64_MAX), default=0, metavar="R",
                   help="events after revision R; 0 (default): the current services first, then changes")
    w.add_argument("--count", type=_uint_arg(UINT64_MAX), default=None, metavar="N", help="stop after N events")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """As parse_args, but backends may come after options too: `add web A:1 --node n B:2`."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "backends", None), list) and not any(x.startswith("-") for x in extra):
        args.backends += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else EXIT_INPUT
    if args.timeout is not None and args.timeout <= 0:
        args.timeout = None
    try:
        client = Client(args.server, args.timeout, args.tls_ca, args.tls_cert, args.tls_key, args.token)
    except OSError as e:
        print(f"error: TLS files: {e}", file=sys.stderr)
        return EXIT_INPUT
    try:
        return args.func(args, client)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except grpc.RpcError as e:
        return report_rpc_error(e, client)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # e.g. `socklb watch | head -1`: the reader left.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
