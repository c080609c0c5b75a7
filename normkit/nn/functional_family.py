"""Functional LayerNorm, RMSNorm, GroupNorm and InstanceNorm (``torch.nn.functional``'s signatures).

CPU float32/float64 tensors run on normkit's Numba kernels through an
``autograd.Function`` with the closed-form backward (double backward through
differentiable torch operations); every other device and dtype (CUDA,
float16, bfloat16 with float32 statistics), empty inputs, and code being
traced by ``torch.compile``/``torch.export``, run the same mathematics in plain
torch operations (:mod:`._torch_family`).

Each function validates once at the boundary (errors say what was expected and
what came) before anything is computed or updated; the extra keyword
``layer`` names the caller in those messages.
"""

from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import _checks
from ..running import update_running_stats
from . import _torch_family as T
from ._autograd_family import KernelGroupedNorm, KernelRowNorm, grouped_forward, rows_forward
from .functional import _KERNEL_DTYPES, uses_kernels

__all__ = ["group_norm", "instance_norm", "layer_norm", "rms_norm", "rms_eps"]

ShapeLike = Union[int, Sequence[int], torch.Size]


# --------------------------------------------------------------------------- shared validation


def _needs_grad(*tensors: Optional[torch.Tensor]) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _check_floating(layer: str, input: torch.Tensor) -> None:
    if not input.is_floating_point():
        _checks.check_floating(layer, str(input.dtype), False)


def _check_param_dtypes(layer: str, input: torch.Tensor, *named: Tuple[str, Optional[torch.Tensor]]) -> None:
    """float32/float64 inputs need affine parameters of their own dtype (float16/bfloat16
    inputs may also have float32 parameters, as torch's mixed-precision kernels allow)."""
    if input.dtype not in _KERNEL_DTYPES:
        return
    for name, p in named:
        if p is not None and p.dtype != input.dtype:
            raise TypeError(
                f"{layer} expected {name} of the input's dtype {input.dtype}, got {p.dtype}; "
                f"cast the module (e.g. module.to({input.dtype})) or the input"
            )


def _as_shape(normalized_shape: ShapeLike) -> Tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(s) for s in normalized_shape)


# --------------------------------------------------------------------------- rows


def _rows(
    layer: str, input: torch.Tensor, shape: Tuple[int, ...], weight, bias, eps: float, center: bool
) -> torch.Tensor:
    _check_floating(layer, input)
    _checks.check_normalized_shape(layer, tuple(input.shape), shape)
    _checks.check_param_shape(layer, "weight", None if weight is None else tuple(weight.shape), shape)
    _checks.check_param_shape(layer, "bias", None if bias is None else tuple(bias.shape), shape)
    _check_param_dtypes(layer, input, ("weight", weight), ("bias", bias))
    k = len(shape)
    if input.numel() == 0 or not uses_kernels(input, weight, bias):
        return T.normalize(input, T.row_mean(k), weight, bias, eps, center)[0]
    if _needs_grad(input, weight, bias):
        return KernelRowNorm.apply(input, weight, bias, k, eps, center)
    return rows_forward(input, weight, bias, k, eps, center)[0]


def layer_norm(
    input: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    layer: str = "layer_norm",
) -> torch.Tensor:
    """Layer normalization over the trailing dims ``normalized_shape`` (``D`` values per row).

    Per row: ``mu = mean(x)``, ``s2 = mean((x - mu)^2)`` (biased), and
    ``y = weight * (x - mu) / sqrt(s2 + eps) + bias`` with ``weight``/``bias`` of
    shape ``normalized_shape`` (or None), ``eps=1e-5``. Shape: input ``(*, *normalized_shape)``,
    output the same, contiguous. Statistics in float64 on the kernels.
    """
    return _rows(layer, input, _as_shape(normalized_shape), weight, bias, eps, True)


