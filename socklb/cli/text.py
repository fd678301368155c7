"""The text output (-o text, the default): a table or a few lines per
socklb.v1 message type, for people; json and yaml keep the proto field names
for programs (socklb.cli.render)."""
from __future__ import annotations

import datetime as dt

from socklb.lb.addresses import join_host_port
from socklb.v1 import api_pb2, policy_pb2, types_pb2


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
    return f"{join_host_port(f.address, f.port)}/{_enum_word(types_pb2.Protocol, protocol, 'PROTOCOL_')}"


def _backend_row(b) -> list[str]:
    return [join_host_port(b.address, b.port), str(b.weight or 1),
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
            svc_rows.append(["", join_host_port(b.address, b.port), str(b.active_flows),
                             str(sum(x.sockets for x in b.sockets)),
                             f"{tcp.bytes_sent}/{tcp.bytes_received}" if tcp else "-",
                             f"{tcp.srtt_us}" if tcp else "-", str(tcp.retransmits) if tcp else "-",
                             str(udp.drops) if udp else "-"])
    def unread(n, part, text):
        return "?" if part in n.unavailable else text

    node_rows = [[n.node, unread(n, "flows", str(n.active_flows)),
                  unread(n, "counters", str(n.counters.translations)), unread(n, "counters", str(n.counters.no_backend)),
                  unread(n, "counters", str(n.counters.affinity_hits)),
                  unread(n, "counters", f"{n.counters.fqdn_denies}/{n.counters.fqdn_expired}"),
                  _time(n.reported_at)] for n in resp.nodes]
    notes = [f"{n.node}: {part} unavailable: {why}" for n in resp.nodes for part, why in sorted(n.unavailable.items())]
    workload_rows = [[w.name, _cgroup_status(w), _denied(w)] for w in resp.workloads]
    return (_table(["SERVICE", "BACKEND", "ACTIVE-FLOWS", "SOCKETS", "TCP-BYTES-OUT/IN", "SRTT-US",
                    "RETRANS", "UDP-DROPS"], svc_rows) + "\n\n" +
            _table(["NODE", "ACTIVE-FLOWS", "TRANSLATIONS", "NO-BACKEND", "AFFINITY-HITS", "FQDN-DENIED/EXPIRED",
                    "REPORTED"], node_rows)
            + ("\n\n" + _table(["WORKLOAD", "STATUS", "DENIED"], workload_rows) if workload_rows else "")
            + ("\n\n" + "\n".join(notes) + "\n(? = not read: the numbers above leave those nodes' parts out)"
               if notes else ""))


def text_termination(t) -> str:
    previewed = t.WhichOneof("previewed")
    head = (f"termination {t.id}  service {t.service or '-'}  trigger {t.trigger or '-'}"
            f"{'  (dry run)' if t.dry_run else ''}  created {_time(t.created)}\n"
            + (f"preview of {previewed.replace('_', ' ')} {getattr(t, previewed).name}: nothing written\n"
               if previewed else "") +
            f"found {t.found}  destroyed {t.destroyed}  failed {t.failed}"
            f"  pending {', '.join(t.pending_nodes) or '-'}")
    rows = [[r.node, r.method or "-", str(r.found), str(r.destroyed), str(r.failed),
             f"{r.duration_seconds * 1000:.1f} ms", str(r.namespaces), r.error or "-"] for r in t.reports]
    out = head + "\n" + _table(["NODE", "METHOD", "FOUND", "DESTROYED", "FAILED", "TOOK", "NETNS", "ERROR"], rows)
    sockets = [(r.node, s) for r in t.reports for s in r.sockets]
    socks = [[node, s.netns, s.state, s.source, s.destination,
              "listed" if t.dry_run else ("destroyed" if s.result == 0 else str(s.result))]
             for node, s in sockets]
    header = ["NODE", "NETNS", "STATE", "SOURCE", "DESTINATION", "RESULT"]
    if any(s.workload for _, s in sockets):  # a policy's: whose socket and why it is denied
        header += ["WORKLOAD", "REASON"]
        for row, (_, s) in zip(socks, sockets):
            row += [s.workload or "-", s.reason or "-"]
    if socks:
        out += "\n\n" + _table(header, socks)
    return out


def text_terminations(resp) -> str:
    # A policy termination is about workloads, not one service: "-".
    rows = [[t.id, t.service or "-", t.trigger or "-", "yes" if t.dry_run else "no", str(len(t.reports)),
             str(t.found), str(t.destroyed), ", ".join(t.pending_nodes) or "-", _time(t.created)]
            for t in resp.terminations]
    return _table(["ID", "SERVICE", "TRIGGER", "DRY-RUN", "NODES", "FOUND", "DESTROYED", "PENDING", "CREATED"], rows)


def text_event(ev) -> str:
    """REVISION PUT|DELETE NAME, then (but for services) the kind, then a summary of what was put."""
    line = f"{ev.revision} {_enum_word(api_pb2.WatchEvent.Type, ev.type, 'TYPE_').upper()} {ev.name}"
    if ev.kind not in (api_pb2.RESOURCE_KIND_UNSPECIFIED, api_pb2.RESOURCE_KIND_SERVICE):
        line += "  " + _enum_word(api_pb2.ResourceKind, ev.kind, "RESOURCE_KIND_").replace("_", "-")
    if ev.type != api_pb2.WatchEvent.TYPE_PUT:
        return line
    if ev.kind == api_pb2.RESOURCE_KIND_WORKLOAD:
        return line + f"  node {ev.workload.node}  cgroup {ev.workload.cgroup}"
    if ev.kind == api_pb2.RESOURCE_KIND_POLICY:
        return line + f"  selector {_labels(ev.policy.selector)}  rules {len(ev.policy.egress)}"
    if ev.kind == api_pb2.RESOURCE_KIND_LOCAL_REDIRECT:
        return line + f"  frontend {_redirect_frontend(ev.local_redirect)}"
    s = ev.service
    return line + f"  frontends {', '.join(_frontend(f) for f in s.frontends) or '-'}  backends {_backend_summary(s)}"


# --- policy resources ---------------------------------------------------------------------

def _labels(labels) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _cgroup_status(st) -> str:
    if not st.reported:
        return "cgroup: not reported"
    return "cgroup: found" if st.cgroup_found else "cgroup: not found"


def _denied(st) -> str:
    return str(st.denied) if st.reported else "-"


def _described(resource, *lines: str) -> str:
    """NAME  (version V), then the lines about it."""
    return "\n".join([f"{resource.name}  (version {resource.resource_version})", *lines])


def text_workload(w) -> str:
    return _described(w, f"  node {w.node}  cgroup {w.cgroup}  bypass socket LB: {_yes(w.bypass_socket_lb)}",
                      f"  labels: {_labels(w.labels)}", f"  addresses: {', '.join(w.addresses) or '-'}")


def text_workload_list(resp) -> str:
    statuses = {st.name: st for st in resp.status}
    rows = []
    for w in resp.workloads:
        st = statuses.get(w.name, api_pb2.WorkloadStatus(name=w.name))
        rows.append([w.name, w.node, w.cgroup, _labels(w.labels), _yes(w.bypass_socket_lb), _cgroup_status(st),
                     _denied(st), str(w.resource_version)])
    return _table(["NAME", "NODE", "CGROUP", "LABELS", "BYPASS", "STATUS", "DENIED", "VERSION"], rows) + \
        f"\n(workloads: {len(resp.workloads)}, revision {resp.revision})"


def _port_range(p) -> str:
    if p.port == 0:
        ports = "any"
    elif p.end_port and p.end_port != p.port:
        ports = f"{p.port}-{p.end_port}"
    else:
        ports = str(p.port)
    if p.protocol == types_pb2.PROTOCOL_UNSPECIFIED:
        return f"{ports}/tcp+udp"
    return f"{ports}/{_enum_word(types_pb2.Protocol, p.protocol, 'PROTOCOL_')}"


def _rule_row(i: int, rule) -> list[str]:
    return [str(i), _enum_word(policy_pb2.Action, rule.action, "ACTION_"), ", ".join(rule.to_services) or "-",
            ", ".join(rule.to_cidrs) or "-", ", ".join(rule.to_fqdns) or "-",
            ", ".join(_port_range(p) for p in rule.ports) or "any"]


def text_policy(p) -> str:
    rules = [_table(["#", "ACTION", "SERVICES", "CIDRS", "FQDNS", "PORTS"], [_rule_row(i, r) for i, r in enumerate(p.egress)],
                    indent="    ")] if p.egress else []
    return _described(p, f"  selector: {_labels(p.selector) if p.selector else 'every workload'}",
                      f"  egress rules: {len(p.egress)}", *rules)


def text_policy_list(resp) -> str:
    rows = [[p.name, _labels(p.selector) if p.selector else "(every workload)", str(len(p.egress)),
             str(p.resource_version)] for p in resp.policies]
    return _table(["NAME", "SELECTOR", "RULES", "VERSION"], rows) + \
        f"\n(policies: {len(resp.policies)}, revision {resp.revision})"


def _redirect_frontend(r) -> str:
    return f"service {r.service}" if r.service else _frontend(r.frontend)


def _backend_port(r) -> str:
    return str(r.backend_port) if r.backend_port else "the frontend's"


def text_redirect(r) -> str:
    return _described(r, f"  frontend: {_redirect_frontend(r)}",
                      f"  to the workloads on the client's node with: {_labels(r.selector)}",
                      f"  backend port: {_backend_port(r)}")


def text_redirect_list(resp) -> str:
    rows = [[r.name, _redirect_frontend(r), _labels(r.selector), _backend_port(r), str(r.resource_version)]
            for r in resp.local_redirects]
    return _table(["NAME", "FRONTEND", "SELECTOR", "BACKEND-PORT", "VERSION"], rows) + \
        f"\n(local redirects: {len(resp.local_redirects)}, revision {resp.revision})"


# The message types with a text form; render_text shows any other as JSON.
TEXT = {
    api_pb2.Service: text_service,
    api_pb2.ListServicesResponse: text_service_list,
    api_pb2.DeleteServiceResponse: text_delete,
    api_pb2.ListNodesResponse: text_nodes,
    api_pb2.StatsResponse: text_stats,
    api_pb2.WatchEvent: text_event,
    api_pb2.Termination: text_termination,
    api_pb2.ListTerminationsResponse: text_terminations,
    policy_pb2.Workload: text_workload,
    api_pb2.ListWorkloadsResponse: text_workload_list,
    policy_pb2.Policy: text_policy,
    api_pb2.ListPoliciesResponse: text_policy_list,
    policy_pb2.LocalRedirect: text_redirect,
    api_pb2.ListLocalRedirectsResponse: text_redirect_list,
}
