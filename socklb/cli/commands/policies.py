"""socklb workload|policy|redirect put -f FILE | get NAME | list | delete NAME:
the policy resources, one set of commands for the three (a Resource says
what differs); `policy put --dry-run` and `redirect put --dry-run` preview."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from socklb.cli.client import Client
from socklb.cli.commands.terminations import add_wait, wait_reports
from socklb.cli.exits import EXIT_OK
from socklb.cli.files import load_resource
from socklb.cli.options import add_command, expected_version
from socklb.cli.render import emit
from socklb.cli.text import text_delete
from socklb.v1 import api_pb2, policy_pb2


@dataclass(frozen=True)
class Resource:
    command: str                    # socklb <command> put|get|list|delete
    words: str                      # what a list of them is called in help: "local redirects"
    message: type
    field: str                      # the Put request's field holding it
    put: str                        # the RPCs
    get: str
    list: str
    delete: str
    put_request: type
    list_request: Callable          # args -> the List request
    by_node: bool = False           # `list --node NODE`
    preview: str = ""               # the dry-run RPC of `put --dry-run`, if any


RESOURCES = (
    Resource("workload", "workloads", policy_pb2.Workload, "workload", "PutWorkload", "GetWorkload",
             "ListWorkloads", "DeleteWorkload", api_pb2.PutWorkloadRequest,
             lambda args: api_pb2.ListWorkloadsRequest(node=args.node), by_node=True),
    Resource("policy", "policies", policy_pb2.Policy, "policy", "PutPolicy", "GetPolicy", "ListPolicies",
             "DeletePolicy", api_pb2.PutPolicyRequest, lambda args: api_pb2.ListRequest(), preview="PreviewPolicy"),
    Resource("redirect", "local redirects", policy_pb2.LocalRedirect, "local_redirect", "PutLocalRedirect",
             "GetLocalRedirect", "ListLocalRedirects", "DeleteLocalRedirect", api_pb2.PutLocalRedirectRequest,
             lambda args: api_pb2.ListRequest(), preview="PreviewLocalRedirect"),
)


def cmd_put(r: Resource, args, client: Client) -> int:
    req = r.put_request(**{r.field: load_resource(args.file, r.message)}, expected_version=args.expected_version,
                        create_only=args.create_only)
    if getattr(args, "dry_run", False):
        # Writes nothing: each node whose part the write would change reports the open sockets it would end.
        emit(wait_reports(client, client.call(r.preview, req), args.wait), args.output)
    else:
        emit(client.call(r.put, req), args.output)
    return EXIT_OK


def cmd_get(r: Resource, args, client: Client) -> int:
    emit(client.call(r.get, api_pb2.GetRequest(name=args.name)), args.output)
    return EXIT_OK


def cmd_list(r: Resource, args, client: Client) -> int:
    emit(client.call(r.list, r.list_request(args)), args.output)
    return EXIT_OK


def cmd_delete(r: Resource, args, client: Client) -> int:
    resp = client.call(r.delete, api_pb2.DeleteRequest(name=args.name, expected_version=args.expected_version))
    if args.output == "text":
        print(text_delete(resp, args.name), flush=True)
    else:
        emit(resp, args.output)
    return EXIT_OK


def _register(sub, r: Resource) -> None:
    what = r.message.DESCRIPTOR.full_name
    actions = sub.add_parser(r.command, help=f"put, get, list, delete {r.words}").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = add_command(actions, "put", partial(cmd_put, r), f"create or replace a {r.command} from a YAML/JSON {what}")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="YAML or JSON file, '-' for stdin")
    p.add_argument("--create-only", action="store_true", help="fail (ALREADY_EXISTS, exit 4) if it exists")
    expected_version(p)
    if r.preview:
        p.add_argument("--dry-run", action="store_true",
                       help=f"write nothing: ask every node whose state it would change which open sockets it "
                            f"would terminate ({r.preview}), and show their answers")
        add_wait(p)
    p = add_command(actions, "get", partial(cmd_get, r), f"show one {r.command}")
    p.add_argument("name", metavar="NAME")
    p = add_command(actions, "list", partial(cmd_list, r), f"list the {r.words}")
    if r.by_node:
        p.add_argument("--node", default="", metavar="NODE", help=f"only the {r.words} of this node")
    p = add_command(actions, "delete", partial(cmd_delete, r), f"delete a {r.command} (idempotent)")
    p.add_argument("name", metavar="NAME")
    expected_version(p)


def register(sub) -> None:
    for r in RESOURCES:
        _register(sub, r)
