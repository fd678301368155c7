"""fqdn_prune: which expired learned entries an open socket holds on to
(held_open), and the pruner's round over a learner (an in-memory one here;
the pinned map's is proven by tests/kernel/test_kernel_fqdn.py)."""
from __future__ import annotations

from types import SimpleNamespace

from socklb.dataplane.dns import Learned, LearnedSlot
from socklb.dataplane.fqdn_prune import LearnedPruner, held_open
from socklb.lb.addresses import addr16


def entry(wid, addr, expiry):
    return Learned(wid, addr, 1, (LearnedSlot(7, expiry, 60),))


def sock(cgroup_id, dst):
    return SimpleNamespace(cgroup_id=cgroup_id, dst=addr16(dst))


CANDS = [entry(3, "10.0.0.1", 5), entry(3, "10.0.0.2", 5), entry(4, "10.0.0.1", 5), entry(9, "10.0.0.9", 5)]
CGROUPS = {3: {30, 31}, 4: {40}}  # workload 9 has no cgroup here


def test_held_open_are_the_candidates_an_open_socket_of_their_workload_goes_to():
    asked = []

    def listing(ids):
        asked.append(ids)
        # 31 is below workload 3's cgroup; 40 (workload 4) goes to 10.0.0.2, which 4 did not learn
        return [sock(31, "10.0.0.1"), sock(40, "10.0.0.2"), sock(40, "10.0.0.7"), sock(99, "10.0.0.1")]

    assert held_open(CANDS, CGROUPS, listing) == {(3, addr16("10.0.0.1"))}
    assert asked == [{30, 31, 40}]  # only the candidates' workloads' cgroups


def test_nothing_listed_without_candidates_on_this_node_and_all_kept_when_listing_fails():
    def boom(ids):
        raise OSError("no iterator")

    assert held_open([entry(9, "10.0.0.9", 5)], CGROUPS, boom) == set()  # no cgroup: nothing to list
    kept = {(3, addr16("10.0.0.1")), (3, addr16("10.0.0.2")), (4, addr16("10.0.0.1"))}
    assert held_open(CANDS, CGROUPS, boom) == kept
    assert held_open(CANDS, CGROUPS, None) == kept  # no terminator: cannot tell, keep


class FakeLearner:
    def __init__(self, entries):
        self.entries = list(entries)

    def learned(self):
        return list(self.entries)

    def prune(self, now, keep):
        gone = [x for x in self.entries if x.expiry_ns <= now and not keep(x)]
        self.entries = [x for x in self.entries if x not in gone]
        return len(gone)


def test_a_round_deletes_the_expired_no_socket_holds_and_lists_nothing_when_none_expired():
    live = entry(3, "10.0.0.5", 100)
    learner = FakeLearner([*CANDS, live])
    calls = []
    term = SimpleNamespace(list_cgroups=lambda ids: calls.append(ids) or SimpleNamespace(
        sockets=[sock(30, "10.0.0.2")]))
    p = LearnedPruner(learner, term, lambda: CGROUPS)
    assert p.run(now_ns=50) == 3
    assert learner.entries == [CANDS[1], live]
    assert p.run(now_ns=50) == 0 and len(calls) == 2
    assert LearnedPruner(FakeLearner([live]), term, lambda: CGROUPS).run(now_ns=50) == 0 and len(calls) == 2
