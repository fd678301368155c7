"""socklb-dataplane: the node agent and its operator commands.

  run        load + attach (or adopt) the programs, serve the admin API, and in
             standalone mode apply a desired-state file (re-read on change/SIGHUP)
  apply      send a state file to a running agent
  terminate  terminate (or --dry-run: list) a service's flows on this node
  dump       services | backends | flows | counters | state | info | terminations | sockets |
             workloads | policy
  detach     remove the programs and pins
  exec       run a command inside the load-balanced cgroup
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
from google.protobuf import json_format

from socklb.grpcauth import channel_credentials
from socklb.lb.addresses import split_host_port
from socklb.lb.errors import InvalidState
from socklb.observability import metrics
from socklb.observability.logs import setup_logging
from socklb.observability.tracing import setup_tracing, shutdown_tracing
from socklb.v1 import node_pb2, node_pb2_grpc, types_pb2

from . import layout
from .fqdn_prune import DEFAULT_INTERVAL as DNS_PRUNE_INTERVAL
from .kernel import cgroup2_mount
from .loader import DNS_WAYS, WORKLOAD_MATCHES, Capacity, Datapath, LoadError, detach
from .mapbatch import MAP_WRITES, MAP_WRITES_ENV
from .sockdestroy import POLICY_JUDGE_ENV, POLICY_JUDGES
from .statefile import load_state

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/socklb")
DEFAULT_ADMIN_SOCKET = Path("/run/socklb/admin.sock")
DEFAULT_CGROUP = "socklb"

log = logging.getLogger("socklb.dataplane")


class CliError(Exception):
    pass


def resolve_cgroup(value: str, create: bool) -> Path:
    path = Path(value)
    if not path.is_absolute():
        path = cgroup2_mount() / value
    if not path.exists():
        if not create:
            raise CliError(f"cgroup {path} does not exist")
        path.mkdir(parents=True)
    if not (path / "cgroup.procs").exists():
        raise CliError(f"{path} is not a cgroup v2 directory")
    return path


# --- run -------------------------------------------------------------------

FLOW_READERS = ("auto", "map-iter", "socket-iter")
# How often workloads' cgroups are looked up again: one registered before its
# cgroup exists is enforced this long after the cgroup appears, at most.
WORKLOAD_RECHECK_SECONDS = 2.0

def cmd_run(args) -> int:
    # The agent's modules take ~0.15 s to import: only `run` pays for them, not the admin commands.
    from . import admin
    from .kernel_agent import load_agent
    from .sync_client import SyncClient

    if args.flow_reader not in FLOW_READERS:  # argparse does not check a default from the environment
        raise CliError(f"SOCKLB_FLOW_READER={args.flow_reader!r}: expected one of {', '.join(FLOW_READERS)}")
    if args.dns_learner not in DNS_WAYS:
        raise CliError(f"SOCKLB_DNS_LEARNER={args.dns_learner!r}: expected one of {', '.join(DNS_WAYS)}")
    if args.policy_judge not in POLICY_JUDGES:
        raise CliError(f"{POLICY_JUDGE_ENV}={args.policy_judge!r}: expected one of {', '.join(POLICY_JUDGES)}")
    if args.map_writes not in MAP_WRITES:
        raise CliError(f"{MAP_WRITES_ENV}={args.map_writes!r}: expected one of {', '.join(MAP_WRITES)}")
    if args.workload_match not in WORKLOAD_MATCHES:
        raise CliError(f"SOCKLB_WORKLOAD_MATCH={args.workload_match!r}: expected one of "
                       f"{', '.join(WORKLOAD_MATCHES)}")
    setup_tracing("socklb-dataplane", {"service.instance.id": args.node})  # if OTEL_* ask for export
    cap = Capacity(services=args.services_max, backends=args.backends_max,
                   affinity=args.affinity_max, rev_nat=args.rev_nat_max)
    dp = Datapath(pin_dir=Path(args.pin_dir), cgroup=resolve_cgroup(args.cgroup, create=True), capacity=cap,
                  workload_match=args.workload_match, dns=args.dns_learner)
    try:
        agent = load_agent(dp, args.node, terminate_method=args.terminate_method, flow_method=args.flow_reader,
                           policy_judge=args.policy_judge, map_writes=args.map_writes)
    except (LoadError, OSError) as e:
        raise CliError(f"cannot load the datapath: {e}") from e

    reload = threading.Event()
    stop = threading.Event()
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def apply_file() -> None:
        try:
            agent.apply(load_state(args.state))
        except InvalidState as e:
            log.error("state file rejected, nothing changed: %s", e)
        except OSError as e:
            log.error("applying %s failed, previous state restored: %s", args.state, e)
        except Exception:  # a bug must not take the node down: it keeps its state and the next edit
            log.exception("applying %s failed unexpectedly, nothing changed", args.state)

    if args.state and args.controlplane:
        raise CliError("give either --state (standalone) or --controlplane, not both")
    mtime = None
    if args.state:
        mtime = _mtime(args.state)
        apply_file()
    client = None
    if args.controlplane:
        creds = None
        if args.tls_ca or args.tls_cert:
            try:
                creds = channel_credentials(args.tls_ca or None, args.tls_cert or None, args.tls_key or None)
            except OSError as e:
                raise CliError(f"TLS files: {e}") from e
        client = SyncClient(agent, [a.strip() for a in args.controlplane.split(",") if a.strip()],
                            stats_interval=args.stats_interval,
                            capabilities={"socket_lb": "cgroup-sock-addr"},
                            credentials=creds, token=args.token)
        client.start()
    server = admin.serve(agent, Path(args.admin_socket))
    try:
        metrics.serve(args.metrics_listen)
    except (OSError, ValueError) as e:
        raise CliError(f"--metrics-listen {args.metrics_listen}: {e}") from e
    metrics.register(lambda: metrics.bpf_counter_families(agent.statistics.counter_values()))
    log.info("ready: node %s, cgroup %s, pins %s, admin %s", args.node, dp.cgroup, dp.pin_dir, args.admin_socket)
    next_recheck = time.monotonic() + WORKLOAD_RECHECK_SECONDS
    next_prune = time.monotonic() + args.dns_prune_interval if args.dns_prune_interval > 0 else None
    try:
        while not stop.wait(1.0):
            if time.monotonic() >= next_recheck:
                next_recheck = time.monotonic() + WORKLOAD_RECHECK_SECONDS
                try:
                    agent.recheck_workloads()
                except Exception:  # the maps are restored; the next round tries again
                    log.exception("re-checking workload cgroups failed")
            if next_prune is not None and time.monotonic() >= next_prune:
                next_prune = time.monotonic() + args.dns_prune_interval
                try:
                    agent.prune_learned()
                except Exception:  # what stays is evicted by the LRU; the next round tries again
                    log.exception("pruning expired DNS-learned entries failed")
            if args.state:
                now = _mtime(args.state)
                if reload.is_set() or now != mtime:
                    reload.clear()
                    mtime = now
                    apply_file()
    finally:
        if client is not None:
            client.stop()
        server.stop(grace=1).wait()
        # Programs stay attached and maps pinned: stopping the agent must not
        # interrupt traffic. `detach` removes them.
        log.info("stopped; programs stay attached (use `detach` to remove them)")
        shutdown_tracing()  # flush the spans still batched
    return 0


def _mtime(path) -> float | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


# --- admin client commands ------------------------------------------------

def _stub(args) -> node_pb2_grpc.NodeAdminStub:
    path = Path(args.admin_socket)
    if not path.exists():
        raise CliError(f"no agent is listening on {path} (is `socklb-dataplane run` running?)")
    return node_pb2_grpc.NodeAdminStub(grpc.insecure_channel(f"unix://{path}"))


def _print(msg, args) -> None:
    if args.output == "json":
        print(json_format.MessageToJson(msg, always_print_fields_with_no_presence=True, indent=2))
    else:
        print(json_format.MessageToJson(msg, indent=2) if msg.ByteSize() else "(empty)")


def cmd_apply(args) -> int:
    state = load_state(args.file)
    resp = _stub(args).ApplyState(node_pb2.ApplyStateRequest(full=state), timeout=args.timeout)
    _print(resp, args)
    return 0


def _policy_view(stub, args) -> dict:
    """`dump workloads|policy`: the policy maps, read from the agent's pin
    dir, named through its state (policy_dump.py)."""
    from . import policy_dump  # as for `run`: only these two views pay for the map modules

    info = stub.GetInfo(node_pb2.GetInfoRequest(), timeout=args.timeout)
    state = stub.GetState(node_pb2.GetStateRequest(), timeout=args.timeout)
    entries, denied = policy_dump.read_pinned(Path(info.pin_dir))
    ids = policy_dump.cgroup_ids(state, cgroup2_mount())
    if args.what == "workloads":
        return policy_dump.workloads_view(state, entries, ids, denied)
    if args.what == "fqdn":
        from .dns import boottime_ns
        learned, counters = policy_dump.read_learned(Path(info.pin_dir))
        return policy_dump.fqdn_view(state, entries, ids, learned, counters, boottime_ns())
    services = stub.DumpServices(node_pb2.DumpRequest(), timeout=args.timeout)
    return policy_dump.policy_view(state, entries, ids, services)


def cmd_dump(args) -> int:
    stub = _stub(args)
    if args.what in ("workloads", "policy", "fqdn"):
        print(json.dumps(_policy_view(stub, args), indent=2))
        return 0
    req = node_pb2.DumpRequest()
    call = {
        "services": lambda: stub.DumpServices(req, timeout=args.timeout),
        "backends": lambda: stub.DumpBackends(req, timeout=args.timeout),
        "flows": lambda: stub.DumpFlows(req, timeout=args.timeout),
        "counters": lambda: stub.GetCounters(req, timeout=args.timeout),
        "state": lambda: stub.GetState(node_pb2.GetStateRequest(), timeout=args.timeout),
        "info": lambda: stub.GetInfo(node_pb2.GetInfoRequest(), timeout=args.timeout),
        "terminations": lambda: stub.DumpTerminations(req, timeout=args.timeout),
        "sockets": lambda: stub.GetSocketStats(req, timeout=args.timeout),
    }[args.what]
    _print(call(), args)
    return 0


def _backend_arg(text: str):
    try:
        host, port = split_host_port(text)
    except ValueError:
        host, port = "", None
    if not host or port is None or not port.isdigit():
        raise CliError(f"{text!r}: expected ADDRESS:PORT (IPv6 as [addr]:port)")
    return types_pb2.Backend(address=host, port=int(port))


def cmd_terminate(args) -> int:
    req = node_pb2.TerminateRequest(service=args.service, backends=[_backend_arg(b) for b in args.backends],
                                    dry_run=args.dry_run)
    report = _stub(args).Terminate(req, timeout=args.timeout)
    _print(report, args)
    return 1 if report.error else 0


def cmd_detach(args) -> int:
    pin_dir = Path(args.pin_dir)
    if not pin_dir.exists():
        print(f"{pin_dir} does not exist: nothing to detach")
        return 0  # idempotent, so cleanup scripts can run it twice
    removed = detach(pin_dir)
    for p in removed:
        print(f"removed {p}")
    return 0


def cmd_exec(args) -> int:
    if not args.command:
        raise CliError("exec: give a command after --")
    cg = resolve_cgroup(args.cgroup, create=args.create)
    (cg / "cgroup.procs").write_text(str(os.getpid()))
    try:
        os.execvp(args.command[0], args.command)
    except OSError as e:
        raise CliError(f"exec {args.command[0]}: {e.strerror}") from e
    return 127


# --- main ------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="socklb-dataplane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--log-format", choices=["text", "json"], default=os.environ.get("SOCKLB_LOG_FORMAT", "text"))
    sub = p.add_subparsers(dest="cmd", required=True)

    def admin_opts(sp):
        sp.add_argument("--admin-socket", default=str(DEFAULT_ADMIN_SOCKET))
        sp.add_argument("-o", "--output", choices=["text", "json"], default="text")
        sp.add_argument("--timeout", type=float, default=30.0)

    r = sub.add_parser("run", help="run the node agent")
    r.add_argument("--state", help="desired-state file (YAML/JSON NodeState): standalone mode")
    r.add_argument("--controlplane", default=os.environ.get("SOCKLB_CONTROLPLANE", ""),
                   help="control-plane addresses host:port[,host:port...]: take the desired state from there")
    r.add_argument("--stats-interval", type=float, default=5.0, help="seconds between statistics reports")
    r.add_argument("--tls-ca", default=os.environ.get("SOCKLB_TLS_CA", ""),
                   help="CA of the control plane's certificate: connect with TLS")
    r.add_argument("--tls-cert", default=os.environ.get("SOCKLB_TLS_CERT", ""), help="node certificate for mTLS")
    r.add_argument("--tls-key", default=os.environ.get("SOCKLB_TLS_KEY", ""), help="node key for mTLS")
    r.add_argument("--token", default=os.environ.get("SOCKLB_TOKEN", ""), help="bearer token of this node")
    r.add_argument("--metrics-listen", default=os.environ.get("SOCKLB_METRICS_LISTEN", ""),
                   help="host:port to serve Prometheus /metrics on (default: off)")
    r.add_argument("--cgroup", default=DEFAULT_CGROUP,
                   help="cgroup v2 whose processes are load-balanced (absolute, or relative to the "
                        "cgroup2 mount; created if missing)")
    r.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR))
    r.add_argument("--admin-socket", default=str(DEFAULT_ADMIN_SOCKET))
    r.add_argument("--node", default=socket.gethostname())
    r.add_argument("--services-max", type=int, default=layout.SERVICES_MAX)
    r.add_argument("--backends-max", type=int, default=layout.BACKENDS_MAX)
    r.add_argument("--affinity-max", type=int, default=layout.AFFINITY_MAX)
    r.add_argument("--rev-nat-max", type=int, default=layout.REV_NAT_MAX)
    r.add_argument("--terminate-method", choices=["auto", "kfunc", "netlink"], default="auto",
                   help="how sockets are destroyed: bpf_sock_destroy() from an iterator (kfunc), "
                        "netlink SOCK_DESTROY, or the first that works (auto)")
    r.add_argument("--flow-reader", choices=FLOW_READERS, default=os.environ.get("SOCKLB_FLOW_READER", "auto"),
                   help="how flow records are read: a map-element iterator over the flows map (map-iter), "
                        "socket iterators in every network namespace (socket-iter), or map-iter where the "
                        "kernel allows it (auto; env SOCKLB_FLOW_READER)")
    r.add_argument("--policy-judge", choices=POLICY_JUDGES, default=os.environ.get(POLICY_JUDGE_ENV, "auto"),
                   help="who judges the open sockets of a policy change: the kernel, in the termination "
                        "iterator's walk, where its judge programs load (auto), or user space (user; env "
                        f"{POLICY_JUDGE_ENV})")
    r.add_argument("--map-writes", choices=MAP_WRITES, default=os.environ.get(MAP_WRITES_ENV, "auto"),
                   help="how plans are written to the services and backends maps: in batches "
                        "(BPF_MAP_UPDATE_BATCH), one entry per call (per-entry), or batches where the kernel "
                        f"takes them (auto; env {MAP_WRITES_ENV})")
    r.add_argument("--workload-match", choices=WORKLOAD_MATCHES,
                   default=os.environ.get("SOCKLB_WORKLOAD_MATCH", "auto"),
                   help="how the hooks find a process's workload: its cgroup and its ancestors (ancestor), "
                        "its cgroup only, with the agent writing every cgroup below a workload (exact), or "
                        "ancestor where the kernel allows it (auto; env SOCKLB_WORKLOAD_MATCH)")
    r.add_argument("--dns-learner", choices=DNS_WAYS, default=os.environ.get("SOCKLB_DNS_LEARNER", "auto"),
                   help="the in-kernel DNS learner of FQDN policy: UDP and TCP where the kernel allows TCP "
                        "(auto), TCP or fail (sockmap), UDP only (off), none: FQDN rules allow nothing "
                        "(disabled) (env SOCKLB_DNS_LEARNER)")
    r.add_argument("--dns-prune-interval", type=float,
                   default=float(os.environ.get("SOCKLB_DNS_PRUNE_INTERVAL", DNS_PRUNE_INTERVAL)),
                   help="seconds between deletions of the DNS-learned entries whose TTL ran out and to which "
                        f"no open socket of the workload goes; 0: never (default {DNS_PRUNE_INTERVAL:g}; env "
                        "SOCKLB_DNS_PRUNE_INTERVAL)")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser("terminate", help="terminate (or --dry-run: list) a service's flows on this node")
    t.add_argument("service")
    t.add_argument("backends", nargs="*", metavar="ADDR:PORT", help="only flows to these backends")
    t.add_argument("--dry-run", action="store_true")
    admin_opts(t)
    t.set_defaults(func=cmd_terminate)

    a = sub.add_parser("apply", help="apply a desired-state file through the admin API")
    a.add_argument("file")
    admin_opts(a)
    a.set_defaults(func=cmd_apply)

    d = sub.add_parser("dump", help="show what the node has programmed")
    d.add_argument("what", choices=["services", "backends", "flows", "counters", "state", "info", "terminations",
                                    "sockets", "workloads", "policy", "fqdn"])
    admin_opts(d)
    d.set_defaults(func=cmd_dump)

    x = sub.add_parser("detach", help="remove the programs and pins")
    x.add_argument("--pin-dir", default=str(DEFAULT_PIN_DIR))
    x.add_argument("--cgroup", help="accepted for symmetry with run; links know their cgroup")
    x.set_defaults(func=cmd_detach)

    e = sub.add_parser("exec", help="run a command inside the load-balanced cgroup")
    e.add_argument("--cgroup", default=DEFAULT_CGROUP,
                   help="relative to the cgroup2 mount; a workload's cgroup (e.g. socklb/demo-client) runs it as that workload")
    e.add_argument("--create", action="store_true", help="create the cgroup if it does not exist")
    e.add_argument("command", nargs=argparse.REMAINDER)
    e.set_defaults(func=cmd_exec)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    setup_logging(args.verbose, args.log_format)
    try:
        return args.func(args)
    except InvalidState as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2 if e.code() == grpc.StatusCode.INVALID_ARGUMENT else 1
    except PermissionError as e:
        print(f"error: {e} (the dataplane needs root: CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
