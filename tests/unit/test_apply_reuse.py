"""The snapshot apply's short cuts (issue 14) change nothing a node
programs: plain IPv4 backends read in a few C calls are refused with the
same named errors as the full check, an unchanged service keeps its targets
while every change to one is still seen, and a delta after a full state
programs what a full apply of the final state does."""
import random
from dataclasses import replace

import pytest

from socklb.dataplane.agent import Agent
from socklb.dataplane.desired import frontend_targets
from socklb.dataplane.writer import MemoryMapWriter
from socklb.lb.errors import InvalidState
from socklb.lb.frontends import BackendState, service_targets
from socklb.lb.addresses import addr16
from socklb.v1 import node_pb2, types_pb2


def svc(name, vip, backends, **kw):
    """backends: (address, port, weight, state) tuples (weight, state optional)."""
    return node_pb2.ServiceState(
        name=name, frontends=[types_pb2.Frontend(address=vip, port=80)],
        backends=[types_pb2.Backend(address=b[0], port=b[1], weight=b[2] if len(b) > 2 else 0,
                                    state=b[3] if len(b) > 3 else 0) for b in backends], **kw)


GOOD = [("10.0.0.1", 8080), ("10.0.0.2", 8080)]


@pytest.mark.parametrize("bad, field, message", [
    (("10.0.0.3", 70000), "services[0].backends[2].port", "port 70000 is out of range 0..65535"),
    (("10.0.0.3", 1, 70000), "services[0].backends[2].weight", "70000 exceeds 65535"),
    (("10.0.0.3", 1, 0, 99), "services[0].backends[2].state", "unknown backend state 99"),
    (("224.0.0.1", 1), "services[0].backends[2].address", "224.0.0.1 cannot be used (unspecified or multicast)"),
    (("0.0.0.0", 1), "services[0].backends[2].address", "0.0.0.0 cannot be used"),
    (("010.0.0.1", 1), "services[0].backends[2].address", "'010.0.0.1' is not an IPv4 or IPv6 address"),
    (("[10.0.0.3]", 1), "services[0].backends[2].address", "brackets are for IPv6 addresses only"),
    (("10.0.0.3\0", 1), "services[0].backends[2].address", "is not an IPv4 or IPv6 address"),
    (("::ffff:10.0.0.1", 8080), "services[0].backends[2]", "duplicate of backends[0] (::ffff:10.0.0.1 port 8080)"),
    (("10.0.0.2", 8080), "services[0].backends[2]", "duplicate of backends[1] (10.0.0.2 port 8080)"),
    # Two wrong fields: the first in the message's order is named.
    (("x", 70000, 70000), "services[0].backends[2].address", "'x' is not an IPv4 or IPv6 address"),
    (("10.0.0.3", 70000, 70000), "services[0].backends[2].port", "port 70000"),
])
def test_a_bad_backend_after_good_ones_is_named(bad, field, message):
    state = node_pb2.NodeState(services=[svc("a", "127.0.0.1", [*GOOD, bad])])
    with pytest.raises(InvalidState) as e:
        frontend_targets(state)
    assert e.value.field == field and message in str(e.value), str(e.value)


def test_every_address_form_gives_the_datapaths_bytes():
    """IPv4, v4-mapped IPv6 (an IPv4 backend), IPv6 with and without
    brackets: one 16-byte form, each in its frontend's family."""
    s = node_pb2.ServiceState(
        name="a", frontends=[types_pb2.Frontend(address="127.0.0.1", port=80),
                             types_pb2.Frontend(address="::1", port=80)],
        backends=[types_pb2.Backend(address=a, port=p) for a, p in
                  [("10.0.0.1", 1), ("::ffff:10.0.0.2", 0), ("2001:db8::1", 2), ("[2001:db8::2]", 3)]])
    v4, v6 = service_targets(s, "s")
    assert [(b.addr, b.port) for b in v4.backends] == [(addr16("10.0.0.1"), 1), (addr16("10.0.0.2"), 80)]
    assert [(b.addr, b.port) for b in v6.backends] == [(addr16("2001:db8::1"), 2), (addr16("2001:db8::2"), 3)]
    assert all(b.state is BackendState.ACTIVE and b.weight == 1 for b in v4.backends + v6.backends)


def content(writer: MemoryMapWriter) -> dict:
    """What the maps hold, ids resolved: per frontend its master's fields and
    its slots as backend identities, and every backend with its frontend."""
    out = {}
    for key, entries in writer.services.items():
        m = entries[0]
        slots = tuple((writer.backends[entries[i]].addr, writer.backends[entries[i]].port,
                       writer.backends[entries[i]].state) for i in range(1, m.count + 1))
        out[key] = (m.count, m.affinity_timeout, m.selection, m.flags, slots)
    fe_keys = {entries[0].id: key for key, entries in writer.services.items()}
    backends = sorted((fe_keys[b.frontend_id], b.addr, b.port, b.proto, b.state) for b in writer.backends.values())
    return {"frontends": out, "backends": backends}


