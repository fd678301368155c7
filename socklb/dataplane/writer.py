"""Where the agent's plans go: the map writer interface, and the writer that
keeps the maps in memory.

    writer.read_programmed()     # what the maps hold, as plan.Programmed
    writer.read_version()        # the version last written with write_version
    writer.execute(plan)         # the plan's ops, in order (late=False: execute_late(plan) writes the rest)
    writer.write_version(v)
    writer.limits                # what the maps can hold (desired.Limits)
    writer.placement()           # where the maps live (node info)
    writer.read_policy()         # what the policy maps hold, as policy_plan.PolicyEntries
    writer.execute_policy(ops)   # policy_plan ops, in order

Two implementations: maps.BpfMapWriter writes the pinned BPF maps of a
loaded datapath; MemoryMapWriter below keeps the same entries in
dictionaries, for tests and the convergence benchmark (a node that programs
no kernel). Both read back through read_back(), so what one writes the other
reads the same way.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from socklb.lb.frontends import FrontendKey, Selection

from .desired import Limits
from .layout import Meta, PolicyAction
from .plan import (DeleteBackend, DeleteMaster, DeleteSlot, Plan, Programmed, ProgrammedBackend,
                   ProgrammedFrontend, PutBackend, PutMaster, PutSlot)
from .policy_plan import (DeleteExempt, DeletePrefix, DeleteVerdict, DeleteWorkload, FqdnEntries, FqdnOp, PolicyCfg,
                          PolicyEntries, PolicyOp, Prefix, PutCfg, PutExempt, PutPrefix, PutVerdict, PutWorkload,
                          ResetDenies, Rules,
                          WorkloadEntry)


class Placement(NamedTuple):
    """Where a writer's maps live (node info): the cgroup the programs are
    attached to, the pin directory, and whether an earlier agent's pins
    were adopted. Empty for maps in memory."""

    cgroup: str = ""
    pin_dir: str = ""
    adopted: bool = False


class Master(NamedTuple):
    """The value of a frontend's master entry (slot 0 of the services map)."""

    id: int
    count: int  # slots 1..count hold the selection table
    affinity_timeout: int
    selection: Selection
    flags: int = 0  # layout.SvcFlag


