"""Plans are make-before-break, minimal, and keep ids stable."""
import pytest

from socklb.dataplane.desired import frontend_targets
from socklb.dataplane.plan import (DeleteBackend, DeleteMaster, DeleteSlot, Programmed, PutBackend,
                                   PutMaster, PutSlot, make_plan)
from socklb.dataplane.statefile import parse_state


def targets(backends: str, extra: str = ""):
    return frontend_targets(parse_state(f"""
services:
  - name: web
    frontends: [{{address: 127.96.0.10, port: 80}}]
    backends: [{backends}]
{extra}"""))


def apply(prog, t):
    plan = make_plan(prog, t)
    return plan, plan.result


def check_order(plan, before: Programmed):
    """Replay the ops on a model of the maps: no slot may name a missing
    backend and no master may count a missing slot, at any step."""
    backends = set(before.backends)
    slots = {(k, i + 1): b for k, fe in before.frontends.items() for i, b in enumerate(fe.slots)}
    masters = {k: len(fe.slots) for k, fe in before.frontends.items()}
    for op in plan.ops:
        match op:
            case PutBackend(b): backends.add(b.id)
            case PutSlot(k, s, b): slots[(k, s)] = b
            case PutMaster(fe): masters[fe.key] = len(fe.slots)
            case DeleteSlot(k, s): slots.pop((k, s))
            case DeleteMaster(k): masters.pop(k)
            case DeleteBackend(i): backends.discard(i)
        for k, n in masters.items():
            for s in range(1, n + 1):
                assert (k, s) in slots, f"master {k} counts missing slot {s} after {op}"
                assert slots[(k, s)] in backends, f"slot {s} names a missing backend after {op}"


def test_first_apply_writes_backends_then_slots_then_master():
    t = targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.3, port: 1}")
    plan, prog = apply(Programmed(), t)
    kinds = [type(o).__name__ for o in plan.ops]
    assert kinds == ["PutBackend", "PutBackend", "PutSlot", "PutSlot", "PutMaster"]
    check_order(plan, Programmed())


def test_reapplying_the_same_state_writes_nothing():
    t = targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.3, port: 1}")
    _, prog = apply(Programmed(), t)
    plan, prog2 = apply(prog, t)
    assert plan.ops == []
    assert prog2.frontends == prog.frontends and prog2.backends == prog.backends


def test_removing_a_backend_keeps_the_others_ids_and_breaks_last():
    t1 = targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.3, port: 1}, {address: 127.0.0.4, port: 1}")
    _, p1 = apply(Programmed(), t1)
    t2 = targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.4, port: 1}")
    plan, p2 = apply(p1, t2)
    ids1 = {b.addr: b.id for b in p1.backends.values()}
    ids2 = {b.addr: b.id for b in p2.backends.values()}
    assert all(ids2[a] == ids1[a] for a in ids2)
    assert plan.count(DeleteBackend) == 1 and isinstance(plan.ops[-1], DeleteBackend)
    check_order(plan, p1)


def test_draining_rewrites_state_and_table():
    t1 = targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.3, port: 1}")
    _, p1 = apply(Programmed(), t1)
    t2 = targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.3, port: 1, state: BACKEND_STATE_DRAINING}")
    plan, p2 = apply(p1, t2)
    assert plan.count(PutBackend) == 1 and plan.count(DeleteBackend) == 0
    (fe,) = p2.frontends.values()
    drained = next(b.id for b in p2.backends.values() if b.addr.endswith(bytes([127, 0, 0, 3])))
    assert drained not in fe.slots
    check_order(plan, p1)


def test_removed_frontend_goes_master_first_and_ids_are_not_reused():
    t1 = targets("{address: 127.0.0.2, port: 1}", extra="""  - name: other
    frontends: [{address: 127.96.0.11, port: 80}]
    backends: [{address: 127.0.0.9, port: 1}]""")
    _, p1 = apply(Programmed(), t1)
    t2 = targets("{address: 127.0.0.2, port: 1}")
    plan, p2 = apply(p1, t2)
    dm = next(i for i, o in enumerate(plan.ops) if isinstance(o, DeleteMaster))
    ds = [i for i, o in enumerate(plan.ops) if isinstance(o, DeleteSlot)]
    assert ds and min(ds) > dm
    check_order(plan, p1)
    # A new frontend gets a fresh id, never the removed one's.
    t3 = targets("{address: 127.0.0.2, port: 1}", extra="""  - name: third
    frontends: [{address: 127.96.0.12, port: 80}]
    backends: [{address: 127.0.0.9, port: 1}]""")
    _, p3 = apply(p2, t3)
    used = {fe.id for fe in p1.frontends.values()}
    new = {fe.id for fe in p3.frontends.values()} - {fe.id for fe in p2.frontends.values()}
    assert new and not (new & used)


def test_growing_and_shrinking_tables_stay_consistent():
    prog = Programmed()
    for n in (1, 5, 2, 7, 0, 3):
        t = targets(", ".join(f"{{address: 127.0.1.{i + 1}, port: 1}}" for i in range(n)))
        plan, new = apply(prog, t)
        check_order(plan, prog)
        (fe,) = new.frontends.values()
        assert len(fe.slots) == n
        prog = new


def test_partial_plans_equal_full_plans():
    """A plan limited to the changed frontends writes the same ops and ends
    in the same state as a full plan."""
    many = "\n".join(f"""  - name: s{i}
    frontends: [{{address: 127.96.1.{i}, port: 80}}]
    backends: [{{address: 127.0.2.{i}, port: 1}}, {{address: 127.0.3.{i}, port: 1}}]""" for i in range(1, 30))
    t1 = targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.3, port: 1}", extra=many)
    _, p1 = apply(Programmed(), t1)
    t2 = dict(targets("{address: 127.0.0.2, port: 1}, {address: 127.0.0.4, port: 1}", extra=many))
    gone = next(k for k, v in t2.items() if v.service == "s7")
    del t2[gone]
    web = next(k for k, v in t2.items() if v.service == "web")
    full = make_plan(p1, t2)
    part = make_plan(p1, {web: t2[web]}, only={web, gone})
    assert part.ops == full.ops
    assert part.result.frontends == full.result.frontends and part.result.backends == full.result.backends
    assert part.result.by_frontend == full.result.by_frontend
    assert (part.result.next_frontend_id, part.result.next_backend_id) == \
        (full.result.next_frontend_id, full.result.next_backend_id)
    check_order(part, p1)


def test_plan_pauses_the_collector_and_restores_it():
    import gc

    from socklb.dataplane.plan import collector_paused

    seen = []
    with collector_paused():
        seen.append(gc.isenabled())
    assert seen == [False] and gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
    with pytest.raises(RuntimeError):
        with collector_paused():
            raise RuntimeError("plan failed")
    assert gc.isenabled()