BASE = [svc("a", "127.0.1.1", [("10.0.0.1", 80, 1), ("10.0.0.2", 80, 2), ("10.0.0.3", 80, 1)]),
        svc("b", "127.0.1.2", [("10.0.1.1", 80), ("10.0.1.2", 80)]),
        svc("c", "127.0.1.3", [("10.0.2.1", 80), ("10.0.2.2", 80), ("10.0.2.3", 80)], selection=2)]


def changed(i, edit):
    services = [node_pb2.ServiceState() for _ in BASE]
    for s, b in zip(services, BASE):
        s.CopyFrom(b)
    edit(services[i])
    return services


def _swap(s):
    s.backends[0].address, s.backends[1].address = s.backends[1].address, s.backends[0].address


EDITS = {
    "weight": (0, lambda s: setattr(s.backends[1], "weight", 5)),
    "state": (0, lambda s: setattr(s.backends[0], "state", types_pb2.BACKEND_STATE_DRAINING)),
    "order": (1, _swap),
    "maglev order": (2, _swap),
    "port": (1, lambda s: setattr(s.backends[0], "port", 81)),
    "selection": (1, lambda s: setattr(s, "selection", types_pb2.SELECTION_MAGLEV)),
    "affinity": (2, lambda s: setattr(s, "affinity_timeout_seconds", 30)),
    "frontend": (0, lambda s: s.frontends.add(address="127.0.1.9", port=81)),
    "backend removed": (2, lambda s: s.backends.pop()),
}


@pytest.mark.parametrize("edit", EDITS)
def test_a_changed_service_is_seen_and_the_others_keep_their_targets(edit):
    i, fn = EDITS[edit]
    after = changed(i, fn)
    a = Agent(MemoryMapWriter(), "n")
    a.apply(node_pb2.NodeState(version=1, services=BASE))
    before = dict(a.targets)
    a.apply(node_pb2.NodeState(version=2, services=after))
    fresh = Agent(MemoryMapWriter(), "n")
    fresh.apply(node_pb2.NodeState(version=2, services=after))
    assert a.targets == fresh.targets
    assert content(a.writer) == content(fresh.writer)
    assert content(a.writer) != content(Agent(MemoryMapWriter(), "n").writer)  # something is programmed
    name = BASE[i].name
    for k, t in a.targets.items():  # the unchanged services' targets are the ones applied before
        assert (t is before.get(k)) == (t.service != name), (edit, k)


def test_the_checks_between_services_still_run_on_unchanged_ones():
    """b unchanged, a now claims b's frontend: refused, naming b's field as
    before (the later service), and nothing written."""
    a = Agent(MemoryMapWriter(), "n")
    a.apply(node_pb2.NodeState(version=1, services=BASE))
    held = content(a.writer)
    after = changed(0, lambda s: setattr(s.frontends[0], "address", "127.0.1.2"))
    with pytest.raises(InvalidState) as e:
        a.apply(node_pb2.NodeState(version=2, services=after))
    assert e.value.field == "services[1].frontends[0]" and "already used by services[0] ('a')" in str(e.value)
    assert content(a.writer) == held and a.applied_version == 1
    twice = [BASE[0], BASE[1], BASE[1]]
    with pytest.raises(InvalidState, match="'b' is already services\\[1\\]"):
        a.apply(node_pb2.NodeState(version=3, services=twice))


def test_a_delta_after_a_full_state_programs_what_the_final_full_state_does():
    rnd = random.Random(14)

    def random_service(i):
        return svc(f"s{i}", f"127.0.2.{i}", [(f"10.1.{i}.{b}", 80 + rnd.randrange(2), rnd.choice([0, 1, 3]),
                                              rnd.choice([0, 1, 2]))
                                             for b in rnd.sample(range(1, 50), rnd.randrange(1, 6))],
                   selection=rnd.choice([0, 2]))
    services = {f"s{i}": random_service(i) for i in range(1, 30)}
    a = Agent(MemoryMapWriter(), "n")
    a.apply(node_pb2.NodeState(version=1, services=services.values()))
    for v in range(2, 8):
        upserts = [random_service(i) for i in rnd.sample(range(1, 40), 4)]
        removals = [n for n in rnd.sample(sorted(services), 3) if n not in {s.name for s in upserts}]
        a.apply_delta(node_pb2.NodeStateDelta(from_version=v - 1, version=v, upserts=upserts, removals=removals))
        for n in removals:
            del services[n]
        services.update((s.name, s) for s in upserts)
        final = node_pb2.NodeState(version=v, services=services.values())
        fresh = Agent(MemoryMapWriter(), "n")
        fresh.apply(final)
        assert content(a.writer) == content(fresh.writer)
        assert a.targets == fresh.targets
        # And a whole state over it (the unchanged services reused) changes nothing.
        a.apply(final)
        assert content(a.writer) == content(fresh.writer)


