"""Policy sets written straight into an agent's pinned policy maps, for the
kernel judge's tests and benchmark (Terminator.judge_cgroups): the entries
the agent would write for a set (policy_desired.compile_set, the writer's
encoding), under a set id the caller picks, without the agent applying a
state (which would run its own policy job, and with a workload entry make
the hooks enforce the set). Every entry written is deleted by close()."""
from __future__ import annotations

import ctypes as ct
import os
from pathlib import Path

from socklb.dataplane import kernel, layout
from socklb.dataplane.maps import _prefix_key, _rules
from socklb.dataplane.policy_desired import compile_set
from socklb.lb.frontends import FrontendKey
from socklb.v1 import node_pb2


class PolicyMaps:
    def __init__(self, pin_dir: Path):
        self._fds: list[int] = []
        self.services = self._open(pin_dir, "services", layout.SvcKey, layout.SvcVal)
        self.frontends = self._open(pin_dir, "policy_frontends", layout.PolicyFeKey, layout.PolicyVerdict)
        self.prefixes = self._open(pin_dir, "policy_prefixes", layout.PolicyPrefixKey, layout.PolicyRules)
        self._written: list[tuple[kernel.BpfMap, object]] = []

    def _open(self, pin_dir: Path, name: str, k, v) -> kernel.BpfMap:
        fd = kernel.obj_get(pin_dir / name)
        self._fds.append(fd)
        return kernel.BpfMap(fd, k, v, name)

    def frontend_id(self, key: FrontendKey) -> int | None:
        k = layout.SvcKey(port=layout.port_be(key.port), proto=key.proto)
        ct.memmove(k.addr, key.addr, 16)
        v = self.services.lookup(k)
        return v.id if v is not None else None

    def write(self, set_id: int, ps: node_pb2.PolicySetState) -> None:
        """The kernel entries of set `ps` under `set_id` (frontends not in the
        services map get no verdict, as with the agent)."""
        s = compile_set(ps, "set")
        for fk, action in s.frontends.items():
            fid = self.frontend_id(fk)
            if fid is None:
                continue
            key = layout.PolicyFeKey(set_id, fid)
            self.frontends.update(key, layout.PolicyVerdict(int(action)))
            self._written.append((self.frontends, key))
        for prefix, rules in s.prefixes.items():
            key = _prefix_key(set_id, prefix)
            self.prefixes.update(key, _rules(rules))
            self._written.append((self.prefixes, key))

    def close(self) -> None:
        for m, key in reversed(self._written):
            try:
                m.delete(key)
            except OSError:
                pass
        self._written.clear()
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
