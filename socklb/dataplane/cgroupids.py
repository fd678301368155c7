"""The ids of a cgroup and of every cgroup below it, as the kernel names
them: on cgroup2 a cgroup's id (bpf_get_current_cgroup_id(), a socket's
sk_cgrp_data) is the inode number of its directory. A workload is its cgroup
and everything below it, so its sockets are those of all these ids. The one
walk of a cgroup tree: workloads.py takes the ids below a workload from here
too (exact matching).

    ids = cgroup_ids(mount / "socklb/pod-a")             # {id, ids below ...}
    below = ids_below(mount / "socklb/pod-a")            # the ids below only
    by_workload = workload_cgroup_ids(mount, state.workloads)
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from socklb.v1 import node_pb2


def ids_below(path: str | Path) -> set[int]:
    """The ids of every cgroup below path (not its own); empty when it does
    not exist. Directory entries give the inodes (no stat per cgroup); a
    cgroup removed during the walk is skipped."""
    ids: set[int] = set()
    todo = [str(path)]
    while todo:
        try:
            with os.scandir(todo.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        ids.add(e.inode())
                        todo.append(e.path)
        except (FileNotFoundError, NotADirectoryError):
            continue
    return ids


def cgroup_ids(path: str | Path) -> set[int]:
    """The id of the cgroup at path and of every cgroup below it; empty when
    it does not exist."""
    try:
        top = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return set()
    return {top.st_ino} | ids_below(path)


def workload_cgroup_ids(mount: str | Path, workloads: Iterable[node_pb2.WorkloadState]) -> dict[str, set[int]]:
    """Workload name -> the ids of its cgroup (WorkloadState.cgroup, relative
    to the cgroup2 mount) and of the cgroups below it; empty for a cgroup
    that is not on this node."""
    return {w.name: cgroup_ids(Path(mount) / w.cgroup.strip("/")) for w in workloads}


__all__ = ["cgroup_ids", "ids_below", "workload_cgroup_ids"]