class FailingBackend(MemoryMapWriter):
    """Refuses the n-th backend write from when it is armed."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def put_backend(self, b):
        self.n -= 1
        if self.n == 0:
            raise OSError(28, "no space left in backends")
        super().put_backend(b)


def _fields(p):
    return p.frontends, p.backends, p.by_frontend, p.next_frontend_id, p.next_backend_id


def test_many_deltas_keep_the_state_they_change_in_place_equal_to_the_maps():
    """A partial plan changes the agent's programmed state in place: after
    many deltas (no full state between them) it is what the maps hold, ids
    included, and the maps what a full apply of the final state programs; a
    snapshot readers took earlier does not change under them; a delta
    whose write fails leaves the programmed state, the published one and
    the maps as they were, and the next delta applies."""
    rnd = random.Random(41)

    def random_service(i):
        return svc(f"s{i}", f"127.0.3.{i}", [(f"10.2.{i}.{b}", 80, rnd.choice([0, 1, 3]))
                                             for b in rnd.sample(range(1, 50), rnd.randrange(1, 6))])
    services = {f"s{i}": random_service(i) for i in range(1, 20)}
    w = FailingBackend()
    a = Agent(w, "n")
    a.apply(node_pb2.NodeState(version=1, services=services.values()))
    early = a.catalog.current().programmed
    held = _fields(early.copy())
    v = 1
    for step in range(40):
        upserts = [random_service(i) for i in rnd.sample(range(1, 30), rnd.randrange(1, 5))]
        removals = [n for n in rnd.sample(sorted(services), min(2, len(services)))
                    if n not in {s.name for s in upserts}]
        delta = node_pb2.NodeStateDelta(from_version=v, version=v + 1, upserts=upserts, removals=removals)
        if step % 10 == 5:  # a failed write: nothing changes
            before = (_fields(a._programmed.copy()), _fields(a.catalog.current().programmed.copy()), content(w))
            w.n = 1
            with pytest.raises(OSError):
                a.apply_delta(delta)
            assert (_fields(a._programmed), _fields(a.catalog.current().programmed), content(w)) == before
            assert a.applied_version == v
            w.n = 0
        a.apply_delta(delta)
        v += 1
        for n in removals:
            del services[n]
        services.update((s.name, s) for s in upserts)
        back = w.read_programmed()  # the maps hold no service names
        assert {k: replace(fe, service="") for k, fe in a._programmed.frontends.items()} == back.frontends
        assert (a._programmed.backends, a._programmed.by_frontend) == (back.backends, back.by_frontend)
        assert _fields(a.catalog.current().programmed)[:3] == _fields(a._programmed)[:3]
    fresh = Agent(MemoryMapWriter(), "n")
    fresh.apply(node_pb2.NodeState(version=v, services=services.values()))
    assert content(w) == content(fresh.writer)
    assert _fields(early) == held


def test_removed_backends_are_named_and_their_flows_targeted_as_before():
    """What a plan deletes is read from its own lists, not a walk over
    every op: the catalog names the last `remembered` removed backends (the
    highest ids, in order), and the terminations target a removed frontend
    whole and a backend removed from a frontend that stays by itself."""
    a = Agent(MemoryMapWriter(), "n")
    a.catalog.remembered = 5
    two = [svc("a", "127.0.4.1", [("10.3.0.1", 80), ("10.3.0.2", 80), ("10.3.0.3", 80)]),
           svc("b", "127.0.4.2", [("10.3.1.1", 80), ("10.3.1.2", 80), ("10.3.1.3", 80), ("10.3.1.4", 80)])]
    a.apply(node_pb2.NodeState(version=1, services=two))
    names = a.catalog.current().backend_names()
    assert len(names) == 7
    fe_a = next(fe.id for fe in a.catalog.current().frontends() if fe.service == "a")
    # b loses one backend (a delta), then a goes (a whole state).
    b_less = svc("b", "127.0.4.2", [("10.3.1.1", 80), ("10.3.1.2", 80), ("10.3.1.4", 80)])
    a.apply_delta(node_pb2.NodeStateDelta(from_version=1, version=2, upserts=[b_less]))
    dropped = next(k for k, n in names.items() if n.address == "10.3.1.3")
    assert list(a.catalog.removed()) == [dropped]
    job = a.terminations.jobs[-1]
    assert (job.service, job.trigger, [(t.frontend_id, t.backend_id) for t in job.targets]) == \
        ("b", "backend-removed", [dropped])
    a.apply(node_pb2.NodeState(version=3, services=[b_less]))
    gone_a = sorted((k for k, n in names.items() if n.service == "a"), key=lambda k: k[1])
    assert list(a.catalog.removed()) == [dropped, *gone_a]
    assert a.catalog.removed() == {k: names[k] for k in [dropped, *gone_a]}
    job = a.terminations.jobs[-1]
    assert (job.service, job.trigger, [(t.frontend_id, t.backend_id) for t in job.targets]) == \
        ("a", "service-removed", [(fe_a, 0)])
    a.apply(node_pb2.NodeState(version=4, services=[]))  # 3 more: the oldest go
    gone_b = sorted((k for k, n in names.items() if n.service == "b" and k != dropped), key=lambda k: k[1])
    assert list(a.catalog.removed()) == [*gone_a[1:], *gone_b]