class MapWriter(ABC):
    """The maps the agent programs, entry by entry; limits: what they can
    hold. execute() and the version are common to every writer: a writer
    implements the entry operations below."""

    limits: Limits

    @abstractmethod
    def read_programmed(self) -> Programmed:
        """What the maps hold (service names are unknown to the maps: empty)."""

    def placement(self) -> Placement:
        return Placement()

    def read_version(self) -> int:
        """The version last written with write_version (0: none)."""
        return self.get_meta(Meta.VERSION)

    def write_version(self, version: int) -> None:
        self.set_meta(Meta.VERSION, version)

    def execute(self, plan: Plan, late: bool = True) -> None:
        """Write the plan's ops in order (plan.py says why that order), then
        its late ops unless late=False (then execute_late writes them)."""
        # Ids first, so that a crash mid-plan never lets an id be handed out twice.
        self.set_meta(Meta.NEXT_FRONTEND_ID, plan.next_frontend_id)
        self.set_meta(Meta.NEXT_BACKEND_ID, plan.next_backend_id)
        self._execute_ops(plan.ops)
        if late:
            self.execute_late(plan)

    def execute_late(self, plan: Plan) -> None:
        """The masters that gain the REDIRECTED flag (Plan.late)."""
        self._execute_ops(plan.late)

    def _execute_ops(self, ops) -> None:
        for op in ops:  # by type, not `match`: a full state is 100k+ ops, a class pattern costs 4x
            kind = type(op)
            if kind is PutSlot:
                self.put_slot(op.key, op.slot, op.backend_id)
            elif kind is PutBackend:
                self.put_backend(op.backend)
            elif kind is PutMaster:
                fe = op.frontend
                self.put_master(fe.key, Master(fe.id, len(fe.slots), fe.affinity_timeout, fe.selection, fe.flags))
            elif kind is DeleteSlot:
                self.delete_slot(op.key, op.slot)
            elif kind is DeleteMaster:
                self.delete_slot(op.key, 0)
            elif kind is DeleteBackend:
                self.delete_backend(op.id)
            else:
                raise TypeError(f"unknown op {op!r}")

    def execute_policy(self, ops: Iterable[PolicyOp]) -> None:
        """Write policy ops in order (policy_plan.py says why that order)."""
        for op in ops:
            kind = type(op)
            if kind is PutPrefix:
                self.put_prefix(op.set, op.prefix, op.rules)
            elif kind is PutVerdict:
                self.put_verdict(op.set, op.frontend_id, op.action)
            elif kind is PutWorkload:
                self.put_workload(op.cgroup, op.entry)
            elif kind is DeleteWorkload:
                self.delete_workload(op.cgroup)
            elif kind is DeleteVerdict:
                self.delete_verdict(op.set, op.frontend_id)
            elif kind is DeletePrefix:
                self.delete_prefix(op.set, op.prefix)
            elif kind is PutCfg:
                self.put_policy_cfg(op.cfg)
            elif kind is ResetDenies:
                self.reset_denies(op.id)
            elif kind is PutExempt:
                self.put_exempt(op.workload_id, op.frontend_id)
            elif kind is DeleteExempt:
                self.delete_exempt(op.workload_id, op.frontend_id)
            elif kind is FqdnOp:
                self.fqdn_op(op)
            else:
                raise TypeError(f"unknown policy op {op!r}")

    @abstractmethod
    def read_policy(self) -> PolicyEntries:
        """What the policy maps hold."""

    # --- entries ----------------------------------------------------------
    @abstractmethod
    def get_meta(self, idx: Meta) -> int: ...

    @abstractmethod
    def set_meta(self, idx: Meta, value: int) -> None: ...

    @abstractmethod
    def put_backend(self, b: ProgrammedBackend) -> None: ...

    @abstractmethod
    def put_slot(self, key: FrontendKey, slot: int, backend_id: int) -> None: ...

    @abstractmethod
    def put_master(self, key: FrontendKey, master: Master) -> None: ...

    @abstractmethod
    def delete_slot(self, key: FrontendKey, slot: int) -> None:
        """Delete a slot entry (slot 0: the master entry)."""

    @abstractmethod
    def delete_backend(self, backend_id: int) -> None: ...

    @abstractmethod
    def put_verdict(self, set_id: int, frontend_id: int, action: PolicyAction) -> None: ...

    @abstractmethod
    def delete_verdict(self, set_id: int, frontend_id: int) -> None: ...

    @abstractmethod
    def put_prefix(self, set_id: int, prefix: Prefix, rules: Rules) -> None: ...

    @abstractmethod
    def delete_prefix(self, set_id: int, prefix: Prefix) -> None: ...

    @abstractmethod
    def put_workload(self, cgroup: int, entry: WorkloadEntry) -> None: ...

    @abstractmethod
    def delete_workload(self, cgroup: int) -> None: ...

    @abstractmethod
    def put_policy_cfg(self, cfg: PolicyCfg) -> None: ...

    @abstractmethod
    def reset_denies(self, workload_id: int) -> None:
        """Zero a workload id's denial counters (the id goes to a new workload)."""

    @abstractmethod
    def put_exempt(self, workload_id: int, frontend_id: int) -> None: ...

    @abstractmethod
    def delete_exempt(self, workload_id: int, frontend_id: int) -> None: ...

    @abstractmethod
    def fqdn_op(self, op: FqdnOp) -> None:
        """One write of the FQDN entries (the DNS learner's maps, the hook's rules)."""


def apply_fqdn_op(entries: FqdnEntries, op: FqdnOp) -> None:
    """An FqdnOp on FqdnEntries as data (what the maps then hold)."""
    table = getattr(entries, op.table)
    if isinstance(table, set):
        (table.add if op.kind == "put" else table.discard)(op.key)
    elif op.kind == "put":
        table[op.key] = op.value
    else:
        table.pop(op.key, None)


def read_back(masters: Mapping[FrontendKey, Master], slots: Mapping[FrontendKey, Mapping[int, int]],
              backends: Iterable[ProgrammedBackend], next_frontend_id: int, next_backend_id: int) -> Programmed:
    """The Programmed that map entries stand for: masters and slots by
    frontend, the backends, and the id allocators as last written (never
    below an id in use)."""
    prog = Programmed()
    for fk, m in masters.items():
        s = slots.get(fk, {})
        table = tuple(s.get(i, 0) for i in range(1, m.count + 1))
        prog.frontends[fk] = ProgrammedFrontend(m.id, fk, Selection(m.selection), m.affinity_timeout, table,
                                                flags=m.flags)
    for b in backends:
        prog.backends[b.id] = b
    prog.reindex()
    prog.next_frontend_id = max([next_frontend_id, 1, *(f.id + 1 for f in prog.frontends.values())])
    prog.next_backend_id = max([next_backend_id, 1, *(i + 1 for i in prog.backends)])
    return prog


def group_policy(workloads: Mapping[int, WorkloadEntry], verdicts: Mapping[tuple[int, int], PolicyAction],
                 prefixes: Mapping[tuple[int, Prefix], Rules], cfg: PolicyCfg,
                 exempt: Iterable[tuple[int, int]] = ()) -> PolicyEntries:
    """The PolicyEntries that map entries stand for (entries keyed by set id)."""
    out = PolicyEntries(dict(workloads), cfg=cfg, exempt=frozenset(exempt))
    for (sid, fe), action in verdicts.items():
        out.frontends.setdefault(sid, {})[fe] = action
    for (sid, prefix), rules in prefixes.items():
        out.prefixes.setdefault(sid, {})[prefix] = rules
    return out


