"""Functional batch normalization for PyTorch tensors (``torch.nn.functional.batch_norm``'s signature).

CPU float32/float64 tensors run on normkit's fused Numba kernels through an
``autograd.Function`` with the closed-form backward; every other device and
dtype (CUDA, float16, bfloat16), and code being traced by ``torch.compile`` or
``torch.export``, runs the same mathematics in plain torch operations
(float16/bfloat16 with float32 statistics).

Small inputs are the exception: at most :data:`SMALL_INPUT` elements, or
:data:`SMALL_ROWS_INPUT` where the channels are the innermost dimension
(``(N, C)`` and channels-last inputs). There the cost of a call is mostly its
overhead, not its memory traffic, and PyTorch's own CPU kernel, dispatched from
C++, beats any path that crosses Python and a JIT boundary (measured: 2x faster
per call on ``8x16x8x8``; on the channels-innermost layouts, where torch's
kernel is a good one, 1.2-2.4x faster up to 2**18 elements,
``docs/experiments/cross_layouts.py``). They go to
``torch.batch_norm`` -- the same conventions (momentum as the weight of the new
batch, unbiased ``running_var``, float64 accumulation of float32 statistics on
the CPU) -- after normkit's own validation, and ``num_batches_tracked`` is
counted here as on the kernel path; torch's kernel sums the parameter
gradients in float32, where the kernels sum in float64. A non-default
``nonfinite`` policy needs the batch statistics before the running ones are
touched, so it always takes the kernel path. Set ``SMALL_INPUT =
SMALL_ROWS_INPUT = 0`` to send every input to the kernels.
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from ..kernels.running import update_running_stats as fold_running_stats
from ..running import commit_batch_stats, update_factor
from . import _torch_impl
from ._autograd import KernelBatchNorm
from ._autograd import forward as kernel_forward

__all__ = ["SMALL_INPUT", "SMALL_ROWS_INPUT", "batch_norm", "small_input", "uses_kernels"]

_KERNEL_DTYPES = (torch.float32, torch.float64)
_VECTOR_NAMES = ("weight", "bias", "running_mean", "running_var")  # check_input's order

#: Inputs with at most this many elements run on PyTorch's own CPU kernel (see above).
SMALL_INPUT = 1 << 16
#: The same bound for inputs whose channels are their innermost dimension (``(N, C)``,
#: channels-last). Measured on an AMD EPYC (``docs/experiments/cross_layouts.py``), torch's
#: kernel behind normkit's checks against normkit's kernels, training forward and
#: forward+backward: 1.2-2.4x as fast from 2**16 to 2**18 elements (BatchNorm1d 256x256 to
#: 1024x256, 4096x64, 256x1024; channels-last 8x64x16x16); from 2**19 up (2048x256,
#: 8192x64, channels-last 32x64x16x16 and 8x64x32x32) anywhere from 0.8x to 1.7x.
SMALL_ROWS_INPUT = 1 << 18


def _tracing() -> bool:
    """Whether torch.compile, torch.export or TorchScript is tracing this call."""
    return torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None or torch.jit.is_scripting()


def uses_kernels(input: torch.Tensor, weight: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None) -> bool:
    """Whether this input (with these affine parameters) runs on the Numba kernels."""
    dtype = input.dtype
    return (
        input.is_cpu
        and dtype in _KERNEL_DTYPES
        and (weight is None or (weight.is_cpu and weight.dtype is dtype))
        and (bias is None or (bias.is_cpu and bias.dtype is dtype))
        and not _tracing()
    )


def small_input(input: torch.Tensor) -> bool:
    """Whether ``input`` is small enough for PyTorch's own kernel (:data:`SMALL_INPUT`,
    or :data:`SMALL_ROWS_INPUT` when its channels, dim 1, are the innermost dimension)."""
    n = input.numel()
    return n <= SMALL_INPUT or (n <= SMALL_ROWS_INPUT and input.stride(1) == 1)


def check_input(
    layer: str,
    input: torch.Tensor,
    batch_stats: bool,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
) -> None:
    """Validate once at the boundary: a floating dtype, at least 2 dims, vectors of
    shape ``(C,)`` for the input's ``C`` channels, affine parameters of the input's
    dtype (for float32/float64), more than one value per channel when training."""
    if not input.is_floating_point():
        _checks.check_floating(layer, str(input.dtype), False)
    shape = input.shape
    if len(shape) < 2:
        raise ValueError(f"{layer} expected an input of shape (N, C, ...), got {input.dim()}D input of shape {tuple(shape)}")
    C = shape[1]
    one = (C,)  # compared with torch.Size in one call per vector: this runs on every call
    vectors = (weight, bias, running_mean, running_var)
    for p in vectors:
        if p is not None and p.shape != one:
            _explain_shapes(layer, shape, tuple(zip(_VECTOR_NAMES, vectors)))
    dtype = input.dtype
    if dtype in _KERNEL_DTYPES:
        for name, p in zip(_VECTOR_NAMES[:2], vectors[:2]):
            if p is not None and p.dtype is not dtype:
                raise TypeError(
                    f"{layer} expected {name} of the input's dtype {dtype}, got {p.dtype}; "
                    f"cast the module (e.g. module.to({dtype})) or the input"
                )
    if batch_stats and input.numel() <= C:  # at most one value per channel, or no channels
        _checks.check_training_batch(layer, shape, 1)


def _explain_shapes(layer: str, shape: torch.Size, vectors) -> None:
    """Raise the error for vectors that do not fit the input: if the vectors agree on
    a length, they name the channel count and the input is the odd one out;
    otherwise the input's channel count names the vector that is wrong."""
    shapes = {tuple(p.shape) for _, p in vectors if p is not None}
    if len(shapes) == 1 and len(next(iter(shapes))) == 1:
        _checks.check_channels(layer, tuple(shape), 1, next(iter(shapes))[0])
    for name, p in vectors:
        if p is not None:
            _checks.check_param_shape(layer, name, tuple(p.shape), (shape[1],))


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
    check_input(layer, input, batch_stats, weight, bias, running_mean, running_var)
    if nonfinite != "propagate":
        _checks.check_nonfinite_policy(layer, nonfinite)
    update = training and running_mean is not None and running_var is not None
    count = batch_count(layer, update, momentum, num_batches_tracked)

    if input.numel() == 0:  # as torch: an empty output that keeps the autograd graph, buffers untouched
        y = input.clone()
        if weight is not None:
            y = y * weight[0]
        if bias is not None:
            y = y + bias[0]
        if update and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return y

    if small_input(input) and nonfinite == "propagate" and input.is_cpu and input.dtype in _KERNEL_DTYPES:
        keep = update or not batch_stats  # running statistics read (eval) or updated (training)
        y = torch.batch_norm(
            input, weight, bias, running_mean if keep else None, running_var if keep else None, batch_stats,
            update_factor(momentum, count) if update else 0.0, eps, False,
        )
        if update and num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        return y

    if uses_kernels(input, weight, bias):
        if torch.is_grad_enabled() and (
            input.requires_grad
            or (weight is not None and weight.requires_grad)
            or (bias is not None and bias.requires_grad)
        ):
            stats: list = []
            y = KernelBatchNorm.apply(input, weight, bias, running_mean, running_var, batch_stats, eps, stats)
            mean, var = stats
        else:
            y, mean, var, _, _ = kernel_forward(input, weight, bias, running_mean, running_var, batch_stats, eps)
    else:
        if batch_stats:
            mean, var = _torch_impl.batch_stats(input)
        else:
            mean, var = running_mean, running_var
        y = _torch_impl.normalize(input, mean, var, weight, bias, eps)
    if update:
        _update(layer, nonfinite, input, mean, var, running_mean, running_var, momentum, count, num_batches_tracked)
    return y


