"""Counting what a region stage dispatches: aten ops and registered-op calls (a launch budget proxy)."""

from __future__ import annotations

import collections

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SYNCING_OPS", "OpCounter"]

# ops that make the host wait for the device: a scalar read, or an output whose size depends on the data
SYNCING_OPS = frozenset({"aten._local_scalar_dense.default", "aten.nonzero.default",
                         "aten.is_nonzero.default", "aten.item.default", "aten.equal.default",
                         "aten.masked_select.default", "aten.bincount.default", "aten._unique2.default",
                         "aten.unique_consecutive.default", "aten.unique_dim.default"})


class OpCounter(TorchDispatchMode):
    """Every op dispatched under it (aten ops and torch.ops.lc.* calls), counted by name."""

    def __init__(self):
        super().__init__()
        self.ops: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    def syncing(self) -> set[str]:
        return SYNCING_OPS & set(self.ops)
