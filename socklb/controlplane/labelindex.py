"""Who matches whom by labels, without trying every pair. Pure data
structures, no I/O.

A selector (a label map) matches a labeled object when the object's labels
include every (key, value) of the selector; the empty selector matches every
object. Policy compute asks it both ways: which workloads a policy's (or a
local redirect's) selector matches (`LabelIndex.having`), and which selectors
match one workload (`SelectorIndex.matching`). Both answer from an inverted
index on (key, value) pairs, so that a change costs in proportion to what
matches it, not to the number of workloads times the number of policies.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

Item = tuple[str, str]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether `selector` matches an object labeled `labels`."""
    return all(k in labels and labels[k] == v for k, v in selector.items())


class LabelIndex:
    """Labeled objects by name: the names whose labels include a selector."""

    def __init__(self) -> None:
        self._labels: dict[str, dict[str, str]] = {}
        self._by_item: dict[Item, set[str]] = {}

    def put(self, name: str, labels: Mapping[str, str]) -> None:
        self.remove(name)
        self._labels[name] = dict(labels)
        for item in labels.items():
            self._by_item.setdefault(item, set()).add(name)

    def remove(self, name: str) -> None:
        for item in self._labels.pop(name, {}).items():
            names = self._by_item[item]
            names.discard(name)
            if not names:
                del self._by_item[item]

    def having(self, selector: Mapping[str, str]) -> set[str]:
        """The names whose labels include every item of `selector`."""
        if not selector:
            return set(self._labels)
        postings = sorted((self._by_item.get(item, set()) for item in selector.items()), key=len)
        return set(postings[0]).intersection(*postings[1:])


class SelectorIndex:
    """Selectors by owner name: the owners whose selector matches a label map."""

    def __init__(self) -> None:
        self._selectors: dict[str, dict[str, str]] = {}
        self._match_all: set[str] = set()
        # Each selector is filed under one of its items: any object it matches
        # carries that item, so looking up an object's items finds it.
        self._by_item: dict[Item, set[str]] = {}

    def put(self, owner: str, selector: Mapping[str, str]) -> None:
        self.remove(owner)
        self._selectors[owner] = dict(selector)
        if not selector:
            self._match_all.add(owner)
        else:
            self._by_item.setdefault(min(selector.items()), set()).add(owner)

    def remove(self, owner: str) -> None:
        selector = self._selectors.pop(owner, None)
        if selector is None:
            return
        if not selector:
            self._match_all.discard(owner)
            return
        item = min(selector.items())
        owners = self._by_item[item]
        owners.discard(owner)
        if not owners:
            del self._by_item[item]

    def matching(self, labels: Mapping[str, str]) -> set[str]:
        """The owners whose selector matches an object labeled `labels`."""
        out = set(self._match_all)
        for item in labels.items():
            for owner in self._by_item.get(item, ()):
                if selects(self._selectors[owner], labels):
                    out.add(owner)
        return out

    def owners(self) -> Iterable[str]:
        return self._selectors.keys()
