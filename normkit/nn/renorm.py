"""Batch Renormalization (Ioffe 2017): BatchNorm that stays consistent with its running statistics.

Training, per channel, with the batch mean ``mu_B`` and biased variance
``var_B`` and the running statistics ``mu`` (``running_mean``) and ``var``
(``running_var``) *before* this batch's update::

    sigma_B = sqrt(var_B + eps)             sigma = sqrt(var + eps)
    r = clip(sigma_B / sigma, 1/rmax, rmax)
    d = clip((mu_B - mu) / sigma, -dmax, dmax)
    y = weight * ((x - mu_B) / sigma_B * r + d) + bias

``r`` and ``d`` are constants for the backward (no gradient through them):
``dx`` is BatchNorm's training backward with the weight ``weight * r``,
``dweight = r * sum(dy * x_hat) + d * sum(dy)``, ``dbias = sum(dy)``. The
running statistics are then updated exactly as BatchNorm's. In eval the layer
*is* BatchNorm in eval. With ``rmax = 1`` and ``dmax = 0`` (``r = 1, d = 0``)
training is exactly BatchNorm's.

Schedule (:func:`renorm_limits`): for the first ``warmup_steps`` training
batches the limits are ``(1, 0)`` -- plain BatchNorm, while the running
statistics settle. Afterwards they are relaxed linearly to ``(rmax, dmax)``
over ``relax_steps`` batches (``0``: at once). The paper's schedule (Inception
on ImageNet) is ``warmup_steps=5000, relax_steps=(35000, 20000)``: ``rmax``
reaches its value at step 40k, ``dmax`` at 25k.

CPU float32/float64 run on normkit's kernels (``moments``, then
``forward_fixed`` with the folded coefficients ``weight*r`` and
``weight*d + bias``; the backward is the kernels' closed form); other devices
and dtypes run the same mathematics in torch operations.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch

from .. import _checks, kernels
from ..kernels.running import update_running_stats as fold_running_stats
from ..running import commit_batch_stats, update_factor
from . import _torch_impl
from . import batchnorm as _bn
from . import functional as F
from ._bridge import as_view, new_like_view, param_grad

__all__ = [
    "BatchRenorm1d", "BatchRenorm2d", "BatchRenorm3d", "KernelBatchRenorm", "batch_renorm", "renorm_limits",
]

Steps = Union[int, Tuple[int, int]]


# --------------------------------------------------------------------------- schedule


def _check_steps(layer: str, warmup_steps: int, relax_steps: Steps) -> Tuple[int, Tuple[int, int]]:
    if isinstance(relax_steps, (int, np.integer)):
        pair: tuple = (relax_steps, relax_steps)
    else:
        pair = tuple(relax_steps) if isinstance(relax_steps, (tuple, list)) else ()
    values = (warmup_steps,) + pair
    integral = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    if len(pair) != 2 or not integral or min(values) < 0:
        raise ValueError(
            f"{layer} expected warmup_steps >= 0 and relax_steps >= 0 (an int, or a pair "
            f"(rmax steps, dmax steps)) as integers, got warmup_steps={warmup_steps!r}, relax_steps={relax_steps!r}"
        )
    return int(warmup_steps), (int(pair[0]), int(pair[1]))


def _check_limits(layer: str, rmax: float, dmax: float) -> Tuple[float, float]:
    rmax, dmax = float(rmax), float(dmax)
    if not (rmax >= 1.0 and math.isfinite(rmax) and dmax >= 0.0 and math.isfinite(dmax)):
        raise ValueError(
            f"{layer} expected finite rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax} "
            f"(rmax=1, dmax=0 is plain BatchNorm)"
        )
    return rmax, dmax


def renorm_limits(
    step: int, rmax: float, dmax: float, warmup_steps: int = 0, relax_steps: Steps = 0
) -> Tuple[float, float]:
    """The clipping limits ``(rmax_t, dmax_t)`` in force for training batch ``step`` (0-based).

    * ``step < warmup_steps``: ``(1, 0)`` -- plain BatchNorm;
    * afterwards, with ``s = step - warmup_steps + 1`` batches past the warm-up
      and ``R`` the relaxation length (``relax_steps``, or its first/second
      entry for ``rmax``/``dmax``)::

          rmax_t = 1 + (rmax - 1) * min(1, s / R)      dmax_t = dmax * min(1, s / R)

      (``R = 0``: the full value at once). The limits are reached at step
      ``warmup_steps + R - 1``.
    """
    warmup, (r_steps, d_steps) = _check_steps("renorm_limits", warmup_steps, relax_steps)
    if step < warmup:
        return 1.0, 0.0
    s = step - warmup + 1
    fr = 1.0 if r_steps == 0 else min(1.0, s / r_steps)
    fd = 1.0 if d_steps == 0 else min(1.0, s / d_steps)
    return 1.0 + (float(rmax) - 1.0) * fr, float(dmax) * fd


# --------------------------------------------------------------------------- kernels


def _np64(t: torch.Tensor) -> np.ndarray:
    return np.asarray(t.detach().cpu().numpy(), dtype=np.float64)


def _corrections(mean, var, running_mean, running_var, rmax: float, dmax: float, eps: float):
    """Float64 NumPy ``(r, d)`` (NaN/Inf statistics pass through as NaN/Inf).

    ``rmax = 1, dmax = 0`` (warm-up) gives exactly ``(1, 0)`` without reading the
    running statistics, so that even NaN running statistics leave it BatchNorm.
    """
    if rmax == 1.0 and dmax == 0.0:
        return np.ones_like(mean), np.zeros_like(mean)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sigma = np.sqrt(running_var + eps)
        r = np.clip(np.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
        d = np.clip((mean - running_mean) / sigma, -dmax, dmax)
    return r, d


def _folded(weight: Optional[np.ndarray], bias: Optional[np.ndarray], r: np.ndarray, d: np.ndarray, dtype):
    """``(weight * r, weight * d + bias)`` in ``dtype``, from float64."""
    w = r if weight is None else weight * r
    b = d if weight is None else weight * d
    if bias is not None:
        b = b + bias
    return np.ascontiguousarray(w, dtype=dtype), np.ascontiguousarray(b, dtype=dtype)


def _kernel_forward(x, weight, bias, running_mean, running_var, rmax, dmax, eps):
    """Training forward on the kernels -> ``y`` and float64 ``(mean, var, rstd, r, d)``, view."""
    x3, view = as_view(x, 1)
    mean, var = kernels.moments(x3)
    r, d = _corrections(mean, var, _np64(running_mean), _np64(running_var), rmax, dmax, eps)
    w_np = None if weight is None else weight.detach().numpy()
    b_np = None if bias is None else bias.detach().numpy()
    w_eff, b_eff = _folded(w_np, b_np, r, d, x3.dtype)
    y, y3 = new_like_view(x.shape, view, x.dtype)
    rstd = kernels.forward_fixed(x3, mean, var, w_eff, b_eff, eps, y3)
    return y, mean, var, rstd, r, d, view


class KernelBatchRenorm(torch.autograd.Function):
    """Training-mode Batch Renormalization on the kernels, differentiable.

    ``r`` and ``d`` are computed inside (from the batch and the given running
    statistics) and held constant by the backward. ``(mean, var)`` of the batch
    are appended to ``stats`` (a list) for the running-statistics update.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, rmax: float, dmax: float, eps: float, stats: list):
        y, mean, var, rstd, r, d, view = _kernel_forward(x, weight, bias, running_mean, running_var, rmax, dmax, eps)
        stats += (mean, var)
        ctx.save_for_backward(
            x, weight, torch.from_numpy(np.ascontiguousarray(mean)), torch.from_numpy(rstd),
            torch.from_numpy(r), torch.from_numpy(d),
        )
        ctx.view = view
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd, r, d = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # create_graph=True: differentiable torch operations
            rc, dc = r.to(x.dtype), d.to(x.dtype)
            w_eff = rc if weight is None else weight * rc
            dx, dxhat, db = _torch_impl.normalize_backward(dy, x, w_eff, ctx.eps, True, mean, rstd)
            dw = rc * dxhat + dc * db if need_w else None
        else:
            x3, view = as_view(x, 1, like=ctx.view)
            dy3, _ = as_view(dy, 1, like=view)
            dx = dx3 = None
            if need_x:
                dx, dx3 = new_like_view(x.shape, view, x.dtype)
            r_np, d_np = r.numpy(), d.numpy()
            w_eff, _ = _folded(None if weight is None else weight.detach().numpy(), None, r_np, d_np, x3.dtype)
            dxhat, db = kernels.backward(dy3, x3, mean.numpy(), rstd.numpy(), w_eff, True, dx3)
            dw = param_grad(r_np * dxhat + d_np * db, weight.dtype) if need_w else None
            db = param_grad(db, ctx.bias_dtype) if need_b else None
        return (dx if need_x else None, dw, db if need_b else None) + (None,) * 6


