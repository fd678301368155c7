"""Pure helpers of bench.fqdn_dns (the benchmark itself needs root and runs
by hand): its DNS records, the proxy client's nftables rules, its sets."""
from bench.fqdn_dns import (AUTH, NAME, NFT_TABLE, PATTERN, PROXY, PROXY_CACHED, WWW, host_addr, hosts_file,
                             nft_ruleset, sets)


def test_hosts_file_names_every_learned_address_once():
    lines = hosts_file(300).splitlines()
    assert lines[0] == f"{WWW} {NAME}" and len(lines) == 301
    addrs = [line.split()[0] for line in lines[1:]]
    assert len(set(addrs)) == 300 and host_addr(257) == "127.2.1.1" and "127.2.1.1 h257.example.test" in lines


def test_nft_rules_apply_to_the_proxy_client_only_and_reject_the_rest():
    text = nft_ruleset("unified/socklb-bench-fqdns-1/proxy", 2)
    assert f"table inet {NFT_TABLE}" in text
    assert 'socket cgroupv2 level 2 "unified/socklb-bench-fqdns-1/proxy" jump client' in text
    client = text[text.index("chain client"):]
    assert f"{PROXY}, {PROXY_CACHED}" in client
    assert client.index("th dport 53 accept") < client.index("@allowed") < client.index("reject")


def test_the_fqdn_set_learns_from_the_authoritative_server_only():
    by = {s["name"]: s for s in sets()}
    fq = by["s-fqdn"]
    assert fq["dns_servers"] == [{"address": AUTH, "port": 53}] and fq["fqdns"][0]["pattern"] == PATTERN
    assert [p["prefix"] for p in fq["prefixes"]] == [f"{AUTH}/32"]
    assert "fqdns" not in by["s-prefix"] and f"{AUTH}/32" in [p["prefix"] for p in by["s-prefix"]["prefixes"]]
