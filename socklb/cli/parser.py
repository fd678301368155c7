"""The command line: the top parser (global options, exit codes in --help),
the commands in the order --help lists them, and parse_args."""
from __future__ import annotations

import argparse
import sys

from socklb.cli.commands import backends, nodes, policies, services, terminations, watch
from socklb.cli.exits import EXIT_INPUT
from socklb.cli.options import global_options


class Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_INPUT, f"error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="socklb", description="Operate the socklb control plane (socklb.v1.LoadBalancer).",
               epilog="exit codes: 0 ok, 1 other error, 2 bad input, 3 not found, 4 conflict, "
                      "5 control plane unavailable, 6 not authenticated or not allowed")
    global_options(p, defaults=True)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for commands in (services, backends, policies, nodes, terminations, watch):
        commands.register(sub)
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