# --------------------------------------------------------------------------- functional


def _torch_forward(x, weight, bias, running_mean, running_var, rmax, dmax, eps):
    """The same mathematics in differentiable torch operations (statistics in >= float32)."""
    mean, var = _torch_impl.batch_stats(x)
    with torch.no_grad():
        cdt = mean.dtype
        if rmax == 1.0 and dmax == 0.0:  # as _corrections: BatchNorm, whatever the running statistics
            running_mean, running_var = mean, var
        sigma = torch.sqrt(running_var.to(cdt) + eps)
        r = torch.clamp(torch.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
        d = torch.clamp((mean - running_mean.to(cdt)) / sigma, -dmax, dmax)
    w_eff = r if weight is None else weight.to(cdt) * r
    b_eff = d if weight is None else weight.to(cdt) * d
    if bias is not None:
        b_eff = b_eff + bias.to(cdt)
    y = _torch_impl.normalize(x, mean, var, w_eff, b_eff, eps)
    return y, mean.detach(), var.detach()


def _commit(layer, nonfinite, x, mean, var, running_mean, running_var, momentum, count, num_batches_tracked) -> None:
    """Fold the batch statistics into the running ones (BatchNorm's rule) and count the batch."""
    n = x.numel() // x.shape[1]
    factor = update_factor(momentum, count if count is not None else 1)
    if isinstance(mean, np.ndarray) and running_mean.is_cpu and running_var.is_cpu:
        updated = commit_batch_stats(
            layer, nonfinite, mean, var, n, running_mean.numpy(), running_var.numpy(), factor, fold_running_stats
        )
    else:
        with torch.no_grad():
            mean = torch.as_tensor(mean).to(running_mean.device, running_mean.dtype)
            var = torch.as_tensor(var).to(running_var.device, running_var.dtype)
            updated = commit_batch_stats(layer, nonfinite, mean, var, n, running_mean, running_var, factor)
    if updated and num_batches_tracked is not None:
        with torch.no_grad():
            num_batches_tracked.add_(1)


def batch_renorm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    rmax: float = 3.0,
    dmax: float = 5.0,
    *,
    num_batches_tracked: Optional[torch.Tensor] = None,
    nonfinite: str = "propagate",
    layer: str = "batch_renorm",
) -> torch.Tensor:
    """Batch Renormalization over dim 1 of ``input`` ``(N, C, *)`` (see the module docstring).

    Training: ``y = weight * ((x - mu_B) / sigma_B * r + d) + bias`` with
    ``r = clip(sigma_B / sigma, 1/rmax, rmax)``, ``d = clip((mu_B - mu) / sigma,
    -dmax, dmax)`` against ``running_mean``/``running_var`` (required), which
    are then updated in place as by :func:`normkit.nn.functional.batch_norm`
    (same ``momentum``, ``num_batches_tracked`` and ``nonfinite`` rules).
    ``training=False``: exactly :func:`normkit.nn.functional.batch_norm` in
    inference. ``rmax``/``dmax`` are the limits in force (a schedule is the
    module's business). Shapes: every vector ``(C,)``; the output keeps the
    input's shape, dtype and memory format. Errors leave every buffer unchanged.
    """
    if not training:
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, False, momentum, eps, nonfinite=nonfinite, layer=layer
        )
    if running_mean is None or running_var is None:
        raise ValueError(
            f"{layer} expected running_mean and running_var when training (r and d compare the batch "
            f"statistics with them), got None; for batch statistics alone use batch_norm"
        )
    rmax, dmax = _check_limits(layer, rmax, dmax)
    F.check_input(layer, input, True, weight, bias, running_mean, running_var)
    if nonfinite != "propagate":
        _checks.check_nonfinite_policy(layer, nonfinite)
    count = F.batch_count(layer, True, momentum, num_batches_tracked)
    if input.numel() == 0:  # BatchNorm's behaviour: an empty output, the batch counted
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, True, momentum, eps,
            num_batches_tracked=num_batches_tracked, nonfinite=nonfinite, layer=layer,
        )
    if F.uses_kernels(input, weight, bias):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
            stats: List[Any] = []
            y = KernelBatchRenorm.apply(input, weight, bias, running_mean, running_var, rmax, dmax, eps, stats)
            mean, var = stats
        else:
            y, mean, var, _, _, _, _ = _kernel_forward(input, weight, bias, running_mean, running_var, rmax, dmax, eps)
    else:
        y, mean, var = _torch_forward(input, weight, bias, running_mean, running_var, rmax, dmax, eps)
    _commit(layer, nonfinite, input, mean, var, running_mean, running_var, momentum, count, num_batches_tracked)
    return y


