"""The optional kernel features the node can use, probed once at start, and
the way each duty takes from the answers.

    parts = load(pin_dir, flow_method="auto", terminate_method="auto")
    parts.features.capabilities()   # {"map_elem_iter": "no: ...", "flows": "socket-iter", ...}
    parts.flows.read()              # None where the duty has no way at all
    parts.close()

Features (each "yes" or "no: <why>"):
  map_elem_iter          iter/bpf_sk_storage_map loads, attaches and reads
  iter_tcp_resume        the TCP iterator resumes a bucket by socket cookie
  iter_udp_resume        the same for UDP (both: one termination pass is enough)
  sock_destroy_kfunc     programs calling bpf_sock_destroy() load
  netlink_sock_destroy   inet_diag SOCK_DESTROY answers
  ancestor_cgroup_id     the translating hooks may call bpf_get_current_ancestor_cgroup_id()
  dns_tcp_sockmap        the DNS learner's TCP path (sock_ops, sockhash, sk_skb stream
                         parser and verdict) loads and attaches (dns.probe_tcp)
  policy_kernel_judge    the termination object's judge programs load (they read the
                         pinned services and policy maps): a policy change's open
                         sockets are judged in the kernel, in one walk
  map_batch              BPF_MAP_UPDATE_BATCH and BPF_MAP_DELETE_BATCH on the services
                         and backends maps (maps.BpfMapWriter, kernel.BpfMap.batch_refused)
  tcp_ehash_per_netns    namespaces created from now on get a TCP established hash of their
                         own (net.ipv4.tcp_child_ehash_entries > 0; netns.shared_ehash):
                         else each namespace's termination walk covers every TCP socket
                         of the node (logged as a warning, with what to set)
Duties, with the way taken (or "none: <why>"):
  flows           map-iter | socket-iter        (flows.py)
  sock_destroy    kfunc | netlink               (sockdestroy.py)
  netns_walk      parallel: N threads | sequential: <why>   (netns.in_each_netns; sequential
                                                 when one CPU or forced: SOCKLB_NETNS_WORKERS=1)
  socket_stats    socket-iter                   (sockstats.py)
  policy_judge    kernel | user: <why>          (sockdestroy.py judge_cgroups, policyjobs.py;
                                                 user also when forced: SOCKLB_POLICY_JUDGE=user,
                                                 --policy-judge user)
  workload_match  ancestor | exact: <why>       (sock_lb.c, workloads.py)
  map_writes      batch | per-entry: <why>      (maps.py, mapbatch.py; per-entry also when
                                                 forced: SOCKLB_MAP_WRITES=per-entry,
                                                 --map-writes per-entry)
One refused feature only moves its duty to the fallback; a duty with no way
left is reported as such, and the others run. The last feature and duty
are the loader's (loader.probe_ancestor_cgroup, loader.workload_way): the
programs are compiled for the way, so it is decided before they load;
map_batch and map_writes are the map writer's, probed on the loaded maps;
kernel_agent reports them with the others.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import dns
from .bpfobj import first_line
from .flows import FlowReader
from .sockstats import SocketStatsCollector
from .netns import WORKERS_ENV, shared_ehash
from .sockdestroy import Terminator, resume_fixed

log = logging.getLogger(__name__)

class Unavailable(RuntimeError):
    """A duty (flows, socket statistics, termination) has no way on this node."""


FEATURES = ("map_elem_iter", "iter_tcp_resume", "iter_udp_resume", "sock_destroy_kfunc", "netlink_sock_destroy",
            "ancestor_cgroup_id", "dns_tcp_sockmap", "policy_kernel_judge", "map_batch", "tcp_ehash_per_netns")
DUTIES = ("flows", "sock_destroy", "socket_stats", "policy_judge", "workload_match", "map_writes", "netns_walk")


def answer(why_not: str | None) -> str:
    """ "yes", or "no: <first line of why not>"."""
    return "yes" if why_not is None else f"no: {first_line(why_not)}"


@dataclass
class Features:
    """What the kernel allowed (FEATURES) and the way each duty takes (DUTIES)."""

    probes: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def capabilities(self) -> dict[str, str]:
        """Both, as the node reports them (Hello, dump info)."""
        return {**self.probes, **self.paths}

    def summary(self) -> str:
        paths = ", ".join(f"{k}={v}" for k, v in self.paths.items())
        probes = ", ".join(f"{k}={v}" for k, v in self.probes.items())
        return f"{paths}; probes: {probes} ({self.seconds:.1f}s)"


@dataclass
class Parts:
    """The loaded iterator parts of the node; None where a duty has no way."""

    features: Features
    flows: FlowReader | None = None
    terminator: Terminator | None = None
    socket_stats: SocketStatsCollector | None = None
    errors: dict[str, str] = field(default_factory=dict)  # duty -> why it has no way

    def close(self) -> None:
        for part in (self.flows, self.terminator, self.socket_stats):
            if part is not None:
                part.close()


def load(pin_dir: str | Path, flow_method: str = "auto", terminate_method: str = "auto",
         cache: Path | None = None, policy_judge: str | None = None) -> Parts:
    """Probe every feature and load each duty's programs; never raises for a
    refused feature or a duty without a way (see Parts.errors)."""
    pin_dir = Path(pin_dir)
    t0 = time.monotonic()
    builders = {
        "flows": lambda: FlowReader(pin_dir, flow_method, cache=cache),
        "sock_destroy": lambda: Terminator(pin_dir, terminate_method, cache=cache, policy_judge=policy_judge),
        "socket_stats": lambda: SocketStatsCollector(pin_dir, cache=cache),
    }
    # The first start compiles three objects with clang: in parallel.
    with ThreadPoolExecutor(max_workers=len(builders), thread_name_prefix="probe") as pool:
        futures = {duty: pool.submit(build) for duty, build in builders.items()}
        dns_tcp = pool.submit(dns.probe_tcp, cache)
    loaded, errors, probes = {}, {}, {}
    for duty, fut in futures.items():
        try:
            loaded[duty] = fut.result()
        except Exception as e:  # a duty without a way must not stop the node
            errors[duty] = f"none: {first_line(e)}"
            probes[duty] = getattr(e, "probes", {})
            refused = getattr(e, "map_iter_refused", None)
            if refused is not None:
                probes[duty] = {"map_elem_iter": refused}
            log.debug("%s: no way", duty, exc_info=True)
    parts = Parts(Features(), loaded.get("flows"), loaded.get("sock_destroy"), loaded.get("socket_stats"), errors)
    f = parts.features
    if parts.flows is not None:
        f.probes["map_elem_iter"] = answer(parts.flows.map_iter_refused)
    elif "map_elem_iter" in probes.get("flows", {}):
        f.probes["map_elem_iter"] = answer(probes["flows"]["map_elem_iter"])
    else:
        f.probes["map_elem_iter"] = "unknown: " + errors["flows"].removeprefix("none: ")
    for proto in ("tcp", "udp"):
        f.probes[f"iter_{proto}_resume"] = answer(
            None if resume_fixed(proto) else f"bpf_iter_{proto}_resume is not in the kernel's BTF or kallsyms")
    t = parts.terminator
    methods = t.probes if t is not None else probes.get("sock_destroy", {})
    for method, name in (("kfunc", "sock_destroy_kfunc"), ("netlink", "netlink_sock_destroy")):
        f.probes[name] = (answer(methods[method]) if method in methods
                          else "unknown: " + errors["sock_destroy"].removeprefix("none: "))
    try:
        f.probes["dns_tcp_sockmap"] = answer(dns_tcp.result())
    except Exception as e:  # a probe must not stop the node
        f.probes["dns_tcp_sockmap"] = answer(str(e) or type(e).__name__)
    f.paths["flows"] = parts.flows.method.value if parts.flows is not None else errors["flows"]
    f.paths["sock_destroy"] = t.method.value if t is not None else errors["sock_destroy"]
    f.paths["socket_stats"] = "socket-iter" if parts.socket_stats is not None else errors["socket_stats"]
    if t is not None:
        f.probes["policy_kernel_judge"] = answer(t.judge_unavailable)
        f.paths["policy_judge"] = first_line(t.judge_way)
    else:
        f.probes["policy_kernel_judge"] = "unknown: " + errors["sock_destroy"].removeprefix("none: ")
        f.paths["policy_judge"] = "user: " + errors["sock_destroy"].removeprefix("none: ")
    shared = shared_ehash()
    f.probes["tcp_ehash_per_netns"] = answer(shared)
    if shared is not None:
        log.warning("socket termination: %s", shared)
    if t is None:
        f.paths["netns_walk"] = "none: " + errors["sock_destroy"].removeprefix("none: ")
    else:
        f.paths["netns_walk"] = netns_walk(t.workers)
    f.seconds = time.monotonic() - t0
    return parts


def netns_walk(workers: int) -> str:
    """The netns_walk way of a Terminator walking namespaces in `workers` threads."""
    if workers > 1:
        return f"parallel: {workers} threads"
    why = f"forced (${WORKERS_ENV}=1)" if os.environ.get(WORKERS_ENV, "").strip() else "one CPU"
    return f"sequential: {why}"
