"""The skeleton every iterator tool of the node shares (termination,
sockdestroy.py; socket statistics, sockstats.py; the flow reader, flows.py):
check that the agent's `flows` storage is pinned, build and load a libbpf
object whose programs are attached as iterators, read them in every network
namespace (or the ones given), and close.

    class Tool(IterRunner):
        error = ToolError                       # what every failure raises
        what = "tool"                           # "tool is closed"
        thread_name = "socklb-tool"

        def __init__(self, pin_dir, netns=None, cache=None):
            super().__init__(pin_dir, netns, cache)       # checks <pin_dir>/flows
            self._obj = self.load(self.build("tool.bpf.c"), {"tcp": "tool_tcp"})

        def collect(self, hooks=None):
            hooks = hooks or NO_HOOKS
            with self.loaded() as obj:                      # serialized; raises once closed
                return self.scan(lambda ns: self.run_iter(obj, "tcp", hooks), hooks)

Hooks are the explicit observation points of a run, for benchmarks and
diagnostics (bench/termination.py splits a termination's time with them):
a run calls them as it goes; the default (NO_HOOKS) does nothing, and a
caller overrides what it needs. They are told of events, they change
nothing: a run with hooks does the same work as one without.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from . import bpfobj, netns
from .netns import Netns, NetnsScan


class Hooks:
    """Observation points of an iterator run; each does nothing here.

    namespaces(seconds, count)  the namespaces were found and opened
    netns(ns)                   the reads of namespace ns follow (called in
                                the namespace thread, before them; with
                                several threads (IterRunner.workers) the
                                namespaces' calls interleave: a hook that
                                follows one namespace keys on the thread)
    read(key, seconds, size)    one iterator (key: "tcp", "udp", ...) read to
                                its end: `size` bytes of records
    parsed(seconds, records)    records parsed from one read
    destroyed(seconds, sockets) sockets destroyed from user space (netlink
                                SOCK_DESTROY) in one batch
    """

    def namespaces(self, seconds: float, count: int) -> None:
        pass

    def netns(self, ns: Netns) -> None:
        pass

    def read(self, key: str, seconds: float, size: int) -> None:
        pass

    def parsed(self, seconds: float, records: int) -> None:
        pass

    def destroyed(self, seconds: float, sockets: int) -> None:
        pass


NO_HOOKS = Hooks()


@contextmanager
def raising(error: type[bpfobj.BpfObjError]) -> Iterator[None]:
    """Errors of the shared helpers (bpfobj.BpfObjError) raised in the block
    surface as `error`, the tool's own exception."""
    try:
        yield
    except error:
        raise
    except bpfobj.BpfObjError as e:
        raise error(str(e)) from e


class IterRunner:
    """Base of the iterator tools: see the module doc.

    pin_dir: the agent's pin directory (its `flows` map is used).
    netns:   None = every namespace on the node at each scan; else only
             these namespace paths.
    cache:   build cache directory (default bpfobj.cache_dir()).
    workers: threads a scan runs namespaces in (netns.in_each_netns); 1,
             the default, enters them one after another. A tool that
             passes more must keep its per-namespace function thread-safe.
    """

    error: type[bpfobj.BpfObjError] = bpfobj.BpfObjError
    what = "iterator tool"  # in "... is closed"
    thread_name = "socklb-netns"
    read_size = bpfobj.ITER_READ  # see bpfobj.ITER_READ; tools that destroy nothing may read more at once

    def __init__(self, pin_dir: str | Path, netns: Iterable[str | Path] | None = None,
                 cache: Path | None = None, workers: int = 1):
        self.pin_dir = Path(pin_dir)
        self.workers = workers
        self.netns_paths = None if netns is None else [str(p) for p in netns]
        self.cache = cache
        self._lock = threading.Lock()
        self._obj: bpfobj.IterObject | None = None
        if not (self.pin_dir / "flows").exists():
            raise self.error(f"{self.pin_dir}/flows does not exist: is the dataplane agent loaded there?")

    # -- building and loading

    def build(self, source: str, defines: Iterable[str] = (), suffix: str = "") -> Path:
        """bpf/<source> compiled (or the cached object); see bpfobj.build."""
        with raising(self.error):
            return bpfobj.build(source, defines, self.cache, suffix=suffix)

    def load(self, path: Path, programs: Mapping[str, str], map_keys: Iterable[str] | Mapping[str, str] = (),
             cls: type[bpfobj.IterObject] = bpfobj.IterObject,
             reuse: Mapping[str, tuple[int, int]] | None = None) -> bpfobj.IterObject:
        """The object at path loaded with these programs attached (see
        bpfobj.IterObject, also for reuse); failures raise self.error."""
        with raising(self.error):
            return cls(path, self.pin_dir, programs, map_keys, error=self.error, reuse=reuse)

    # -- life cycle

    @contextmanager
    def loaded(self) -> Iterator[bpfobj.IterObject]:
        """The loaded object, for one run at a time (runs are serialized)."""
        with self._lock:
            if self._obj is None:
                raise self.error(f"{self.what} is closed")
            yield self._obj

    def close(self) -> None:
        with self._lock:
            if self._obj is not None:
                self._obj.close()
                self._obj = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- running

    def run_iter(self, obj: bpfobj.IterObject, key: str, hooks: Hooks = NO_HOOKS) -> bytes:
        """One iterator read to its end in the calling thread's namespace."""
        t = time.perf_counter()
        data = obj.read_iter(key, self.read_size)
        hooks.read(key, time.perf_counter() - t, len(data))
        return data

    def scan(self, fn: Callable[[Netns], object], hooks: Hooks = NO_HOOKS) -> NetnsScan:
        """fn(ns) in every namespace of the tool (see netns.scan)."""
        def each(ns: Netns):
            hooks.netns(ns)
            return fn(ns)

        return netns.scan(each, self.netns_paths, thread_name=self.thread_name, found=hooks.namespaces,
                          workers=self.workers)


def first_seen(records: Iterable, seen: set[int]) -> list:
    """The records whose .cookie is not in seen (which takes them in): a
    socket that a bucket-resuming iterator shows twice, or that two
    namespace entries lead to, is kept once."""
    out = []
    for r in records:
        if r.cookie not in seen:
            seen.add(r.cookie)
            out.append(r)
    return out