# --------------------------------------------------------------------------- modules


class _BatchRenormMixin:
    """The constructor, schedule and forward shared by the three dimensionalities."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        rmax: float = 3.0,
        dmax: float = 5.0,
        warmup_steps: int = 5000,
        relax_steps: Steps = 0,
        device: Any = None,
        dtype: Any = None,
        *,
        nonfinite: str = "propagate",
        bias: bool = True,
    ) -> None:
        name = f"{type(self).__name__}({num_features})"
        rmax, dmax = _check_limits(name, rmax, dmax)
        warmup_steps, relax_steps = _check_steps(name, warmup_steps, relax_steps)
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, nonfinite=nonfinite)
        if affine and not bias:  # torch's BatchNorm(bias=False): a weight, no bias
            self.register_parameter("bias", None)
        self.rmax = rmax
        self.dmax = dmax
        self.warmup_steps = warmup_steps
        self.relax_steps = relax_steps
        self.register_buffer("renorm_step", torch.zeros((), dtype=torch.long, device=device))

    def current_limits(self) -> Tuple[float, float]:
        """``(rmax_t, dmax_t)`` for the next training batch (:func:`renorm_limits` at ``renorm_step``)."""
        return renorm_limits(int(self.renorm_step), self.rmax, self.dmax, self.warmup_steps, self.relax_steps)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)  # BatchNorm's inference, nothing else
        self._check_input_dim(input)
        if not self.track_running_stats or self.running_mean is None or self.running_var is None:
            raise ValueError(
                f"{self._layer_name} expected track_running_stats=True with running statistics when training, "
                f"got track_running_stats={self.track_running_stats}; Batch Renormalization compares each "
                f"batch with the running statistics"
            )
        rmax, dmax = self.current_limits()
        y = batch_renorm(
            input, self.running_mean, self.running_var, self.weight, self.bias, True, self.momentum, self.eps,
            rmax, dmax, num_batches_tracked=self.num_batches_tracked, nonfinite=self.nonfinite, layer=self._layer_name,
        )
        with torch.no_grad():
            self.renorm_step.add_(1)
        return y

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if "renorm_step" in self._buffers:  # not yet registered while torch's __init__ runs
            self.renorm_step.zero_()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:
        # A BatchNorm checkpoint has no renorm_step: it loads even with strict=True,
        # the step counter keeping its current value (0 on a new layer: warm-up first).
        key = prefix + "renorm_step"
        absent = key not in state_dict
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        if absent and key in missing_keys:
            missing_keys.remove(key)

    def extra_repr(self) -> str:
        relax = self.relax_steps[0] if self.relax_steps[0] == self.relax_steps[1] else self.relax_steps
        return (
            f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, "
            f"warmup_steps={self.warmup_steps}, relax_steps={relax}"
        )


_DOC = """{cls}: Batch Renormalization (Ioffe 2017) over dim 1 of a {shape} input.

    Training, per channel, against the running statistics ``mu``, ``var`` before
    this batch's update (``mu_B``, ``var_B``: the batch's mean and biased variance)::

        sigma_B = sqrt(var_B + eps),  sigma = sqrt(var + eps)
        r = clip(sigma_B / sigma, 1/rmax_t, rmax_t),  d = clip((mu_B - mu) / sigma, -dmax_t, dmax_t)
        y = weight * ((x - mu_B) / sigma_B * r + d) + bias

    with no gradient through ``r`` and ``d``; then the running statistics are
    updated as BatchNorm's (``momentum`` is the weight of the new batch, or None
    for the cumulative average; ``running_var`` takes the unbiased variance).
    Eval: exactly BatchNorm's inference with the running statistics.

    Schedule (:func:`normkit.nn.renorm.renorm_limits`, driven by the buffer
    ``renorm_step``, the number of training batches seen): ``(rmax_t, dmax_t) =
    (1, 0)``, plain BatchNorm, for the first ``warmup_steps`` batches; then a
    linear relaxation to ``(rmax, dmax)`` over ``relax_steps`` batches (an int,
    or a pair for rmax and dmax; 0 = at once). The paper's schedule is
    ``warmup_steps=5000, relax_steps=(35000, 20000)``. ``rmax=1, dmax=0`` is
    BatchNorm throughout.

    Args: ``num_features`` (C), ``eps=1e-5``, ``momentum=0.1``, ``affine=True``,
    ``rmax=3.0`` (>= 1), ``dmax=5.0`` (>= 0), ``warmup_steps=5000``,
    ``relax_steps=0``, ``device``, ``dtype``; keywords ``nonfinite`` (as
    :class:`normkit.nn.BatchNorm2d`) and ``bias=True`` (as torch's: ``False``
    keeps the weight, drops the bias). Running statistics are always tracked.

    State: BatchNorm's parameters and buffers (``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``) plus the int64
    buffer ``renorm_step``. A BatchNorm checkpoint loads with ``strict=True``
    (``renorm_step`` keeps its value, 0 for a new layer); a BatchRenorm
    checkpoint loads into torch's BatchNorm with ``strict=False`` (the one
    unexpected key is ``renorm_step``). It subclasses
    :class:`normkit.nn.BatchNorm{dim}d` (so ``isinstance(m, torch.nn.BatchNorm{dim}d)``
    holds): beware converters that rebuild every BatchNorm, e.g.
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, which drop the renormalization.

    Shape: input and output {shape}; channels_last input gives channels_last output.
    Any error leaves parameters, running statistics and both counters unchanged.
    """


class BatchRenorm1d(_BatchRenormMixin, _bn.BatchNorm1d):
    __doc__ = _DOC.format(cls="BatchRenorm1d", shape="(N, C) or (N, C, L)", dim=1)


class BatchRenorm2d(_BatchRenormMixin, _bn.BatchNorm2d):
    __doc__ = _DOC.format(cls="BatchRenorm2d", shape="(N, C, H, W)", dim=2)


class BatchRenorm3d(_BatchRenormMixin, _bn.BatchNorm3d):
    __doc__ = _DOC.format(cls="BatchRenorm3d", shape="(N, C, D, H, W)", dim=3)
