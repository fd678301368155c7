"""Store key layout. One place, so replicas and tools agree."""
from __future__ import annotations

from socklb.dataplane.desired import FrontendKey

ROOT = "/socklb/"
SERVICES = ROOT + "services/"
FRONTENDS = ROOT + "frontends/"  # index: frontend -> owning service, for uniqueness
NODES = ROOT + "nodes/"
STATS = ROOT + "stats/"


def service(name: str) -> str:
    return SERVICES + name


def service_name(key: str) -> str:
    return key[len(SERVICES):]


def frontend(key: FrontendKey) -> str:
    return f"{FRONTENDS}{key.addr.hex()}-{key.port}-{key.proto}"


def node(name: str) -> str:
    return NODES + name


def stats(name: str) -> str:
    return STATS + name
