"""socklb backend set|add SERVICE ADDR:PORT[@WEIGHT] ... | remove|drain SERVICE ADDR:PORT ..."""
from __future__ import annotations

import argparse

from socklb.cli.args import BACKEND_STATES, UINT32_MAX, backend_refs, backends_from_args, uint_arg
from socklb.cli.client import Client
from socklb.cli.exits import EXIT_OK, UsageError
from socklb.cli.options import add_command, expected_version
from socklb.cli.render import emit
from socklb.v1 import api_pb2


def cmd_backend_set(args, client: Client) -> int:
    if not (args.backends or args.file or args.none):
        raise UsageError("give backends (ADDR:PORT[@WEIGHT] ... or -f FILE), or --none to remove them all")
    if args.none and (args.backends or args.file):
        raise UsageError("--none sets no backends: do not list any")
    return _send_backends(args, client, "SetBackends", api_pb2.SetBackendsRequest)


def cmd_backend_add(args, client: Client) -> int:
    if not (args.backends or args.file):
        raise UsageError("give backends: ADDR:PORT[@WEIGHT] ... or -f FILE")
    return _send_backends(args, client, "AddBackends", api_pb2.AddBackendsRequest)


def _send_backends(args, client: Client, method: str, request_type) -> int:
    req = request_type(service=args.service, backends=backends_from_args(args),
                       expected_version=args.expected_version)
    emit(client.call(method, req), args.output)
    return EXIT_OK


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


def _backend_specs(p: argparse.ArgumentParser) -> None:
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("backends", nargs="*", metavar="ADDR:PORT[@WEIGHT]",
                   help="backend; IPv6 as [ADDR]:PORT; PORT 0 = the frontend's port; WEIGHT 1..65535, default 1")
    p.add_argument("-f", "--file", metavar="FILE",
                   help="YAML/JSON list of socklb.v1.Backend (or a mapping with 'backends'), '-' for stdin")
    p.add_argument("--node", metavar="NODE", help="node running the listed backends (traffic policy LOCAL)")
    p.add_argument("--zone", metavar="ZONE", help="zone of the listed backends")
    p.add_argument("--state", choices=sorted(BACKEND_STATES), help="state of the listed backends (default active)")
    expected_version(p)


def register(sub) -> None:
    be = sub.add_parser("backend", help="set, add, remove, drain backends of a service").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = add_command(be, "set", cmd_backend_set, "replace all backends of a service")
    _backend_specs(p)
    p.add_argument("--none", action="store_true", help="remove every backend")
    p = add_command(be, "add", cmd_backend_add, "add backends (a backend with the same ADDR:PORT is replaced)")
    _backend_specs(p)
    p = add_command(be, "remove", cmd_backend_remove, "remove backends (absent ones are ignored)")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("backends", nargs="+", metavar="ADDR:PORT")
    p.add_argument("--keep-sockets", action="store_true",
                   help="keep the sockets still connected to them instead of terminating them")
    expected_version(p)
    p = add_command(be, "drain", cmd_backend_drain, "stop new flows to backends; existing flows live on")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("backends", nargs="+", metavar="ADDR:PORT")
    p.add_argument("--deadline", type=uint_arg(UINT32_MAX), default=0, metavar="SECONDS",
                   help="remove them (and end their flows) after SECONDS; default 0: no deadline")
    expected_version(p)
