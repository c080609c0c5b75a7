"""Functional batch normalization for PyTorch tensors (``torch.nn.functional.batch_norm``'s signature).

CPU float32/float64 tensors run on normkit's fused Numba kernels through an
``autograd.Function`` with the closed-form backward; every other device and
dtype (CUDA, float16, bfloat16), and code being traced by ``torch.compile`` or
``torch.export``, runs the same mathematics in plain torch operations
(float16/bfloat16 with float32 statistics).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from ..running import commit_batch_stats, update_factor
from . import _torch_impl
from ._autograd import KernelBatchNorm, Stats

__all__ = ["batch_norm", "uses_kernels"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def uses_kernels(input: torch.Tensor, *params: Optional[torch.Tensor]) -> bool:
    """Whether this input (and these parameters) run on the Numba kernels."""
    return (
        input.device.type == "cpu"
        and input.dtype in _KERNEL_DTYPES
        and all(p is None or (p.device.type == "cpu" and p.dtype == input.dtype) for p in params)
        and not _tracing()
    )


def check_input(
    layer: str,
    input: torch.Tensor,
    num_features: int,
    batch_stats: bool,
    *params: tuple,
) -> None:
    """Validate once at the boundary: floating dtype, channel count (dim 1), parameter shapes,
    matching dtypes for float32/float64, and more than one value per channel when training.
    ``params`` are ``(name, tensor-or-None)`` pairs."""
    _checks.check_floating(layer, str(input.dtype), input.is_floating_point())
    if input.dim() < 2:
        raise ValueError(f"{layer} expected an input of shape (N, C, ...), got {input.dim()}D input of shape {tuple(input.shape)}")
    _checks.check_channels(layer, input.shape, 1, num_features)
    for name, p in params:
        if p is None:
            continue
        _checks.check_param_shape(layer, name, tuple(p.shape), (num_features,))
        if input.dtype in _KERNEL_DTYPES and p.dtype != input.dtype and name in ("weight", "bias"):
            raise TypeError(
                f"{layer} expected {name} of the input's dtype {input.dtype}, got {p.dtype}; "
                f"cast the module (e.g. module.to({input.dtype})) or the input"
            )
    if batch_stats:
        _checks.check_training_batch(layer, input.shape, 1)


def batch_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
    nonfinite: str = "propagate",
    layer: str = "batch_norm",
) -> torch.Tensor:
    """Batch normalization over dim 1 of ``input`` ``(N, C, *)``.

    Training (``training=True``, or no running statistics): per channel the
    batch mean ``mu`` and biased variance ``s2`` over ``N`` and the spatial dims;
    ``y = weight * (x - mu) / sqrt(s2 + eps) + bias``; if running statistics are
    given they are updated in place, ``running = (1 - f) * running + f * batch``
    with the unbiased batch variance, ``f = momentum`` (weight of the new batch)
    or, for ``momentum=None``, ``1 / num_batches_tracked`` (cumulative average).
    ``num_batches_tracked``, if given, is incremented when the update happens.
    Inference: the running statistics replace the batch's.

    ``nonfinite`` chooses what a batch with NaN/Inf does to the running
    statistics: ``"propagate"`` (PyTorch's behaviour), ``"skip"`` (warn, no
    update, no count) or ``"raise"``. Validation happens before anything is
    touched: after an error the buffers are as they were.

    Shapes: ``input`` ``(N, C)``, ``(N, C, L)``, ``(N, C, H, W)`` or
    ``(N, C, D, H, W)``, contiguous or channels-last (kept in the output);
    every vector ``(C,)``.
    """
    batch_stats = training or running_mean is None or running_var is None
    # If the given vectors agree on a length, that is the channel count they were
    # built for and the input is checked against it; if they disagree among
    # themselves, the input's channel count decides which one is wrong.
    shapes = {tuple(p.shape) for p in (weight, bias, running_mean, running_var) if p is not None}
    if len(shapes) == 1 and len(next(iter(shapes))) == 1:
        C = next(iter(shapes))[0]
    else:
        C = input.shape[1] if input.dim() >= 2 else -1
    check_input(
        layer, input, C, batch_stats,
        ("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var),
    )
    _checks.check_nonfinite_policy(layer, nonfinite)
    update = training and running_mean is not None and running_var is not None
    count = None
    if update and (momentum is None):
        if num_batches_tracked is None:
            raise ValueError(f"{layer} with momentum=None (cumulative average) needs num_batches_tracked")
        count = int(num_batches_tracked) + 1
    n = _checks.reduced_count(input.shape, 1)

    if n == 0:  # as torch: an empty output that keeps the autograd graph, buffers untouched
        y = input.clone()
        if weight is not None:
            y = y * weight[0]
        if bias is not None:
            y = y + bias[0]
        if update and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return y

    if uses_kernels(input, weight, bias):
        stats = Stats()
        y = KernelBatchNorm.apply(input, weight, bias, running_mean, running_var, batch_stats, eps, stats)
        mean, var = stats.mean, stats.var
        targets = (running_mean.numpy(), running_var.numpy()) if update and running_mean.device.type == "cpu" else None
    else:
        if batch_stats:
            mean, var = _torch_impl.batch_stats(input)
        else:
            mean, var = running_mean, running_var
        y = _torch_impl.normalize(input, mean, var, weight, bias, eps)
        mean, var = mean.detach(), var.detach()
        targets = None
    if update:
        factor = update_factor(momentum, count if count is not None else 1)
        with torch.no_grad():
            rm, rv = targets if targets is not None else (running_mean, running_var)
            if targets is None:
                mean, var = mean.to(running_mean.dtype), var.to(running_var.dtype)
            if commit_batch_stats(layer, nonfinite, mean, var, n, rm, rv, factor) and num_batches_tracked is not None:
                num_batches_tracked.add_(1)
    return y
