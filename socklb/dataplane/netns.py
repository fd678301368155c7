"""The node's network namespaces: find them, open them once each, and call a
function inside each one. Socket iterators only see the sockets of the
namespace their fd is created in, so the iterator tools (iterrun.py) run
their reads through scan().

    res = scan(lambda ns: read_something())       # every namespace of the node
    res = scan(fn, ["/run/netns/a", "/proc/42/ns/net"])
    res = scan(fn, workers=netns_workers())        # several namespaces at once
    res.results, res.errors, res.unreachable, res.duration
    with entered("/run/netns/a"):                 # this thread in one namespace
        sock = socket.socket()                     #   (the socket stays there)

Opening a namespace and moving a thread into it and back is done here only
(open_netns, Switch); the tests and benchmarks use it too.

Namespaces are found through /proc/*/ns/net (the host's is /proc/1/ns/net)
and the named ones in /run/netns, deduplicated by the nsfs inode: one held
only by a bind mount elsewhere or an open fd, or entered by a single thread,
is missed; one whose /proc entry is not readable is listed as unreachable.
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .native import setns


@dataclass
class Netns:
    ident: str    # "net:[<inode>]"
    path: str     # where it was found
    fd: int


def list_netns(extra: Iterable[str | Path] = (), unreachable: list[str] | None = None) -> list[Netns]:
    """Every network namespace reachable on the node, once each: the host's
    (pid 1), those of all processes, the named ones in /run/netns, and extra
    paths. Open fds pin them until closed (close_netns). Namespaces seen (by
    readlink) but not openable are appended to `unreachable`."""
    cands = ["/proc/1/ns/net", "/proc/thread-self/ns/net"]
    try:
        cands += [f"/proc/{p}/ns/net" for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pass
    try:
        cands += [str(p) for p in sorted(Path("/run/netns").iterdir())]
    except OSError:
        pass
    cands += [str(p) for p in extra]
    seen: set[tuple[int, int]] = set()
    denied: dict[str, str] = {}  # "net:[ino]" -> path
    out: list[Netns] = []
    for path in cands:
        try:
            st = os.stat(path)
        except PermissionError:
            try:
                denied.setdefault(os.readlink(path), path)
            except OSError:
                pass
            continue
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        st = os.fstat(fd)  # the namespace actually opened (pids get reused)
        if (st.st_dev, st.st_ino) in seen:
            os.close(fd)
            continue
        seen.add((st.st_dev, st.st_ino))
        out.append(Netns(f"net:[{st.st_ino}]", path, fd))
    if unreachable is not None:
        have = {ns.ident for ns in out}
        unreachable += [f"{ident} ({path}: permission denied)" for ident, path in denied.items()
                        if ident not in have]
    return out


def open_netns(paths: Iterable[str | Path]) -> list[Netns]:
    """The namespaces at these paths, once each (OSError if one cannot be
    opened; nothing is left open then)."""
    out, seen = [], set()
    try:
        for p in paths:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                os.close(fd)
                continue
            seen.add((st.st_dev, st.st_ino))
            out.append(Netns(f"net:[{st.st_ino}]", str(p), fd))
    except BaseException:
        close_netns(out)
        raise
    return out


def close_netns(nss: list[Netns]) -> None:
    for ns in nss:
        try:
            os.close(ns.fd)
        except OSError:
            pass


class Switch:
    """Moves the calling thread between network namespaces (setns); close(),
    or the end of a with block, puts it back into the namespace it was in
    when the Switch was made. Use it in the thread it was made in."""

    def __init__(self):
        self._own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def enter(self, ns: Netns | None) -> None:
        """Into ns; None: back into the thread's own namespace."""
        setns(self._own if ns is None else ns.fd)

    def close(self) -> None:
        if self._own < 0:
            return
        try:
            setns(self._own)
        finally:
            os.close(self._own)
            self._own = -1

    def __enter__(self) -> "Switch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def entered(path: str | Path) -> Iterator[Netns]:
    """The calling thread inside the namespace at path for the block, back in
    its own afterwards; sockets made inside stay in the namespace."""
    nss = open_netns([path])
    try:
        with Switch() as switch:
            switch.enter(nss[0])
            yield nss[0]
    finally:
        close_netns(nss)


WORKERS_ENV = "SOCKLB_NETNS_WORKERS"
MAX_WORKERS = 8  # more threads than this only queue on the kernel's bucket locks


def netns_workers(requested: int | None = None) -> int:
    """How many threads a scan runs namespaces in: `requested`, else
    $SOCKLB_NETNS_WORKERS, else the CPUs this process may run on (at most
    MAX_WORKERS). 1 is the sequential path: one thread enters each
    namespace in turn. ValueError for a value below 1 or not a number."""
    if requested is None:
        env = os.environ.get(WORKERS_ENV, "").strip()
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise ValueError(f"${WORKERS_ENV}={env!r}: a number of threads (1: sequential)") from None
    if requested is None:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        return max(1, min(cpus, MAX_WORKERS))
    if requested < 1:
        raise ValueError(f"{requested} namespace threads: at least 1 (1: sequential)")
    return requested


