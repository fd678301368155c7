"""The map writer of a loaded datapath: reads the programmed state out of
the pinned BPF maps and writes plans to them (writer.MapWriter). The maps
are the truth: after a restart the agent rebuilds everything it needs from
them."""
from __future__ import annotations

import ctypes as ct
import os
from collections.abc import Mapping

from socklb.lb.frontends import FrontendKey

from . import layout, mapbatch
from .mapbatch import MAP_WRITES, MAP_WRITES_ENV
from .desired import Limits
from .kernel import BpfMap
from .loader import Datapath, choose_way
from .plan import Programmed, ProgrammedBackend, collector_paused
from .policy_desired import key_prefix, prefix_key
from .policy_plan import FqdnEntries, FqdnOp, PolicyCfg, PolicyEntries, PortRule, Prefix, Rules, WorkloadEntry
from .writer import MapWriter, Master, Placement, group_policy, read_back


def _svc_key(key: FrontendKey, slot: int) -> layout.SvcKey:
    return layout.SvcKey(addr=layout.pack_addr(key.addr), port=layout.port_be(key.port),
                         proto=key.proto, table=key.table, slot=slot)


def _frontend_key(k: layout.SvcKey) -> FrontendKey:
    return FrontendKey(bytes(k.addr), layout.port_host(k.port), k.proto, k.table)


def _prefix_key(set_id: int, prefix: Prefix) -> layout.PolicyPrefixKey:
    prefixlen, set_word, addr = prefix_key(set_id, prefix)
    return layout.PolicyPrefixKey(prefixlen=prefixlen, set=set_word, addr=(ct.c_ubyte * 16)(*addr))


def _rules(rules: Rules) -> layout.PolicyRules:
    out = layout.PolicyRules(n=len(rules))
    for i, r in enumerate(rules):
        out.rules[i] = layout.PortRule(port=r.port, end_port=r.end_port, proto=r.proto, action=int(r.action))
    return out


def _rules_back(v: layout.PolicyRules) -> Rules:
    return tuple(PortRule(r.port, r.end_port, r.proto, layout.PolicyAction(r.action)) for r in v.rules[:v.n])


def policy_entries(maps: Mapping[str, BpfMap]) -> PolicyEntries:
    """What the policy maps (by name, as loader.map_specs) hold."""
    workloads = {k.value: WorkloadEntry(v.id, v.policy_set, v.flags) for k, v in maps["workloads"].items()}
    verdicts = {(k.set, k.frontend_id): layout.PolicyAction(v.action) for k, v in maps["policy_frontends"].items()}
    prefixes = {key_prefix(k.prefixlen, k.set, bytes(k.addr)): _rules_back(v)
                for k, v in maps["policy_prefixes"].items()}
    c = maps["policy_cfg"].lookup(ct.c_uint32(0))
    cfg = (PolicyCfg(c.cgroups, c.min_level, c.max_level, bool(c.flags & layout.CFG_F_EXEMPT_ONLY))
           if c is not None else PolicyCfg())
    exempt = [(k.workload_id, k.frontend_id) for k, _ in maps["redirect_exempt"].items()]
    out = group_policy(workloads, verdicts, prefixes, cfg, exempt)
    out.fqdn = fqdn_entries(maps)
    return out


# --- FQDN policy: the DNS learner's maps (bpf/dns.h) and the hook's rules per pattern --------

def _server_key(k: tuple[int, bytes, int]) -> layout.DnsServer:
    set_id, addr, port = k
    return layout.DnsServer(set_id, layout.port_be(port), 0, layout.pack_addr(addr))


# FqdnEntries' table -> (map name, key encoder, value encoder)
_FQDN_MAPS = {
    "workloads": ("dns_workloads", ct.c_uint64, lambda v: layout.DnsWorkload(*v)),
    "servers": ("dns_servers", _server_key, lambda v: ct.c_uint8(1)),
    "patterns": ("dns_patterns", lambda k: layout.DnsPatternKey(k[0], 0, k[1]), lambda v: layout.DnsPatternVal(*v)),
    "rules": ("policy_fqdns", lambda k: layout.PolicyFqdnKey(*k), _rules),
}


