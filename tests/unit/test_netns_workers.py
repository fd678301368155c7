"""How many threads a namespace scan uses (socklb.dataplane.netns.netns_workers)."""

from __future__ import annotations

import os

import pytest

from socklb.dataplane import netns


def test_requested_wins(monkeypatch):
    monkeypatch.setenv(netns.WORKERS_ENV, "5")
    assert netns.netns_workers(3) == 3
    assert netns.netns_workers(1) == 1


def test_env_then_cpus(monkeypatch):
    monkeypatch.setenv(netns.WORKERS_ENV, " 2 ")
    assert netns.netns_workers() == 2
    monkeypatch.setenv(netns.WORKERS_ENV, "1")
    assert netns.netns_workers() == 1
    monkeypatch.delenv(netns.WORKERS_ENV)
    cpus = len(os.sched_getaffinity(0))
    assert netns.netns_workers() == max(1, min(cpus, netns.MAX_WORKERS))


@pytest.mark.parametrize("bad", ["0", "-2", "many"])
def test_bad_values(monkeypatch, bad):
    monkeypatch.setenv(netns.WORKERS_ENV, bad)
    with pytest.raises(ValueError, match=netns.WORKERS_ENV if bad == "many" else "at least 1"):
        netns.netns_workers()
    with pytest.raises(ValueError):
        netns.netns_workers(0)


def test_in_each_netns_keeps_order_with_threads():
    """fn runs in several threads when asked; results come back in the
    order of the namespaces given, failures reported in place."""
    own = netns.open_netns(["/proc/self/ns/net"])
    try:
        nss = [netns.Netns(f"net:[x{i}]", own[0].path, own[0].fd) for i in range(7)]

        def fn(ns):
            if ns.ident.endswith("3]"):
                raise RuntimeError("boom")
            return ns.ident

        out = netns.in_each_netns(nss, fn, workers=3)
    finally:
        netns.close_netns(own)
    assert [ns.ident for ns, _v, _e in out] == [ns.ident for ns in nss]
    assert [v for _ns, v, e in out if e is None] == [ns.ident for ns in nss if not ns.ident.endswith("3]")]
    assert [str(e) for _ns, _v, e in out if e is not None] == ["boom"]