def batch_count(layer: str, update: bool, momentum: Optional[float],
                num_batches_tracked: Optional[torch.Tensor]) -> Optional[int]:
    """The count the batch being added makes, needed by ``momentum=None`` (cumulative average)."""
    if not update or momentum is not None:
        return None
    if num_batches_tracked is None:
        raise ValueError(f"{layer} with momentum=None (cumulative average) needs num_batches_tracked")
    return int(num_batches_tracked) + 1


def _update(layer, nonfinite, input, mean, var, running_mean, running_var, momentum, count, num_batches_tracked) -> None:
    """Fold the batch statistics into the running ones and count the batch.

    CPU buffers are updated through NumPy views of their memory (the statistics
    are NumPy arrays on the kernel path); other devices with torch operations.
    """
    n = input.numel() // input.shape[1]
    factor = update_factor(momentum, count if count is not None else 1)
    if running_mean.is_cpu and running_var.is_cpu and not isinstance(mean, torch.Tensor):
        updated = commit_batch_stats(
            layer, nonfinite, mean, var, n, running_mean.numpy(), running_var.numpy(), factor, fold_running_stats
        )
        if updated and num_batches_tracked is not None:
            if num_batches_tracked.is_cpu:
                counter = num_batches_tracked.numpy()
                counter += 1
            else:
                num_batches_tracked.add_(1)
        return
    with torch.no_grad():
        mean = mean.detach().to(running_mean.dtype)
        var = var.detach().to(running_var.dtype)
        if commit_batch_stats(layer, nonfinite, mean, var, n, running_mean, running_var, factor):
            if num_batches_tracked is not None:
                num_batches_tracked.add_(1)
