"""socklb terminate SERVICE [ADDR:PORT ...] | termination list | termination get ID"""
from __future__ import annotations

import time

from socklb.cli.args import backend_refs
from socklb.cli.client import Client
from socklb.cli.exits import EXIT_OK
from socklb.cli.options import add_command
from socklb.cli.render import emit
from socklb.v1 import api_pb2


def cmd_terminate(args, client: Client) -> int:
    req = api_pb2.TerminateFlowsRequest(service=args.service, backends=backend_refs(args.backends),
                                        dry_run=args.dry_run)
    emit(wait_reports(client, client.call("TerminateFlows", req), args.wait), args.output)
    return EXIT_OK


def wait_reports(client: Client, term: api_pb2.Termination, seconds: float) -> api_pb2.Termination:
    """The termination once every node it asked has reported, or as it is
    after `seconds` (0: at once)."""
    end = time.monotonic() + seconds
    while term.pending_nodes and time.monotonic() < end:
        time.sleep(0.2)
        term = client.call("GetTermination", api_pb2.GetTerminationRequest(id=term.id))
    return term


def add_wait(p) -> None:
    p.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for every node's report (0: return at once)")


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


def register(sub) -> None:
    t = add_command(sub, "terminate", cmd_terminate,
                    "terminate (or --dry-run: list) the flows of a service's backends on every node")
    t.add_argument("service", metavar="SERVICE")
    t.add_argument("backends", nargs="*", metavar="ADDR:PORT", help="only flows to these backends (default: all)")
    t.add_argument("--dry-run", action="store_true", help="list the flows, terminate nothing")
    add_wait(t)
    terms = sub.add_parser("termination", help="show terminations").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    g = add_command(terms, "get", cmd_termination_get, "one termination with every node's report")
    g.add_argument("id", metavar="ID")
    tl = add_command(terms, "list", cmd_termination_list, "terminations, newest first")
    tl.add_argument("--service", default="", metavar="SERVICE")
