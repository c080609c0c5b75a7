"""How an array with a channel axis is seen by the kernels as ``(P, C, L)``.

Two memory layouts are read in place, without a copy:

* **contiguous** (row-major, NCHW): ``P`` = product of the sizes before the
  channel axis, ``L`` = product of the sizes after it;
* **channels-last** (the channel axis is the fastest-varying one, e.g. NHWC or
  PyTorch's ``channels_last``): ``P`` = product of every other size, ``L = 1``,
  after moving the channel axis last.

Anything else (sliced, broadcast, otherwise permuted) is copied to contiguous
by the caller. The functions take shapes and strides *in elements*, so NumPy
and PyTorch front ends share them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

__all__ = ["ChannelView", "channel_view", "is_contiguous"]


@dataclass(frozen=True)
class ChannelView:
    """``perm`` reorders the array's axes (``None``: keep), then it reshapes to ``(P, C, L)``."""

    P: int
    C: int
    L: int
    perm: Optional[Tuple[int, ...]]

    @property
    def shape(self) -> Tuple[int, int, int]:
        return (self.P, self.C, self.L)

    @property
    def channels_last(self) -> bool:
        return self.perm is not None


def is_contiguous(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Row-major contiguity in elements; size-1 axes may have any stride, empty arrays any."""
    if 0 in shape:
        return True
    expected = 1
    for size, stride in zip(reversed(shape), reversed(strides)):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def channel_view(shape: Sequence[int], strides: Sequence[int], axis: int) -> Optional[ChannelView]:
    """The copy-free ``(P, C, L)`` view of an array, or ``None`` if it needs a copy.

    ``axis`` is non-negative. Row-major wins when both layouts apply (e.g. ``H = W = 1``).
    """
    shape = tuple(shape)
    C = shape[axis]
    if is_contiguous(shape, strides):
        return ChannelView(math.prod(shape[:axis]), C, math.prod(shape[axis + 1:]), None)
    perm = tuple(a for a in range(len(shape)) if a != axis) + (axis,)
    if is_contiguous([shape[a] for a in perm], [strides[a] for a in perm]):
        return ChannelView(math.prod(shape) // C if C else 0, C, 1, perm)
    return None
