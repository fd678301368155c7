"""What every command's parser shares: the global options (accepted before or
after the command), adding a command with them, --expected-version."""
from __future__ import annotations

import argparse
import os

from socklb.cli.args import UINT64_MAX, uint_arg

DEFAULT_SERVER = "127.0.0.1:7400"
DEFAULT_TIMEOUT = 10.0


def global_options(p: argparse.ArgumentParser, defaults: bool) -> None:
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


def add_command(sub, name: str, fn, help: str, **kw) -> argparse.ArgumentParser:
    """A (sub)command running fn(args, client), its help also its description."""
    p = sub.add_parser(name, help=help, description=help, **kw)
    global_options(p, defaults=False)
    p.set_defaults(func=fn)
    return p


def expected_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--expected-version", type=uint_arg(UINT64_MAX), default=0, metavar="N",
                   help="write only if the stored resource_version is N (else ABORTED, exit 4); 0: always")