def in_each_netns(nss: list[Netns], fn, thread_name: str = "socklb-netns", workers: int = 1
                  ) -> list[tuple[Netns, object, BaseException | None]]:
    """fn(ns) in every namespace, in dedicated threads that setns() into
    the namespaces (the caller's threads never move) and restore their own
    namespace at the end; results in the order of nss.

    workers 1: one thread takes the namespaces in turn. More: that many
    threads (never more than namespaces) take the next namespace not yet
    taken, so the per-namespace walks (a socket iterator read, which
    releases the GIL while the kernel walks) overlap on several CPUs; fn
    must then be safe to call from several threads at once."""
    slots: list[tuple[Netns, object, BaseException | None] | None] = [None] * len(nss)
    todo = iter(range(len(nss)))
    take = threading.Lock()

    def worker():
        with Switch() as switch:
            while True:
                with take:
                    i = next(todo, None)
                if i is None:
                    return
                ns = nss[i]
                try:
                    switch.enter(ns)
                    slots[i] = (ns, fn(ns), None)
                except BaseException as e:  # report, go on with the next namespace
                    slots[i] = (ns, None, e)

    n = max(1, min(workers, len(nss)))
    threads = [threading.Thread(target=worker, name=thread_name if n == 1 else f"{thread_name}-{k}", daemon=True)
               for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [s for s in slots if s is not None]


# sockstat lines whose "inuse" counts the hashed sockets of a protocol, per
# /proc/<thread>/net file (IPv4, IPv6), by the iterator they belong to.
_SOCKSTAT = {"TCP:": "tcp", "TCP6:": "tcp", "UDP:": "udp", "UDP6:": "udp", "UDPLITE:": "udp", "UDPLITE6:": "udp"}


def sockets_in_use() -> dict[str, int] | None:
    """The hashed TCP and UDP sockets (IPv4 and IPv6) of the calling
    thread's network namespace, from its /proc/thread-self/net/sockstat
    files: {"tcp": n, "udp": n}; None when they cannot be read. A connected
    or listening socket is hashed, so 0 means an iterator of that protocol
    would find nothing there (TIME_WAIT and request sockets are not counted:
    they carry no flow record and no cgroup)."""
    out = {"tcp": 0, "udp": 0}
    try:
        for name in ("sockstat", "sockstat6"):
            with open(f"/proc/thread-self/net/{name}") as f:
                for line in f:
                    words = line.split()
                    proto = _SOCKSTAT.get(words[0]) if words else None
                    if proto and len(words) >= 3 and words[1] == "inuse":
                        out[proto] += int(words[2])
    except (OSError, ValueError):
        return None
    return out


CHILD_EHASH = "/proc/sys/net/ipv4/tcp_child_ehash_entries"
EHASH = "/proc/sys/net/ipv4/tcp_ehash_entries"


def shared_ehash() -> str | None:
    """None when network namespaces created from now on get a TCP
    established hash of their own (net.ipv4.tcp_child_ehash_entries > 0 in
    the caller's namespace); else why that matters and what to set. With
    the shared hash (0, the default) every socket iterator pass or
    inet_diag dump of one namespace walks the buckets of all of them, so a
    termination over every namespace costs namespaces x the node's TCP
    sockets. Namespaces made before a change keep the hash they got."""
    try:
        child = int(Path(CHILD_EHASH).read_text())
    except (OSError, ValueError) as e:
        return f"{CHILD_EHASH} unreadable ({e}): namespaces share the host's TCP established hash"
    if child > 0:
        return None
    try:
        host = f" ({int(Path(EHASH).read_text())} buckets)"
    except (OSError, ValueError):
        host = ""
    return (f"net.ipv4.tcp_child_ehash_entries is {child}: namespaces share the host's TCP established hash{host}, "
            "so terminating in every namespace walks all the node's TCP sockets once per namespace; set it "
            "(e.g. 4096) before the workloads' namespaces are created")


@dataclass
class NetnsScan:
    """fn's results in every namespace that could be read."""

    results: list[tuple[Netns, object]]
    errors: list[str]       # "<ident> (<path>): <error>" of namespaces whose fn failed
    unreachable: list[str]  # namespaces seen but not openable
    duration: float         # seconds, all namespaces (finding them included)


def scan(fn: Callable[[Netns], object], paths: Iterable[str | Path] | None = None,
         thread_name: str = "socklb-netns",
         found: Callable[[float, int], None] | None = None, workers: int = 1) -> NetnsScan:
    """fn(ns) in every namespace of the node (paths None) or in the
    namespaces at these paths, in `workers` threads (see in_each_netns);
    the namespaces are closed afterwards. found(seconds, count), if given,
    is told how long finding and opening the namespaces took."""
    unreachable: list[str] = []
    t0 = time.monotonic()
    nss = list_netns(unreachable=unreachable) if paths is None else open_netns(paths)
    if found is not None:
        found(time.monotonic() - t0, len(nss))
    try:
        out = in_each_netns(nss, fn, thread_name=thread_name, workers=workers)
    finally:
        close_netns(nss)
    res = NetnsScan([], [], unreachable, 0.0)
    for ns, value, err in out:
        if err is None:
            res.results.append((ns, value))
        else:
            res.errors.append(f"{ns.ident} ({ns.path}): {err}")
    res.duration = time.monotonic() - t0
    return res
