"""kube-proxy's two NAT mechanisms, reproduced inside the client namespace.

Both install DNAT for locally generated traffic (the nat OUTPUT hook), with
the same shape kube-proxy gives a ClusterIP service: a per-service chain that
picks an endpoint at random and a per-endpoint chain that DNATs. Rules exist
only while their variant is measured: `remove` deletes the tables outright,
so the netfilter NAT hooks (and with them conntrack) are unregistered from
the namespace and do not tax the other variants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bench.lab import netns_exec, run

NFT_TABLE = "socklb-bench"


@dataclass(frozen=True)
class Service:
    vip: str
    port: int
    proto: str                     # "tcp" | "udp"
    backends: list[tuple[str, int]]


def iptables_restore_script(svc: Service) -> str:
    """KUBE-SERVICES -> KUBE-SVC-* -> KUBE-SEP-*, with kube-proxy's
    probabilities: endpoint i of n is taken with 1/(n-i), the last always."""
    n = len(svc.backends)
    svc_chain = f"BENCH-SVC-{svc.proto.upper()}"
    lines = ["*nat", ":BENCH-SERVICES - [0:0]", f":{svc_chain} - [0:0]"]
    lines += [f":BENCH-SEP-{i} - [0:0]" for i in range(n)]
    lines.append("-A OUTPUT -m comment --comment socklb-bench -j BENCH-SERVICES")
    lines.append(f"-A BENCH-SERVICES -d {svc.vip}/32 -p {svc.proto} -m {svc.proto} "
                 f"--dport {svc.port} -j {svc_chain}")
    for i in range(n):
        left = n - i
        if left > 1:
            lines.append(f"-A {svc_chain} -m statistic --mode random "
                         f"--probability {1.0 / left:.11f} -j BENCH-SEP-{i}")
        else:
            lines.append(f"-A {svc_chain} -j BENCH-SEP-{i}")
    for i, (addr, port) in enumerate(svc.backends):
        lines.append(f"-A BENCH-SEP-{i} -p {svc.proto} -m {svc.proto} "
                     f"-j DNAT --to-destination {addr}:{port}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def nft_script(svc: Service) -> str:
    """kube-proxy's nftables mode: a verdict map keyed by
    daddr . l4proto . dport, a service chain doing `numgen random mod n vmap`,
    and endpoint chains doing the DNAT."""
    n = len(svc.backends)
    endpoints = "\n".join(
        f"  chain endpoint-{i} {{\n    meta l4proto {svc.proto} dnat to {addr}:{port}\n  }}"
        for i, (addr, port) in enumerate(svc.backends))
    picks = ", ".join(f"{i} : goto endpoint-{i}" for i in range(n))
    return f"""\
table ip {NFT_TABLE} {{
{endpoints}
  chain service-bench-{svc.proto} {{
    numgen random mod {n} vmap {{ {picks} }}
  }}
  map service-ips {{
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = {{ {svc.vip} . {svc.proto} . {svc.port} : goto service-bench-{svc.proto} }}
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
}}
"""


class NatRules(Protocol):
    name: str

    def install(self) -> None: ...

    def remove(self) -> None: ...


def iptables_uses_nft() -> bool:
    return "nf_tables" in run(["iptables", "-V"]).stdout


class IptablesDnat:
    name = "iptables"

    def __init__(self, ns: str, svc: Service) -> None:
        self.ns, self.svc = ns, svc

    def install(self) -> None:
        run(netns_exec(self.ns, ["iptables-restore", "--noflush"]),
            input=iptables_restore_script(self.svc))

    def remove(self) -> None:
        run(netns_exec(self.ns, ["iptables", "-t", "nat", "-F"]), check=False)
        run(netns_exec(self.ns, ["iptables", "-t", "nat", "-X"]), check=False)
        if iptables_uses_nft():
            # iptables-nft leaves an empty `ip nat` table whose base chains
            # keep NAT and conntrack hooked in; drop it.
            run(netns_exec(self.ns, ["nft", "delete", "table", "ip", "nat"]), check=False)


class NftablesDnat:
    name = "nftables"

    def __init__(self, ns: str, svc: Service) -> None:
        self.ns, self.svc = ns, svc

    def install(self) -> None:
        run(netns_exec(self.ns, ["nft", "-f", "-"]), input=nft_script(self.svc))

    def remove(self) -> None:
        run(netns_exec(self.ns, ["nft", "delete", "table", "ip", NFT_TABLE]), check=False)


def ruleset(ns: str) -> str:
    """The namespace's whole nftables ruleset (iptables-nft rules included)."""
    return run(netns_exec(ns, ["nft", "list", "ruleset"])).stdout.strip()


def assert_no_rules(ns: str) -> None:
    """Only the active variant's rules may exist while it is measured."""
    rules = ruleset(ns)
    if rules:
        raise RuntimeError(f"stale netfilter rules in {ns}:\n{rules}")
