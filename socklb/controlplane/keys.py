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
NODE_VERSIONS = ROOT + "node-versions/"  # <replica>: the versions of the nodes connected to it (api_pb2.NodeVersions)
STATS = ROOT + "stats/"
TERMINATIONS = ROOT + "terminations/"  # <id>/request, <id>/reports/<node>
LEADER = ROOT + "leader/"  # <name>: the campaign holding a leader-only duty (Store.campaign)
# Policy resources: <name> -> the serialized policy_pb2 message.
POLICY_ROOT = ROOT + "policy/"
WORKLOADS = POLICY_ROOT + "workloads/"
POLICIES = POLICY_ROOT + "policies/"
REDIRECTS = POLICY_ROOT + "redirects/"
# index: (node, cgroup) -> the workload claiming it; a node's `workloads` map
# holds one workload per cgroup, so two claims are refused at the write.
# Outside the configuration range (below): no replica's feed needs it.
WORKLOAD_CGROUPS = ROOT + "workload-cgroups/"

# The configuration: what the snapshot cache is fed and the API's Watch
# streams (services, workloads, policies, local redirects) is ONE key range,
# [CONFIG_START, CONFIG_END), holding these four kinds and nothing else. One
# range read gives all four at one revision and one watch gives their changes
# in revision order, so a node at version R holds every change up to R.
# Watching ROOT would do that too, but would carry every node's statistics
# and status, written every few seconds, to every replica.
#
# Byte order of the top level: frontends/ < leader/ < node-versions/ < nodes/ < policy/ <
# services/ < stats/ < terminations/ < workload-cgroups/. services/ is
# released and stays; the policy kinds (new, nothing stored to migrate) sit
# under policy/, the last name before it. Any key added at the top level
# that sorts between "policy/" and "services/" (say "/socklb/quotas/") would
# fall inside the range and be sent to every replica's feed: name it
# elsewhere (tests/unit/test_keys.py fails otherwise). Indexes (frontends/,
# workload-cgroups/) stay outside for the same reason.
CONFIG_KINDS = (SERVICES, WORKLOADS, POLICIES, REDIRECTS)
CONFIG_START = POLICY_ROOT
CONFIG_END = SERVICES[:-1] + chr(ord("/") + 1)  # "/socklb/services0": just past every key of SERVICES


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


def node_versions(replica: str) -> str:
    return NODE_VERSIONS + replica


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