def fqdn_entries(maps: Mapping[str, BpfMap]) -> FqdnEntries:
    """What the FQDN maps hold; a map the datapath lacks (no learner, or a
    hook without FQDN rules) holds nothing."""
    out = FqdnEntries()
    if "dns_workloads" in maps:
        out.workloads = {k.value: (v.id, v.set) for k, v in maps["dns_workloads"].items()}
    if "dns_servers" in maps:
        out.servers = {(k.set, bytes(k.addr), layout.port_host(k.port)) for k in maps["dns_servers"].keys()}
    if "dns_patterns" in maps:
        out.patterns = {(k.set, k.hash): (v.kinds, v.exact, v.one_label, v.any_depth)
                        for k, v in maps["dns_patterns"].items()}
    if "policy_fqdns" in maps:
        out.rules = {(k.set, k.pattern): _rules_back(v) for k, v in maps["policy_fqdns"].items()}
    return out


def write_fqdn(maps: Mapping[str, BpfMap], op: FqdnOp) -> None:
    """One FqdnOp on the maps; skipped when the datapath lacks its map."""
    name, key_of, value_of = _FQDN_MAPS[op.table]
    m = maps.get(name)
    if m is None:
        return
    if op.kind == "put":
        m.update(key_of(op.key), value_of(op.value))
    else:
        m.delete(key_of(op.key))


def map_writes_way(requested: str, batch_refused: str | None) -> str:
    """The way the maps are written: "batch", or "per-entry: <why>"."""
    return choose_way(requested, MAP_WRITES, "batch", "per-entry", batch_refused, "map writes")


