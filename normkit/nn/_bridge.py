"""Zero-copy passage between CPU torch tensors and the kernels' ``(P, C, L)`` NumPy views."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np
import torch

from ..allocator import NUMPY_DTYPES
from ..allocator import new_output as new_empty  # the output pool, huge pages for large fresh blocks
from ..kernels.layout import ChannelView, channel_view

__all__ = ["as_view", "new_empty", "new_like_view", "numpy_view", "param_grad"]


def numpy_view(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    """The NumPy array sharing a CPU tensor's memory (None stays None); no detach for
    buffers, which do not require grad (it costs a call per tensor on the hot path)."""
    if t is None:
        return None
    return t.detach().numpy() if t.requires_grad else t.numpy()


def param_grad(values: np.ndarray, dtype: torch.dtype, shape: Optional[Tuple[int, ...]] = None) -> torch.Tensor:
    """A parameter's gradient from the kernels' float64 ``values``, as a tensor of the
    parameter's ``dtype`` (and ``shape``, if given). The cast is NumPy's: a few
    microseconds, where ``Tensor.to`` costs several times that on the hot path."""
    if shape is not None:
        values = values.reshape(shape)
    np_dtype = NUMPY_DTYPES.get(dtype)
    if np_dtype is None:
        return torch.from_numpy(values).to(dtype)
    return torch.from_numpy(np.asarray(values, dtype=np_dtype))


def as_view(t: torch.Tensor, axis: int, like: Optional[ChannelView] = None) -> Tuple[np.ndarray, ChannelView]:
    """A C-contiguous ``(P, C, L)`` NumPy view sharing ``t``'s memory (a copy only if ``t``
    is in neither layout, or, with ``like``, not in that view's layout)."""
    t = t.detach()
    if like is None and t.is_contiguous():  # the common case, without the general planning
        shape = t.shape
        P = shape[0] if axis == 1 else math.prod(shape[:axis])
        C = shape[axis]
        L = t.numel() // (P * C) if P * C else 0
        view = ChannelView(P, C, L, None)
        return t.numpy().reshape(P, C, L), view
    view = like if like is not None else channel_view(t.shape, t.stride(), axis)
    if view is None:
        t = t.contiguous()
        view = channel_view(t.shape, t.stride(), axis)
    moved = t if view.perm is None else t.permute(view.perm)
    return moved.contiguous().numpy().reshape(view.shape), view


def new_like_view(shape: torch.Size, view: ChannelView, dtype: torch.dtype) -> Tuple[torch.Tensor, np.ndarray]:
    """A new tensor of ``shape`` in ``view``'s memory layout, and its ``(P, C, L)`` view."""
    if view.perm is None:
        out = new_empty(shape, dtype)
        return out, out.numpy().reshape(view.P, view.C, view.L)
    moved = new_empty([shape[a] for a in view.perm], dtype)
    inverse = [0] * len(view.perm)
    for i, a in enumerate(view.perm):
        inverse[a] = i
    return moved.permute(inverse), moved.numpy().reshape(view.shape)
