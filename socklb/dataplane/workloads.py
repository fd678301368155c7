"""Where a workload's processes are: its cgroup on this node, resolved to the
id the hooks see (bpf_get_current_cgroup_id() is the cgroup directory's
inode number).

    cgroups = KernelCgroups(cgroup2_mount(), balanced=Path(".../socklb"), exact=False)
    cgroups.resolve("socklb/pod-a")     # Cgroup(id=...) or None: not on this node (yet)

    cgroups.tree("socklb/pod-a")        # {id, ids below ...}: whose sockets are the workload's

A workload's cgroup may appear after the workload is registered: the agent
resolves again every few seconds (Agent.recheck_workloads). With exact
matching (the hooks cannot walk up to a process's ancestors: see
loader.workload_way) a Cgroup also lists every cgroup below it, which the
agent writes too. The tree is walked by cgroupids.py.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .cgroupids import cgroup_ids, ids_below

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cgroup:
    id: int
    below: tuple[int, ...] = ()  # exact matching: the ids of every cgroup below it


class Cgroups(ABC):
    """Resolves a workload's cgroup path (relative to the cgroup2 mount)."""

    @abstractmethod
    def resolve(self, path: str) -> Cgroup | None:
        """The cgroup, or None when it does not exist on this node."""

    @abstractmethod
    def tree(self, path: str) -> set[int]:
        """The ids of the cgroup and of every cgroup below it (empty: not on
        this node, or not one the hooks see): the cgroups whose sockets are
        the workload's, whatever the matching."""


class KernelCgroups(Cgroups):
    """The cgroups of this machine under `mount`. Only those at or below
    `balanced` (the cgroup the hooks are attached to; None: any) can be
    workloads: the hooks never see the processes of another."""

    def __init__(self, mount: Path, balanced: Path | None = None, exact: bool = False):
        self.mount = mount
        self.balanced = balanced
        self.exact = exact
        self._outside: set[str] = set()

    def resolve(self, path: str) -> Cgroup | None:
        full = self._seen(path)
        if full is None:
            return None
        try:
            st = os.stat(full)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISDIR(st.st_mode):
            return None
        # Sorted: a Cgroup is compared with the last answer to tell a change.
        return Cgroup(st.st_ino, tuple(sorted(ids_below(full))) if self.exact else ())

    def tree(self, path: str) -> set[int]:
        full = self._seen(path)
        return cgroup_ids(full) if full is not None else set()

    def _seen(self, path: str) -> Path | None:
        """The cgroup's directory, or None when the hooks never see its
        processes (not below the balanced cgroup): such a workload is not
        programmed."""
        full = self.mount / path
        if self.balanced is not None and not full.is_relative_to(self.balanced):
            if path not in self._outside:  # once: it is resolved every few seconds
                log.warning("workload cgroup %s is not below the balanced cgroup %s: not programmed",
                            full, self.balanced)
                self._outside.add(path)
            return None
        return full


class MemoryCgroups(Cgroups):
    """The cgroups of a node that programs no kernel (tests, benchmarks):
    `cgroups` (path -> Cgroup, tests change it), or, when not given, every
    path exists with an id derived from it."""

    def __init__(self, cgroups: Mapping[str, Cgroup] | None = None):
        self.cgroups = dict(cgroups) if cgroups is not None else None

    def resolve(self, path: str) -> Cgroup | None:
        if self.cgroups is None:
            return Cgroup(int.from_bytes(hashlib.blake2b(path.encode(), digest_size=7).digest(), "big") + 1)
        return self.cgroups.get(path)

    def tree(self, path: str) -> set[int]:
        c = self.resolve(path)
        return {c.id, *c.below} if c is not None else set()


__all__ = ["Cgroup", "Cgroups", "KernelCgroups", "MemoryCgroups"]