class MemoryMapWriter(MapWriter):
    """The services, backends, meta and policy maps as dictionaries, written
    op by op as the BPF maps are: a node that programs no kernel. Tests read
    what would be programmed from `services` (frontend key -> slot -> Master
    for slot 0, else backend id: the services map's (key, slot) entries, by
    key), `backends` (id -> ProgrammedBackend) and `meta` (layout.Meta ->
    value), the policy maps from `workloads` (cgroup id -> WorkloadEntry),
    `verdicts` ((set, frontend id) -> action), `prefixes` ((set, prefix) ->
    rules), `policy_cfg`, `exempt` ({(workload id, redirect frontend id)}),
    `denies` (workload id -> count: tests set it) and `fqdn` (FqdnEntries),
    or as a whole with read_programmed() and read_policy()."""

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self.services: dict[FrontendKey, dict[int, Master | int]] = {}
        self.backends: dict[int, ProgrammedBackend] = {}
        self.meta: dict[Meta, int] = {}
        self.workloads: dict[int, WorkloadEntry] = {}
        self.verdicts: dict[tuple[int, int], PolicyAction] = {}
        self.prefixes: dict[tuple[int, Prefix], Rules] = {}
        self.policy_cfg = PolicyCfg()
        self.denies: dict[int, int] = {}
        self.exempt: set[tuple[int, int]] = set()
        self.fqdn = FqdnEntries()

    def read_programmed(self) -> Programmed:
        masters = {key: entries[0] for key, entries in self.services.items() if 0 in entries}
        return read_back(masters, self.services, self.backends.values(), self.get_meta(Meta.NEXT_FRONTEND_ID),
                         self.get_meta(Meta.NEXT_BACKEND_ID))

    def get_meta(self, idx: Meta) -> int:
        return self.meta.get(idx, 0)

    def set_meta(self, idx: Meta, value: int) -> None:
        self.meta[idx] = value

    def put_backend(self, b: ProgrammedBackend) -> None:
        self.backends[b.id] = b

    def put_slot(self, key: FrontendKey, slot: int, backend_id: int) -> None:
        entries = self.services.get(key)
        if entries is None:
            entries = self.services[key] = {}
        entries[slot] = backend_id

    def put_master(self, key: FrontendKey, master: Master) -> None:
        self.put_slot(key, 0, master)

    def delete_slot(self, key: FrontendKey, slot: int) -> None:
        entries = self.services.get(key)
        if entries is not None:
            entries.pop(slot, None)
            if not entries:
                del self.services[key]

    def delete_backend(self, backend_id: int) -> None:
        self.backends.pop(backend_id, None)

    def read_policy(self) -> PolicyEntries:
        out = group_policy(self.workloads, self.verdicts, self.prefixes, self.policy_cfg, self.exempt)
        out.fqdn = FqdnEntries(dict(self.fqdn.workloads), set(self.fqdn.servers), dict(self.fqdn.patterns),
                               dict(self.fqdn.rules))
        return out

    def put_verdict(self, set_id: int, frontend_id: int, action: PolicyAction) -> None:
        self.verdicts[(set_id, frontend_id)] = action

    def delete_verdict(self, set_id: int, frontend_id: int) -> None:
        self.verdicts.pop((set_id, frontend_id), None)

    def put_prefix(self, set_id: int, prefix: Prefix, rules: Rules) -> None:
        self.prefixes[(set_id, prefix)] = rules

    def delete_prefix(self, set_id: int, prefix: Prefix) -> None:
        self.prefixes.pop((set_id, prefix), None)

    def put_workload(self, cgroup: int, entry: WorkloadEntry) -> None:
        self.workloads[cgroup] = entry

    def delete_workload(self, cgroup: int) -> None:
        self.workloads.pop(cgroup, None)

    def put_policy_cfg(self, cfg: PolicyCfg) -> None:
        self.policy_cfg = cfg

    def reset_denies(self, workload_id: int) -> None:
        self.denies.pop(workload_id, None)

    def put_exempt(self, workload_id: int, frontend_id: int) -> None:
        self.exempt.add((workload_id, frontend_id))

    def delete_exempt(self, workload_id: int, frontend_id: int) -> None:
        self.exempt.discard((workload_id, frontend_id))

    def fqdn_op(self, op: FqdnOp) -> None:
        apply_fqdn_op(self.fqdn, op)


__all__ = ["MapWriter", "Master", "MemoryMapWriter", "Placement", "apply_fqdn_op", "group_policy", "read_back"]
