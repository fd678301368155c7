"""Selection tables: which backend each slot of a frontend's table points to.

The datapath picks a slot and follows it to a backend:

- ``SELECTION_RANDOM``: ``slot = random % len(table)``; the table holds each
  backend in proportion to its weight (:func:`weighted_slots`).
- ``SELECTION_MAGLEV``: ``slot = hash(client netns cookie, frontend id) %
  len(table)``; the table is a Maglev lookup table (:func:`maglev_table`), so a
  client keeps its backend while the backend set changes around it.

Everything here is pure and deterministic across processes and machines (no
``hash()``, no dict/set iteration order, integer arithmetic only): every node
must compute the same table from the same inputs. Tables hold indices into the
caller's ``weights``/``keys``; backends with weight 0 get no slot.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import operator
from collections.abc import Sequence
from fractions import Fraction
from math import gcd

__all__ = [
    "MAGLEV_SIZES",
    "MAX_SLOTS_RANDOM",
    "MAX_TABLE",
    "SELECTION_MAGLEV",
    "SELECTION_RANDOM",
    "build_table",
    "maglev_size",
    "maglev_table",
    "random_table",
    "weighted_slots",
]

# Equal to socklb.v1.types_pb2.SELECTION_RANDOM / SELECTION_MAGLEV (0, the
# proto default, means RANDOM). Kept as literals so this module has no
# dependency on generated code.
SELECTION_RANDOM = 1
SELECTION_MAGLEV = 2

# Maglev table sizes: primes near powers of two. The table must be prime so
# that every skip in 1..M-1 makes a backend's preference list a permutation of
# all M slots.
#
# Trade-off: with M slots and N backends, a backend's share deviates from its
# weight share by at most about N/M relatively (plus one or two entries), and
# removing a backend disturbs fewer of the survivors' entries as M/N grows; the
# paper sizes M >> N (100x gives ~1%). The cost grows with M too: one map entry
# per slot per frontend in the datapath, O(M log M) work to populate, and M
# entries to push to every node on a change. Past 16381 (N > 163) we stop
# growing the table and accept a coarser balance (still within N/M).
# A change of size (the backend count crossing a step) rebuilds the table from
# scratch, so almost every slot moves; callers that want Maglev's stability
# through such changes must keep the size (e.g. only grow it).
MAGLEV_SIZES: tuple[int, ...] = (251, 509, 1021, 2039, 4093, 8191, 16381)
_MAGLEV_OVERPROVISION = 100

# Upper bound for weighted_slots' max_slots (its default is RANDOM_SLOTS).
MAX_SLOTS_RANDOM = MAGLEV_SIZES[-1]
RANDOM_SLOTS = 1024

# The largest table any function here returns (size the datapath for this).
MAX_TABLE = max(MAGLEV_SIZES[-1], MAX_SLOTS_RANDOM)

# Domain separation for the Maglev permutation hash; part of the wire
# contract: changing it reshuffles every Maglev table in the cluster.
_MAGLEV_PERSON = b"socklb-maglev-v1"


def weighted_slots(weights: Sequence[int], max_slots: int = RANDOM_SLOTS) -> list[int]:
    """Slots for weighted random selection: indices into ``weights``.

    Backend ``i`` appears in proportion to ``weights[i]``: the weights are
    divided by their gcd (equal weights give one slot each); if the sum still
    exceeds ``max_slots``, ``max_slots`` is apportioned by largest remainder,
    with at least one slot for every backend of weight > 0. Weight-0 backends
    get no slot; no positive weight gives ``[]``.

    The order is interleaved, not grouped: every prefix of the table holds each
    backend ``floor`` or ``ceil`` of its proportional share.
    """
    ws = _check_weights(weights)
    max_slots = _as_int(max_slots, "max_slots")
    if not 1 <= max_slots <= MAX_SLOTS_RANDOM:
        raise ValueError(f"max_slots must be in 1..{MAX_SLOTS_RANDOM}, got {max_slots}")
    active = [i for i, w in enumerate(ws) if w > 0]
    if not active:
        return []
    if len(active) > max_slots:
        raise ValueError(
            f"{len(active)} backends with weight > 0 do not fit in max_slots={max_slots}"
        )
    counts = _reduce([ws[i] for i in active])
    if sum(counts) > max_slots:
        counts = _reduce(_apportion(counts, max_slots))
    return [active[k] for k in _interleave(counts)]


def maglev_table(keys: Sequence[str], weights: Sequence[int], size: int) -> list[int]:
    """The Maglev lookup table (Eisenbud et al., NSDI 2016) of prime ``size``.

    ``keys`` are stable backend identities (e.g. ``"10.0.0.1:80"``); entry
    ``s`` is the index (into ``keys``) of the backend owning slot ``s``.
    Weighted population as in Envoy/Katran: in each round a backend of weight
    ``w`` takes ``w / max(weights)`` turns on average, so entries are
    proportional to weight. Weight-0 backends get no entry (nor may a backend
    whose weight share is below about ``1/size``); no positive weight gives
    ``[]``.

    Each backend's preference list is ``(offset + j * skip) % size`` with
    ``d = blake2b(key.encode(), digest_size=16, person=b"socklb-maglev-v1")``,
    ``offset = int(d[:8], big) % size`` and ``skip = int(d[8:], big) % (size -
    1) + 1``. Turns within a round go in sorted key order, so the table (as
    keys) does not depend on the order of the input.
    """
    ws = _check_weights(weights)
    _check_keys(keys, len(ws))
    size = _as_int(size, "size")
    active = [i for i, w in enumerate(ws) if w > 0]
    if not _is_prime(size):
        raise ValueError(f"maglev size must be prime, got {size}")
    if size > MAX_TABLE:
        raise ValueError(f"maglev size {size} exceeds MAX_TABLE={MAX_TABLE}")
    if size < len(active):
        raise ValueError(
            f"maglev size {size} is smaller than the {len(active)} backends with weight > 0"
        )
    if not active:
        return []

    # Population order is by key, not input position: turn ties inside a round
    # go to the earlier backend, and this keeps that choice input-order-free.
    active.sort(key=lambda i: keys[i])
    top = max(ws[i] for i in active)
    offset, skip = _maglev_permutations([keys[i] for i in active], size)
    pos = list(offset)

    # Turn k (1-based) of a backend of weight w falls in round ceil(k*top/w):
    # the heavy backends turn every round, a backend of weight top/3 every
    # third round. A heap of (round, rank, k) replays the rounds without
    # visiting backends that skip them.
    heap = [(-(-top // ws[i]), r, 1) for r, i in enumerate(active)]
    heapq.heapify(heap)
    table = [-1] * size
    for _ in range(size):
        _, r, k = heapq.heappop(heap)
        p, step = pos[r], skip[r]
        while table[p] >= 0:
            p += step
            if p >= size:
                p -= size
        table[p] = active[r]
        p += step
        pos[r] = p - size if p >= size else p
        heapq.heappush(heap, (-(-(k + 1) * top // ws[active[r]]), r, k + 1))
    return table


def maglev_size(n_backends: int) -> int:
    """Maglev table size for ``n_backends``: the smallest prime of
    :data:`MAGLEV_SIZES` that is >= 100 * n_backends, capped at the largest.
    (See the trade-off at :data:`MAGLEV_SIZES`.)"""
    n = _as_int(n_backends, "n_backends")
    if n < 0:
        raise ValueError(f"n_backends must be >= 0, got {n}")
    for m in MAGLEV_SIZES:
        if m >= _MAGLEV_OVERPROVISION * n:
            return m
    return MAGLEV_SIZES[-1]


def build_table(selection: int, keys: Sequence[str], weights: Sequence[int],
                table_size: int | None = None) -> list[int]:
    """The selection table of a frontend: indices into ``keys``/``weights``.

    ``selection`` is a ``socklb.v1.Selection`` value: 0 or 1 (RANDOM) gives
    :func:`weighted_slots`, 2 (MAGLEV) gives :func:`maglev_table` of
    ``table_size`` slots, or sized by :func:`maglev_size` over the backends
    with weight > 0 when ``table_size`` is None. A fixed size is what keeps
    Maglev's promise across backend changes: crossing a size step reshuffles
    every slot.
    """
    ws = _check_weights(weights)
    _check_keys(keys, len(ws))
    sel = _as_int(selection, "selection")
    if sel in (0, SELECTION_RANDOM):
        return list(random_table(tuple(ws)))
    if sel == SELECTION_MAGLEV:
        active = sum(1 for w in ws if w > 0)
        if active > MAX_TABLE:
            raise ValueError(f"{active} backends exceed the largest maglev table ({MAX_TABLE})")
        return maglev_table(keys, ws, table_size if table_size is not None else maglev_size(active))
    raise ValueError(f"unknown selection {selection!r} (expected 0, 1 RANDOM or 2 MAGLEV)")


@functools.lru_cache(maxsize=1024)
def random_table(weights: tuple[int, ...]) -> tuple[int, ...]:
    """build_table's RANDOM table: a function of the weights alone (the keys
    play no part), so cached by them: a node's frontends share a few weight
    patterns (most: n equal weights), and a full state has 10k+ frontends.
    1024 slots as a rule; more only when more backends are active, each
    keeps at least one slot."""
    ws = _check_weights(weights)
    active = sum(1 for w in ws if w > 0)
    if active > MAX_SLOTS_RANDOM:
        raise ValueError(f"{active} backends exceed the largest random table ({MAX_SLOTS_RANDOM})")
    return tuple(weighted_slots(ws, max(RANDOM_SLOTS, active)))


# ---------------------------------------------------------------- helpers


def _as_int(value: object, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_weights(weights: Sequence[int]) -> list[int]:
    ws = [_as_int(w, f"weights[{i}]") for i, w in enumerate(weights)]
    for i, w in enumerate(ws):
        if w < 0:
            raise ValueError(f"weights[{i}] must be >= 0, got {w}")
    return ws


def _check_keys(keys: Sequence[str], n_weights: int) -> None:
    if isinstance(keys, str):
        raise ValueError("keys must be a sequence of strings, not a string")
    if len(keys) != n_weights:
        raise ValueError(f"keys and weights differ in length ({len(keys)} != {n_weights})")
    seen: dict[str, int] = {}
    for i, k in enumerate(keys):
        if not isinstance(k, str) or not k:
            raise ValueError(f"keys[{i}] must be a non-empty string, got {k!r}")
        if k in seen:
            raise ValueError(f"duplicate key {k!r} at keys[{seen[k]}] and keys[{i}]")
        seen[k] = i


def _reduce(counts: list[int]) -> list[int]:
    g = 0
    for c in counts:
        g = gcd(g, c)
    return [c // g for c in counts]


def _apportion(weights: list[int], seats: int) -> list[int]:
    """Largest-remainder (Hamilton) apportionment of ``seats`` with a floor of
    one seat each. Assumes ``len(weights) <= seats`` and all weights > 0."""
    seats_of = [0] * len(weights)
    rest = list(range(len(weights)))
    free = seats
    # Backends whose quota is below one seat get exactly one; that shrinks the
    # seats left for the rest, which can push more below one: repeat.
    while True:
        total = sum(weights[i] for i in rest)
        small = [i for i in rest if weights[i] * free < total]
        if not small:
            break
        for i in small:
            seats_of[i] = 1
        free -= len(small)
        rest = [i for i in rest if seats_of[i] == 0]
    total = sum(weights[i] for i in rest)
    for i in rest:
        seats_of[i] = weights[i] * free // total
    left = free - sum(seats_of[i] for i in rest)
    by_remainder = sorted(rest, key=lambda i: (-(weights[i] * free % total), i))
    for i in by_remainder[:left]:
        seats_of[i] += 1
    return seats_of


def _interleave(counts: list[int]) -> list[int]:
    """Order ``sum(counts)`` slots so that every prefix of length L holds
    backend i floor or ceil of ``L * counts[i] / total`` times.

    This is a Pfair schedule (Baruah et al., 1996): the j-th copy of backend i
    must land in slots [floor((j-1)T/c), ceil(jT/c)); earliest-deadline-first
    over released copies meets every window on one "processor". Ties go to the
    copy whose ideal centre ((j-1/2)T/c) is earliest, then to the lower index,
    which spreads copies more evenly than plain index order. Unlike nginx's
    smooth round-robin this is O(T log T) and has the prefix bound above.
    """
    if all(c == 1 for c in counts):
        # Equal weights (the common case): every copy is released at 0 with
        # the same deadline and centre, so the schedule is the index order.
        return list(range(len(counts)))
    total = sum(counts)
    releases: list[tuple[int, int, int]] = []
    for i, c in enumerate(counts):
        for j in range(1, c + 1):
            releases.append(((j - 1) * total // c, i, j))
    releases.sort()
    heap: list[tuple[int, Fraction, int, int]] = []
    order: list[int] = []
    nxt = 0
    for t in range(total):
        while nxt < len(releases) and releases[nxt][0] <= t:
            _, i, j = releases[nxt]
            c = counts[i]
            heapq.heappush(heap, (-(-j * total // c), Fraction(2 * j - 1, 2 * c), i, j))
            nxt += 1
        deadline, _, i, _ = heapq.heappop(heap)
        assert deadline > t, "pfair window missed"  # EDF is optimal here
        order.append(i)
    return order


def _maglev_permutations(keys: list[str], size: int) -> tuple[list[int], list[int]]:
    """(offset, skip) of each key's preference list ``(offset + j*skip) % size``.

    Two keys with the same skip walk the same cycle in lockstep, and changes
    elsewhere then move many of their entries (the tail of Maglev's
    disruption). Re-hashing duplicates was tried and made things worse: when
    the first holder of a skip leaves, the re-hashed key's whole permutation
    changes. So this is the paper's scheme, unchanged.
    """
    offsets: list[int] = []
    skips: list[int] = []
    for key in keys:
        digest = hashlib.blake2b(
            key.encode("utf-8"), digest_size=16, person=_MAGLEV_PERSON
        ).digest()
        offsets.append(int.from_bytes(digest[:8], "big") % size)
        skips.append(int.from_bytes(digest[8:], "big") % (size - 1) + 1)
    return offsets, skips


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    f = 3
    while f * f <= n:
        if n % f == 0:
            return False
        f += 2
    return True
