"""Helpers of the policy benchmarks (bench.policy_connect, bench.report's
"at most" targets); the benchmarks themselves need root and run by hand."""
import ipaddress
import random

from bench.policy_connect import SERVER, allow_list, disjoint_prefixes, nft_ruleset
from bench.report import target_text, verdict


def test_at_most_targets_are_decided_by_the_quartiles():
    assert verdict(("<=", 1.05), 0.96, 1.01, 1.04) == "met"
    assert verdict(("<=", 1.05), 0.96, 1.01, 1.06) == "borderline"
    assert verdict(("<=", 1.05), 1.06, 1.08, 1.10) == "not met"
    assert target_text(("<=", 1.05), 0.96, 1.01, 1.04).startswith(" — target ≤ 1.05x: met in this run")
    assert verdict(("<", 1.0), 0.90, 0.95, 1.0) == "borderline"  # "<": exactly 1 does not meet it
    assert target_text(("<", 1.0), 0.8, 0.9, 0.95).startswith(" — target < 1x: met in this run")


def test_prefixes_are_disjoint_and_never_hold_the_server():
    nets = [ipaddress.ip_network(p) for p in disjoint_prefixes(random.Random(1), 2000)]
    assert len(set(nets)) == 2000
    assert all(n.subnet_of(ipaddress.ip_network("10.0.0.0/8")) and 24 <= n.prefixlen <= 32 for n in nets)
    by_24 = {n.supernet(new_prefix=24) if n.prefixlen > 24 else n for n in nets}
    assert len(by_24) == 2000  # one a /24: no two overlap
    assert allow_list([])[-1] == f"{SERVER}/32"


def test_nft_ruleset_allows_the_list_and_rejects_the_rest():
    text = nft_ruleset(allow_list(["10.0.0.0/24"]), ct=False)
    assert "flags interval" in text and "10.0.0.0/24,\n192.0.2.2/32" in text
    assert text.index("ip daddr @allowed accept") < text.index("reject with tcp reset")
    assert "ct state" not in text
    assert nft_ruleset(allow_list([]), ct=True).index("ct state established,related accept") < \
        nft_ruleset(allow_list([]), ct=True).index("@allowed")


def test_termination_standing_and_the_unaccounted_rest():
    from bench.policy_termination import rest, standing

    assert standing(1.2, 1.5).startswith("ahead of ss -K")
    assert standing(0.3, 0.5).startswith("behind ss -K")
    assert standing(0.9, 1.1).startswith("level with ss -K")
    ph = {"list": 0.75, "list_ns": 0.002, "list_read": 0.225, "list_parse": 0.317}
    assert abs(rest(ph, "list") - 0.206) < 1e-9
