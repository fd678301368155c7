"""Compile the socket-LB programs with bcc, attach them to a cgroup through
pinned BPF links, and adopt what an earlier agent left pinned.

Pin directory layout:  <pin_dir>/{services,backends,...}  maps (pinned by bcc)
                       <pin_dir>/links/<hook>              cgroup links
                       <pin_dir>/dns_*, links/dns_*        the DNS learner of FQDN policy (dns.py),
                                                           loaded first: sock_lb.c reads its dns_learned;
                                                           its cgroup links only while FQDN rules are
                                                           applied (learner_hooks.py)
A restart recompiles the programs against the same pinned maps and swaps them
into the existing links with BPF_LINK_UPDATE: the hooks are never empty and
never doubled, and sockets keep their flow records.
"""
from __future__ import annotations

import ctypes as ct
import fcntl
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from . import kernel, layout
from .kernel import AttachType, BpfMap

log = logging.getLogger(__name__)

# bcc's program types.
_CGROUP_SOCK = 9
_CGROUP_SOCK_ADDR = 18


@dataclass(frozen=True)
class Hook:
    name: str
    func: str
    prog_type: int
    attach: AttachType


HOOKS = (
    Hook("connect4", "socklb_connect4", _CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_CONNECT),
    Hook("connect6", "socklb_connect6", _CGROUP_SOCK_ADDR, AttachType.CGROUP_INET6_CONNECT),
    Hook("sendmsg4", "socklb_sendmsg4", _CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP4_SENDMSG),
    Hook("sendmsg6", "socklb_sendmsg6", _CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP6_SENDMSG),
    Hook("recvmsg4", "socklb_recvmsg4", _CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP4_RECVMSG),
    Hook("recvmsg6", "socklb_recvmsg6", _CGROUP_SOCK_ADDR, AttachType.CGROUP_UDP6_RECVMSG),
    Hook("getpeername4", "socklb_getpeername4", _CGROUP_SOCK_ADDR, AttachType.CGROUP_INET4_GETPEERNAME),
    Hook("getpeername6", "socklb_getpeername6", _CGROUP_SOCK_ADDR, AttachType.CGROUP_INET6_GETPEERNAME),
    Hook("sock_release", "socklb_sock_release", _CGROUP_SOCK, AttachType.CGROUP_INET_SOCK_RELEASE),
)


# How the hooks find a process's workload (capabilities["workload_match"]):
# "ancestor": its cgroup, else its ancestors, with bpf_get_current_ancestor_cgroup_id();
# "exact": its cgroup only; the agent writes every cgroup below a workload.
WORKLOAD_MATCHES = ("auto", "ancestor", "exact")
DNS_WAYS = ("auto", "sockmap", "off", "disabled")  # Datapath.dns
_FUNC_GET_CURRENT_ANCESTOR_CGROUP_ID = 123
_TRANSLATING = ("connect4", "connect6", "sendmsg4", "sendmsg6")


def probe_ancestor_cgroup() -> str | None:
    """None when the translating hooks may call
    bpf_get_current_ancestor_cgroup_id() on this kernel, else why not. The
    probe is four instructions loaded with each hook's attach type, so it
    costs no compile."""
    insns = [kernel.Insn(0xB7, 1, 0, 0),  # r1 = 0
             kernel.Insn(0x85, 0, 0, _FUNC_GET_CURRENT_ANCESTOR_CGROUP_ID),
             kernel.Insn(0xB7, 0, 0, 1),  # r0 = 1
             kernel.Insn(0x95, 0, 0, 0)]  # exit
    for hook in HOOKS:
        if hook.name not in _TRANSLATING:
            continue
        try:
            fd = kernel.prog_load(hook.prog_type, hook.attach, insns, "socklb_probe")
        except OSError as e:
            return f"{hook.name}: {e}"
        os.close(fd)
    return None


