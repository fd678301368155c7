"""socklb node list; socklb stats [--service S] [--node N]: what the nodes report."""
from __future__ import annotations

from socklb.cli.client import Client
from socklb.cli.exits import EXIT_OK
from socklb.cli.options import add_command
from socklb.cli.render import emit
from socklb.v1 import api_pb2


def cmd_node_list(args, client: Client) -> int:
    emit(client.call("ListNodes", api_pb2.ListNodesRequest()), args.output)
    return EXIT_OK


def cmd_stats(args, client: Client) -> int:
    emit(client.call("GetStats", api_pb2.GetStatsRequest(service=args.service, node=args.node)), args.output)
    return EXIT_OK


def register(sub) -> None:
    nodes = sub.add_parser("node", help="list nodes").add_subparsers(dest="action", metavar="ACTION", required=True)
    add_command(nodes, "list", cmd_node_list, "list the nodes and their health")
    s = add_command(sub, "stats", cmd_stats, "active flows per service and backend, counters per node")
    s.add_argument("--service", default="", metavar="SERVICE", help="only this service")
    s.add_argument("--node", default="", metavar="NODE", help="only this node")
