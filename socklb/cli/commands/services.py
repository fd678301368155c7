"""socklb service put -f FILE | get NAME | list | delete NAME"""
from __future__ import annotations

from socklb.cli.client import Client
from socklb.cli.exits import EXIT_OK
from socklb.cli.files import load_service
from socklb.cli.options import add_command, expected_version
from socklb.cli.render import emit
from socklb.cli.text import text_delete
from socklb.v1 import api_pb2


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


def register(sub) -> None:
    svc = sub.add_parser("service", help="put, get, list, delete services").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = add_command(svc, "put", cmd_service_put, "create or replace a service from a YAML/JSON socklb.v1.Service")
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="YAML or JSON file, '-' for stdin")
    p.add_argument("--create-only", action="store_true", help="fail (ALREADY_EXISTS, exit 4) if it exists")
    expected_version(p)
    p = add_command(svc, "get", cmd_service_get, "show one service")
    p.add_argument("name", metavar="NAME")
    add_command(svc, "list", cmd_service_list, "list the services")
    p = add_command(svc, "delete", cmd_service_delete, "delete a service (idempotent)")
    p.add_argument("name", metavar="NAME")
    expected_version(p)