def choose_way(requested: str, ways: tuple[str, ...], best: str, fallback: str, refused: str | None,
               what: str) -> str:
    """The way a duty takes: `best` where the kernel allows it (refused is
    None), else "<fallback>: <why>"; requested is "auto", `best` (fails
    when refused) or `fallback` ("<fallback>: forced")."""
    if requested not in ways:
        raise LoadError(f"{what} {requested!r}: expected one of {', '.join(ways)}")
    if requested == fallback:
        return f"{fallback}: forced"
    if refused is None:
        return best
    if requested == best:
        raise LoadError(f"{what} {best} was asked for, but this kernel refuses it: {refused}")
    return f"{fallback}: {refused}"


def workload_way(requested: str, ancestor_refused: str | None) -> str:
    """The way the hooks match workloads: "ancestor", or "exact: <why>"."""
    return choose_way(requested, WORKLOAD_MATCHES, "ancestor", "exact", ancestor_refused, "workload matching")


@dataclass(frozen=True)
class Capacity:
    services: int = layout.SERVICES_MAX
    backends: int = layout.BACKENDS_MAX
    affinity: int = layout.AFFINITY_MAX
    rev_nat: int = layout.REV_NAT_MAX


@dataclass(frozen=True)
class MapSpec:
    key: type
    value: type
    max_entries: int
    percpu: bool = False


def map_specs(cap: Capacity) -> dict[str, MapSpec]:
    return {
        "services": MapSpec(layout.SvcKey, layout.SvcVal, cap.services),
        "backends": MapSpec(ct.c_uint32, layout.Backend, cap.backends),
        "affinity": MapSpec(layout.AffinityKey, layout.AffinityVal, cap.affinity),
        "rev_nat": MapSpec(layout.RnatKey, layout.RnatVal, cap.rev_nat),
        "counters": MapSpec(ct.c_uint32, ct.c_uint64, layout.COUNTER_MAX, percpu=True),
        "meta": MapSpec(ct.c_uint32, ct.c_uint64, layout.META_MAX),
        "workloads": MapSpec(ct.c_uint64, layout.Workload, layout.WORKLOAD_CGROUPS_MAX),
        "policy_frontends": MapSpec(layout.PolicyFeKey, layout.PolicyVerdict, layout.POLICY_FRONTENDS_MAX),
        "policy_prefixes": MapSpec(layout.PolicyPrefixKey, layout.PolicyRules, layout.POLICY_PREFIXES_MAX),
        "workload_denies": MapSpec(ct.c_uint32, ct.c_uint64, layout.WORKLOAD_IDS_MAX, percpu=True),
        "policy_cfg": MapSpec(ct.c_uint32, layout.PolicyCfg, 1),
        "redirect_exempt": MapSpec(layout.ExemptKey, ct.c_uint32, layout.REDIRECT_EXEMPT_MAX),
        "policy_fqdns": MapSpec(layout.PolicyFqdnKey, layout.PolicyRules, layout.POLICY_FQDNS_MAX),
        "conn_flows": MapSpec(ct.c_uint32, layout.ConnSlot, layout.CONN_SLOTS),
        # Socket storage: no max_entries, no user-space key.
        "flows": MapSpec(ct.c_int, layout.SkFlow, 0),
    }


class LoadError(RuntimeError):
    pass


def bpf_source_dir() -> Path:
    return Path(str(resources.files("socklb.bpf")))


