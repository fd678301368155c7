"""Store key layout. One place, so replicas and tools agree.

A leaf: both stores import it (for the leader keys of their campaigns), so it
imports nothing of the control plane.
"""
from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

if TYPE_CHECKING:  # annotations only: the stores import this module, keep it light
    from socklb.lb.frontends import FrontendKey

ROOT = "/socklb/"
SERVICES = ROOT + "services/"
FRONTENDS = ROOT + "frontends/"  # index: frontend -> owning service, for uniqueness
NODES = ROOT + "nodes/"
STATS = ROOT + "stats/"
TERMINATIONS = ROOT + "terminations/"  # <id>/request, <id>/reports/<node>
LEADER = ROOT + "leader/"  # <name>: the campaign holding a leader-only duty (Store.campaign)
# Policy resources: <name> -> the serialized policy_pb2 message.
WORKLOADS = ROOT + "workloads/"
POLICIES = ROOT + "policies/"
REDIRECTS = ROOT + "redirects/"
# index: (node, cgroup) -> the workload claiming it; a node's `workloads` map
# holds one workload per cgroup, so two claims are refused at the write.
WORKLOAD_CGROUPS = ROOT + "workload-cgroups/"


def service(name: str) -> str:
    return SERVICES + name


def service_name(key: str) -> str:
    return key[len(SERVICES):]


def workload(name: str) -> str:
    return WORKLOADS + name


def workload_cgroup(node: str, cgroup: str) -> str:
    return f"{WORKLOAD_CGROUPS}{quote(node, safe='')}/{quote(cgroup, safe='')}"


def policy(name: str) -> str:
    return POLICIES + name


def redirect(name: str) -> str:
    return REDIRECTS + name


def resource_name(prefix: str, key: str) -> str:
    """The name in a key of WORKLOADS, POLICIES or REDIRECTS (as service_name)."""
    return key[len(prefix):]


def frontend(key: FrontendKey) -> str:
    return f"{FRONTENDS}{key.addr.hex()}-{key.port}-{key.proto}"


def leader(name: str) -> str:
    if not name or "/" in name:
        raise ValueError(f"leadership name must be non-empty without '/', got {name!r}")
    return LEADER + name


def node(name: str) -> str:
    return NODES + name


def stats(name: str) -> str:
    return STATS + name


def termination_request(term_id: str) -> str:
    return f"{TERMINATIONS}{quote(term_id, safe='')}/request"


def termination_report(term_id: str, node: str) -> str:
    return f"{TERMINATIONS}{quote(term_id, safe='')}/reports/{quote(node, safe='')}"


def parse_termination_key(key: str) -> tuple[str, str, str]:
    """(id, "request" | "reports", node or "")."""
    parts = key[len(TERMINATIONS):].split("/")
    return unquote(parts[0]), parts[1], unquote(parts[2]) if len(parts) > 2 else ""
