"""The CUDA graphs of one stage plan by key (`lc.models.region_graphs`): least recently used dropped
first, a key captured only at its `CAPTURE_AT_USE`-th use."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

__all__ = ["CAPTURE_AT_USE", "MAX_GRAPHS_PER_PLAN", "GraphCache"]

MAX_GRAPHS_PER_PLAN = 48
CAPTURE_AT_USE = 2  # a key is captured at its second use: a shape met once runs eagerly


class GraphCache:
    """A plan's graphs by key, least recently used dropped first, with the uses of keys not yet
    captured (a bounded count: evaluation meets thousands of shapes once)."""

    def __init__(self, limit: int = MAX_GRAPHS_PER_PLAN):
        self.limit = limit
        self._graphs: OrderedDict[tuple, object] = OrderedDict()
        self._uses: OrderedDict[tuple, int] = OrderedDict()
        self._failed: set[tuple] = set()  # keys whose capture raised

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key: tuple) -> bool:
        return key in self._graphs

    def clear(self) -> None:
        self._graphs.clear()
        self._uses.clear()
        self._failed.clear()

    def lookup(self, key: tuple, capture: Callable[[], object], now: bool = False):
        """The graph of `key` (a hit becomes the most recent), captured by `capture()` at the key's
        `CAPTURE_AT_USE`-th use (at once with `now`); None while the key should run eagerly, and for
        good once its capture raised (the error propagates that once)."""
        graph = self._graphs.get(key)
        if graph is not None:
            self._graphs.move_to_end(key)
            return graph
        uses = self._uses.pop(key, 0) + 1
        if uses < CAPTURE_AT_USE and not now:
            self._uses[key] = uses
            while len(self._uses) > 4 * self.limit:
                self._uses.popitem(last=False)
            return None
        if key in self._failed:
            return None
        while len(self._graphs) >= self.limit:
            self._graphs.popitem(last=False)
        try:
            graph = self._graphs[key] = capture()
        except Exception:
            self._failed.add(key)  # raised once; the key runs eagerly from then on
            raise
        return graph