def rms_eps(dtype: torch.dtype) -> float:
    """The ``eps`` of ``rms_norm(..., eps=None)``: the machine epsilon of the dtype torch
    computes in -- ``finfo(float64).eps`` for float64, ``finfo(float32).eps`` for float32,
    float16 and bfloat16 (which are computed in float32)."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def rms_norm(
    input: torch.Tensor,
    normalized_shape: ShapeLike,
    weight: Optional[torch.Tensor] = None,
    eps: Optional[float] = None,
    *,
    layer: str = "rms_norm",
) -> torch.Tensor:
    """Root-mean-square normalization over the trailing dims ``normalized_shape``.

    Per row: ``ms = mean(x^2)`` and ``y = weight * x / sqrt(ms + eps)``;
    ``eps=None`` is :func:`rms_eps` of the input's dtype, as torch. Shape as
    :func:`layer_norm`; there is no bias.
    """
    return _rows(layer, input, _as_shape(normalized_shape), weight, None, rms_eps(input.dtype) if eps is None else eps,
                 False)


# --------------------------------------------------------------------------- groups


def _check_grouped(layer: str, input: torch.Tensor, vectors: Sequence[Tuple[str, Optional[torch.Tensor]]]) -> None:
    _check_floating(layer, input)
    _checks.check_min_ndim(layer, tuple(input.shape), 2, "(N, C, *)")
    C = input.shape[1]
    for name, p in vectors:
        if p is not None and tuple(p.shape) != (C,):
            shapes = {tuple(q.shape) for _, q in vectors if q is not None}
            if len(shapes) == 1 and len(next(iter(shapes))) == 1:  # the vectors agree: the input is the odd one out
                _checks.check_channels(layer, tuple(input.shape), 1, next(iter(shapes))[0])
            _checks.check_param_shape(layer, name, tuple(p.shape), (C,))


def group_norm(
    input: torch.Tensor,
    num_groups: int,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    layer: str = "group_norm",
) -> torch.Tensor:
    """Group normalization of ``input`` ``(N, C, *)`` in ``num_groups`` groups of ``C/G`` channels.

    Per sample and group: ``mu``, biased ``s2`` over the group's channels and all
    spatial positions; ``y = weight[c] * (x - mu) / sqrt(s2 + eps) + bias[c]``
    (``weight``/``bias`` ``(C,)`` or None, ``eps=1e-5``). Contiguous and
    channels-last inputs are read in place; the output keeps the layout.
    """
    _check_grouped(layer, input, (("weight", weight), ("bias", bias)))
    _checks.check_groups(layer, num_groups, input.shape[1])
    _check_param_dtypes(layer, input, ("weight", weight), ("bias", bias))
    G = int(num_groups)
    if input.numel() == 0 or not uses_kernels(input, weight, bias):
        n = input.dim()
        return T.normalize(input, T.group_mean(G), T.per_channel(weight, n), T.per_channel(bias, n), eps)[0]
    if _needs_grad(input, weight, bias):
        return KernelGroupedNorm.apply(input, weight, bias, G, eps, False, None, None, True, [])
    return grouped_forward(input, weight, bias, G, eps, False, None, None, True)[0]


def instance_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor] = None,
    running_var: Optional[torch.Tensor] = None,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    use_input_stats: bool = True,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    *,
    layer: str = "instance_norm",
) -> torch.Tensor:
    """Instance normalization of ``input`` ``(N, C, *)``: each (sample, channel) over its ``L`` spatial values.

    ``use_input_stats=True``: per instance ``mu``, biased ``s2``; ``y = weight[c] *
    (x - mu) / sqrt(s2 + eps) + bias[c]``, and if running statistics are given they
    are updated in place with the batch average of the instances' statistics::

        running_mean = (1 - momentum) * running_mean + momentum * mean_n(mu)
        running_var  = (1 - momentum) * running_var  + momentum * mean_n(s2 * L / (L - 1))

    (``momentum`` is the weight of the new batch; None means 0: no change, as
    torch's modules pass). ``use_input_stats=False``: the running statistics
    normalize every instance. Needs more than one spatial value per instance when
    using input statistics. Every vector is ``(C,)``; contiguous and channels-last
    inputs are read in place and the output keeps the layout.
    """
    vectors = (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var))
    _check_grouped(layer, input, vectors)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{layer} expected both running_mean and running_var, or neither; got only one")
    if not use_input_stats and running_mean is None:
        raise ValueError(
            f"{layer} expected running_mean and running_var when use_input_stats=False (inference with "
            f"running statistics), got None; pass them or use the instances' statistics"
        )
    if use_input_stats:
        _checks.check_spatial_size(layer, tuple(input.shape))
    _check_param_dtypes(layer, input, ("weight", weight), ("bias", bias))
    momentum = 0.0 if momentum is None else float(momentum)
    update = use_input_stats and running_mean is not None
    N, C = input.shape[:2]
    n = input.dim()

    if input.numel() == 0 or not uses_kernels(input, weight, bias):
        fixed = None if use_input_stats else (T.per_channel(running_mean, n), T.per_channel(running_var, n))
        y, mean, var = T.normalize(input, T.group_mean(C), T.per_channel(weight, n), T.per_channel(bias, n), eps,
                                   True, fixed)
        if update and input.numel() > 0:
            _update_running(running_mean, running_var, mean.detach().reshape(N, C), var.detach().reshape(N, C),
                            math.prod(input.shape[2:]), momentum)
        return y
    if _needs_grad(input, weight, bias):
        stats: List[np.ndarray] = []
        y = KernelGroupedNorm.apply(input, weight, bias, C, eps, True, running_mean, running_var, use_input_stats,
                                    stats)
        mean, var = stats
    else:
        y, mean, var, _, _ = grouped_forward(input, weight, bias, C, eps, True, running_mean, running_var,
                                             use_input_stats)
    if update:
        _update_running(running_mean, running_var, torch.from_numpy(mean), torch.from_numpy(var),
                        math.prod(input.shape[2:]), momentum)
    return y


def _update_running(running_mean: torch.Tensor, running_var: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                    L: int, momentum: float) -> None:
    """Fold the ``(N, C)`` instance statistics (biased variance over ``L`` values) into
    the ``(C,)`` running ones, in place: their batch average, variance made unbiased."""
    with torch.no_grad():
        batch_mean = mean.mean(dim=0).to(device=running_mean.device, dtype=running_mean.dtype)
        batch_var = var.mean(dim=0).to(device=running_var.device, dtype=running_var.dtype)
        update_running_stats(running_mean, running_var, batch_mean, batch_var, L, momentum)
