"""The key layout: the configuration range (keys.CONFIG_START..CONFIG_END),
read and watched whole by every replica, holds the configuration kinds and
nothing else."""
import pytest

from socklb.controlplane import keys
from socklb.controlplane.store.base import prefix_end

START, END = keys.CONFIG_START.encode(), keys.CONFIG_END.encode()


def _prefixes() -> dict[str, str]:
    """Every key prefix keys.py defines (its str constants under ROOT)."""
    return {name: value for name, value in vars(keys).items()
            if name.isupper() and isinstance(value, str) and value.startswith(keys.ROOT)
            and value != keys.ROOT and name not in ("CONFIG_START", "CONFIG_END")}


def _inside(prefix: str) -> bool:
    """Every key under prefix lies in the configuration range."""
    p = prefix.encode()
    return START <= p and prefix_end(p) <= END


def _outside(prefix: str) -> bool:
    """No key under prefix lies in the configuration range."""
    p = prefix.encode()
    return p >= END or prefix_end(p) <= START


def test_the_configuration_range_holds_the_configuration_kinds_and_nothing_else():
    prefixes = _prefixes()
    assert set(keys.CONFIG_KINDS) <= set(prefixes.values())
    for name, prefix in prefixes.items():
        if prefix in keys.CONFIG_KINDS:
            assert _inside(prefix), f"keys.{name} ({prefix!r}) is a configuration kind outside the range"
        elif not any(prefix.startswith(kind) or kind.startswith(prefix) for kind in keys.CONFIG_KINDS):
            # (POLICY_ROOT, the parent of three kinds, is the range's start)
            assert _outside(prefix), (f"keys.{name} ({prefix!r}) falls inside the configuration range: every "
                                      "replica's feed would carry it; give it a key outside "
                                      f"[{keys.CONFIG_START!r}, {keys.CONFIG_END!r})")


@pytest.mark.parametrize("key", [
    keys.service("a"), keys.service("\U0010ffff" * 3), keys.workload("ns/w"), keys.policy("p"),
    keys.redirect("r" * 300)])
def test_every_configuration_key_is_in_the_range(key):
    assert START <= key.encode() < END


@pytest.mark.parametrize("key", [
    keys.node("n1"), keys.node_versions("r1"), keys.stats("n1"), keys.leader("duties"), keys.termination_request("t"),
    keys.termination_report("t", "n1"), keys.workload_cgroup("n1", "kubepods/x"), keys.ROOT])
def test_no_other_key_is(key):
    assert not START <= key.encode() < END


def test_the_check_catches_a_new_top_level_key_that_sorts_into_the_range():
    assert not _outside(keys.ROOT + "quotas/") and not _outside(keys.ROOT + "scheduler/")
    assert not _outside(keys.POLICY_ROOT + "workload-cgroups/")  # an index under policy/ would be too
    assert _outside(keys.ROOT + "sessions/") and _outside(keys.ROOT + "policy-index/")
