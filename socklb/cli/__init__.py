"""socklb: the operator CLI for the control plane (service socklb.v1.LoadBalancer).

  socklb service put -f FILE | get NAME | list | delete NAME
  socklb workload|policy|redirect put -f FILE | get NAME | list | delete NAME
  socklb backend set|add SERVICE ADDR:PORT[@WEIGHT] ... | remove|drain SERVICE ADDR:PORT ...
  socklb node list
  socklb stats [--service S] [--node N]
  socklb watch [--from-revision R] [--count N]
  socklb terminate SERVICE [ADDR:PORT ...] | termination list | termination get ID

The CLI parses only its own syntax (ADDR:PORT[@WEIGHT], files, flags) and
refuses a weight of 0 (the API would read it as 1); every rule about what a
service may contain is the server's, which answers INVALID_ARGUMENT naming the
field. Exit codes: see socklb.cli.exits and docs/cli.md.

main (here) parses, connects and runs one command. The modules:

- exits: exit codes, UsageError, gRPC status code → exit code
- args: ADDR:PORT[@WEIGHT], bounded integers, backends from the arguments
- files: YAML/JSON files → socklb.v1 messages
- client: the channel (TLS, token, deadline) and how a failed call is reported
- render: text/json/yaml output; text: the text tables
- options: the global options and what every command's parser shares
- parser: the top parser, parse_args
- commands/: one module per resource, each its commands and their arguments
"""
from __future__ import annotations

import os
import sys

import grpc

# The CLI's names that tests and other programs use, as before the package split.
from socklb.cli.args import Endpoint, backend_refs, backends_from_args, parse_endpoint
from socklb.cli.client import Client, report_rpc_error
from socklb.cli.exits import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, UsageError, exit_code_for
from socklb.cli.files import load_backends, load_service
from socklb.cli.parser import build_parser, parse_args
from socklb.cli.render import render_text, to_json, to_yaml
from socklb.cli.text import text_nodes, text_stats
from socklb.lb.addresses import join_host_port as format_endpoint

__all__ = ["Client", "Endpoint", "UsageError", "backend_refs", "backends_from_args", "build_parser",
           "exit_code_for", "format_endpoint", "load_backends", "load_service", "main", "parse_args",
           "parse_endpoint", "render_text", "text_nodes", "text_stats", "to_json", "to_yaml"]


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