class BpfMapWriter(MapWriter):
    """The services, backends, meta, counters and policy maps of a loaded
    Datapath. writes: MAP_WRITES (default: $SOCKLB_MAP_WRITES, else auto);
    the kernel is asked once, here, whether it takes batches on the maps
    plans write (batch_refused: None, or why not), and write_way says how
    they are written."""

    def __init__(self, datapath: Datapath, writes: str | None = None):
        self.datapath = datapath
        maps = datapath.maps
        self.services = maps["services"]
        self.backends = maps["backends"]
        self.counters = maps["counters"]
        self.meta = maps["meta"]
        self.workloads = maps["workloads"]
        self.policy_frontends = maps["policy_frontends"]
        self.policy_prefixes = maps["policy_prefixes"]
        self.policy_cfg = maps["policy_cfg"]
        self.workload_denies = maps["workload_denies"]
        self.redirect_exempt = maps["redirect_exempt"]
        self.limits = Limits(services=datapath.capacity.services, backends=datapath.capacity.backends)
        self.batch_refused = self.services.batch_refused() or self.backends.batch_refused()
        self.write_way = map_writes_way(writes or os.environ.get(MAP_WRITES_ENV, "auto"), self.batch_refused)
        self._batch_maps = {"services": self.services, "backends": self.backends}

    def _execute_ops(self, ops) -> None:
        if self.write_way != "batch":
            super()._execute_ops(ops)
            return
        with collector_paused():  # packing a full state's entries: as for its plan
            for b in mapbatch.batches(ops):
                m = self._batch_maps[b.map]
                if b.delete:
                    m.delete_batch(b.keys, b.count)
                else:
                    m.update_batch(b.keys, b.values, b.count)

    def placement(self) -> Placement:
        dp = self.datapath
        return Placement(str(dp.cgroup), str(dp.pin_dir), dp.adopted)

    def read_programmed(self) -> Programmed:
        masters: dict[FrontendKey, Master] = {}
        slots: dict[FrontendKey, dict[int, int]] = {}
        for k, v in self.services.items():
            fk = _frontend_key(k)
            if k.slot == 0:
                masters[fk] = Master(v.id, v.count, v.affinity_timeout, layout.Selection(v.selection), v.flags)
            else:
                slots.setdefault(fk, {})[k.slot] = v.id
        backends = [ProgrammedBackend(k.value, b.frontend_id, bytes(b.addr), layout.port_host(b.port), b.proto,
                                      layout.BackendState(b.state)) for k, b in self.backends.items()]
        return read_back(masters, slots, backends, self.get_meta(layout.Meta.NEXT_FRONTEND_ID),
                         self.get_meta(layout.Meta.NEXT_BACKEND_ID))

    # --- entries ------------------------------------------------------------
    def get_meta(self, idx: layout.Meta) -> int:
        v = self.meta.lookup(ct.c_uint32(idx))
        return v.value if v is not None else 0

    def set_meta(self, idx: layout.Meta, value: int) -> None:
        self.meta.update(ct.c_uint32(idx), ct.c_uint64(value))

    def put_backend(self, b: ProgrammedBackend) -> None:
        self.backends.update(ct.c_uint32(b.id), layout.Backend(
            addr=layout.pack_addr(b.addr), port=layout.port_be(b.port), proto=b.proto, state=int(b.state),
            frontend_id=b.frontend_id))

    def put_slot(self, key: FrontendKey, slot: int, backend_id: int) -> None:
        self.services.update(_svc_key(key, slot), layout.SvcVal(id=backend_id))

    def put_master(self, key: FrontendKey, master: Master) -> None:
        self.services.update(_svc_key(key, 0), layout.SvcVal(
            id=master.id, count=master.count, affinity_timeout=master.affinity_timeout,
            selection=int(master.selection), flags=master.flags))

    def delete_slot(self, key: FrontendKey, slot: int) -> None:
        self.services.delete(_svc_key(key, slot))

    def delete_backend(self, backend_id: int) -> None:
        self.backends.delete(ct.c_uint32(backend_id))

    # --- policy -------------------------------------------------------------
    def read_policy(self) -> PolicyEntries:
        return policy_entries(self.datapath.maps)

    def put_verdict(self, set_id: int, frontend_id: int, action: layout.PolicyAction) -> None:
        self.policy_frontends.update(layout.PolicyFeKey(set_id, frontend_id), layout.PolicyVerdict(int(action)))

    def delete_verdict(self, set_id: int, frontend_id: int) -> None:
        self.policy_frontends.delete(layout.PolicyFeKey(set_id, frontend_id))

    def put_prefix(self, set_id: int, prefix: Prefix, rules: Rules) -> None:
        self.policy_prefixes.update(_prefix_key(set_id, prefix), _rules(rules))

    def delete_prefix(self, set_id: int, prefix: Prefix) -> None:
        self.policy_prefixes.delete(_prefix_key(set_id, prefix))

    def put_workload(self, cgroup: int, entry: WorkloadEntry) -> None:
        self.workloads.update(ct.c_uint64(cgroup), layout.Workload(entry.id, entry.policy_set, entry.flags))

    def delete_workload(self, cgroup: int) -> None:
        self.workloads.delete(ct.c_uint64(cgroup))

    def fqdn_op(self, op: FqdnOp) -> None:
        write_fqdn(self.datapath.maps, op)

    def put_policy_cfg(self, cfg: PolicyCfg) -> None:
        self.policy_cfg.update(ct.c_uint32(0), layout.PolicyCfg(
            cfg.cgroups, cfg.min_level, cfg.max_level, layout.CFG_F_EXEMPT_ONLY if cfg.exempt_only else 0))

    def reset_denies(self, workload_id: int) -> None:
        self.workload_denies.zero_percpu(ct.c_uint32(workload_id))

    def put_exempt(self, workload_id: int, frontend_id: int) -> None:
        self.redirect_exempt.update(layout.ExemptKey(workload_id, frontend_id), ct.c_uint32(1))

    def delete_exempt(self, workload_id: int, frontend_id: int) -> None:
        self.redirect_exempt.delete(layout.ExemptKey(workload_id, frontend_id))

    def workload_denied(self, ids) -> dict[int, int]:
        """Denials per workload id, summed over CPUs."""
        return {i: sum(v.value for v in self.workload_denies.lookup_percpu(ct.c_uint32(i))) for i in ids}

    # --- counters (written by the programs) ----------------------------------
    def counter_values(self) -> dict[layout.Counter, int]:
        """The datapath's counters, summed over CPUs."""
        return {c: sum(v.value for v in self.counters.lookup_percpu(ct.c_uint32(c))) for c in layout.Counter}
