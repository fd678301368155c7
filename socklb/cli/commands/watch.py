"""socklb watch [--from-revision R] [--count N]: changes of services,
workloads, policies and local redirects as they come."""
from __future__ import annotations

import signal

import grpc

from socklb.cli.args import UINT64_MAX, uint_arg
from socklb.cli.client import Client
from socklb.cli.exits import EXIT_OK
from socklb.cli.options import add_command
from socklb.cli.render import emit_event
from socklb.v1 import api_pb2


def cmd_watch(args, client: Client) -> int:
    if args.count == 0:
        return EXIT_OK
    # No deadline on the stream itself: it lasts until Ctrl-C or --count events.
    call = client.stub.Watch(api_pb2.WatchRequest(from_revision=args.from_revision), metadata=client.metadata)
    # Ctrl-C cancels the call rather than unwinding a KeyboardInterrupt
    # through gRPC's iterator: one raised while it re-takes its lock could
    # leave the call's cancel() waiting for ever (seen once under load).
    # The handler runs in this thread, so cancel() re-enters that lock.
    stopped = []

    def stop(*_):
        stopped.append(True)
        call.cancel()
    previous = signal.signal(signal.SIGINT, stop)
    seen = 0
    try:
        for ev in call:
            emit_event(ev, args.output)
            seen += 1
            if args.count is not None and seen >= args.count:
                break
    except grpc.RpcError as e:
        if not (stopped and e.code() == grpc.StatusCode.CANCELLED):  # the server's cancel is an error
            raise
    finally:
        signal.signal(signal.SIGINT, previous)
        call.cancel()
    return EXIT_OK


def register(sub) -> None:
    w = add_command(sub, "watch", cmd_watch,
                    "stream the changes of services, workloads, policies and local redirects until Ctrl-C")
    w.add_argument("--from-revision", type=uint_arg(UINT64_MAX), default=0, metavar="R",
                   help="events after revision R; 0 (default): the current resources first, then changes")
    w.add_argument("--count", type=uint_arg(UINT64_MAX), default=None, metavar="N", help="stop after N events")