@dataclass
class Datapath:
    """The loaded programs and the open maps of one pin directory."""

    pin_dir: Path
    cgroup: Path
    capacity: Capacity = field(default_factory=Capacity)
    workload_match: str = "auto"  # WORKLOAD_MATCHES
    maps: dict[str, BpfMap] = field(default_factory=dict)
    adopted: bool = False
    # After load(): why the ancestor helper is refused (None: allowed), and
    # the way taken (workload_way).
    ancestor_refused: str | None = None
    workload_way: str = ""
    # The DNS learner (FQDN policy): "auto" (TCP when the kernel allows it),
    # "sockmap" (TCP or fail), "off" (UDP only), "disabled" (no learner:
    # FQDN rules allow nothing). After load(): the way taken (dns_way).
    dns: str = "auto"
    dns_way: str = ""
    learner: object = None
    _bpf: object = None
    _lock_fd: int | None = None

    @property
    def exact_workloads(self) -> bool:
        """The hooks match a workload's own cgroup only (the agent writes the
        cgroups below it too)."""
        return self.workload_way.startswith("exact")

    @property
    def links_dir(self) -> Path:
        return self.pin_dir / "links"

    def load(self) -> None:
        """Compile, load and attach (or adopt). Idempotent across restarts."""
        kernel.ensure_bpffs()
        if not kernel.on_bpffs(self.pin_dir.parent if not self.pin_dir.exists() else self.pin_dir):
            raise LoadError(f"pin directory {self.pin_dir} is not on a bpf filesystem")
        if not (self.cgroup / "cgroup.procs").exists():
            raise LoadError(f"{self.cgroup} is not a cgroup v2 directory")
        self.pin_dir.mkdir(parents=True, exist_ok=True)
        self._lock_pin_dir()
        self.links_dir.mkdir(exist_ok=True)
        self._check_pinned_maps()
        existing = {h.name for h in HOOKS if (self.links_dir / h.name).exists()}
        self.ancestor_refused = probe_ancestor_cgroup()
        self.workload_way = workload_way(self.workload_match, self.ancestor_refused)
        self._load_learner()
        self._bpf = self._compile()
        self._open_maps()
        self._check_layout_version()
        cg_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for hook in HOOKS:
                fn = self._bpf.load_func(hook.func.encode(), hook.prog_type, attach_type=int(hook.attach))
                self._attach(hook, fn.fd, cg_fd)
        finally:
            os.close(cg_fd)
        self.adopted = bool(existing)
        log.info("%s %d hooks on %s, maps in %s", "adopted" if self.adopted else "attached",
                 len(HOOKS), self.cgroup, self.pin_dir)

    def _load_learner(self) -> None:
        """Load (or adopt) the DNS learner before the hooks, which reuse its
        pinned dns_learned. A refused learner leaves the datapath working:
        FQDN rules then allow nothing (dns_way says why)."""
        from . import dns  # dns imports this module

        if self.dns == "disabled":
            self.dns_way = "off: disabled"
            return
        try:
            # Its per-packet programs are attached only while the applied
            # policy has FQDN rules (learner_hooks.py); pinned ones are adopted.
            self.learner = dns.DnsLearner(self.pin_dir, self.cgroup, tcp=self.dns).load(attach=False)
        except Exception as e:  # noqa: BLE001 - one refused feature must not take down the datapath
            if self.dns == "sockmap":
                raise LoadError(f"DNS learner: {e}") from e
            self.dns_way = f"off: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            log.warning("DNS learner not loaded (%s): FQDN rules allow nothing", self.dns_way)
            return
        tcp = self.learner.tcp_way
        self.dns_way = "udp+tcp" if tcp == "sockmap" else f"udp (tcp {tcp})"
        for name in ("dns_workloads", "dns_servers", "dns_patterns", "dns_learned", "dns_counters"):
            self.maps[name] = self.learner.maps[name]

    def _lock_pin_dir(self) -> None:
        """One agent per pin directory: two would apply different plans to
        the same maps with their own id allocators. The lock is an flock on
        the directory, held (fd kept open) until the process exits, so a
        killed agent never leaves it behind."""
        if self._lock_fd is not None:
            return
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LoadError(f"another socklb-dataplane agent is running on pin directory {self.pin_dir} "
                            "(it holds the directory's lock); stop it first, or give this one its own "
                            "--pin-dir") from None
        self._lock_fd = fd

    def _compile(self):
        from bcc import BPF  # bcc is only needed where programs are loaded

        src = bpf_source_dir()
        cap = self.capacity
        cflags = [
            f"-I{src}",
            f'-DSOCKLB_PIN_DIR="{self.pin_dir}"',
            f"-DSOCKLB_SERVICES_MAX={cap.services}",
            f"-DSOCKLB_BACKENDS_MAX={cap.backends}",
            f"-DSOCKLB_AFFINITY_MAX={cap.affinity}",
            f"-DSOCKLB_REV_NAT_MAX={cap.rev_nat}",
        ]
        if self.exact_workloads:
            cflags.append("-DSOCKLB_WORKLOAD_EXACT")
        try:
            return BPF(src_file=str(src / "sock_lb.c").encode(), cflags=cflags)
        except Exception as e:  # bcc raises bare Exception with the compiler's output on stderr
            raise LoadError(f"compiling {src / 'sock_lb.c'} failed: {e}") from e

    def _attach(self, hook: Hook, prog_fd: int, cg_fd: int) -> None:
        pin = self.links_dir / hook.name
        if pin.exists():
            link_fd = kernel.obj_get(pin)
            try:
                info = kernel.link_info(link_fd)
                if info.cgroup_id != os.stat(self.cgroup).st_ino:
                    raise LoadError(f"{pin} attaches to another cgroup (id {info.cgroup_id}); "
                                    f"run `socklb-dataplane detach --pin-dir {self.pin_dir}` first")
                # Atomic swap: the hook runs the old program until this returns.
                kernel.link_update(link_fd, prog_fd)
            finally:
                os.close(link_fd)
            return
        link_fd = kernel.link_create(prog_fd, cg_fd, hook.attach)
        try:
            kernel.obj_pin(link_fd, pin)
        finally:
            os.close(link_fd)

    def _check_pinned_maps(self) -> None:
        """Refuse pinned maps of another shape before bcc reuses them blindly."""
        for name, spec in map_specs(self.capacity).items():
            path = self.pin_dir / name
            if not path.exists():
                continue
            fd = kernel.obj_get(path)
            try:
                info = kernel.map_info(fd)
            finally:
                os.close(fd)
            want = (ct.sizeof(spec.key), ct.sizeof(spec.value), spec.max_entries)
            have = (info.key_size, info.value_size, info.max_entries)
            if want != have:
                raise LoadError(
                    f"pinned map {path} has key/value/entries {have}, this agent needs {want}: "
                    f"run `socklb-dataplane detach --pin-dir {self.pin_dir}` (drops the load-balancing "
                    f"state) or start with the same capacities")

    def _open_maps(self) -> None:
        for name, spec in map_specs(self.capacity).items():
            self.maps[name] = BpfMap.pinned(self.pin_dir / name, spec.key, spec.value, spec.percpu)

    def _check_layout_version(self) -> None:
        meta = self.maps["meta"]
        key = ct.c_uint32(layout.Meta.LAYOUT)
        have = meta.lookup(key).value
        if have == 0:
            meta.update(key, ct.c_uint64(layout.LAYOUT_VERSION))
        elif have != layout.LAYOUT_VERSION:
            raise LoadError(f"pinned maps in {self.pin_dir} have layout {have}, this agent "
                            f"uses {layout.LAYOUT_VERSION}: run `socklb-dataplane detach --pin-dir "
                            f"{self.pin_dir}` first (balancing pauses until "
                            f"this agent attaches)")

    def attached_program_ids(self) -> dict[str, list[int]]:
        cg_fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return {h.name: kernel.prog_query(cg_fd, h.attach) for h in HOOKS}
        finally:
            os.close(cg_fd)

    def close(self) -> None:
        if self.learner is not None:
            shared = {id(m) for m in self.maps.values()}
            for m in self.learner.maps.values():
                if id(m) not in shared:
                    m.close()
            self.learner.maps.clear()
            self.learner.close()  # its loaded programs; the pinned links stay
            self.learner = None
        for m in self.maps.values():
            m.close()
        self.maps.clear()
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None


def detach(pin_dir: Path) -> list[str]:
    """Remove socklb's links and pins from a pin directory. The programs
    leave the cgroup at once; the maps go when nothing uses them."""
    removed = []
    links = pin_dir / "links"
    if links.is_dir():
        for pin in sorted(links.iterdir()):
            kernel.unpin_link(pin)
            removed.append(str(pin))
        links.rmdir()
    if pin_dir.is_dir():
        for pin in sorted(pin_dir.iterdir()):
            pin.unlink()
            removed.append(str(pin))
        pin_dir.rmdir()
    return removed
