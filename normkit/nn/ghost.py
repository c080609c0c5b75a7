"""Ghost Batch Normalization (Hoffer et al. 2017): BatchNorm over virtual batches.

Training: the batch is cut along dim 0 into consecutive virtual batches
``x[0:v], x[v:2v], ...`` of ``v = virtual_batch_size`` samples (the last one
holds the remainder, it is not dropped). Each is batch-normalized with its own
statistics, ``y_k = weight * (x_k - mu_k) / sqrt(var_k + eps) + bias``, and the
running statistics take one BatchNorm update per virtual batch, in order
(``num_batches_tracked`` counts virtual batches). Eval: plain BatchNorm with
the running statistics -- virtual batching never applies at inference. With
``v >= N`` it is exactly BatchNorm.

Built on :func:`normkit.nn.functional.batch_norm` (one call per virtual batch,
so CPU float32/float64 run on the kernels and everything else on torch);
autograd joins the pieces, so gradients (and double backward) follow.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Optional, Sequence

import torch

from . import batchnorm as _bn
from . import functional as F

__all__ = ["GhostBatchNorm1d", "GhostBatchNorm2d", "GhostBatchNorm3d", "ghost_batch_norm"]


def _check_virtual_batch_size(layer: str, virtual_batch_size: Any) -> int:
    try:
        v = operator.index(virtual_batch_size)
    except TypeError:
        v = None
    if isinstance(virtual_batch_size, bool) or v is None or v < 1:
        raise ValueError(f"{layer} expected virtual_batch_size to be an integer >= 1, got {virtual_batch_size!r}")
    return v


def _check_virtual_batches(layer: str, shape: Sequence[int], v: int) -> None:
    """Every virtual batch must hold more than one value per channel."""
    spatial = math.prod(shape[2:])
    n = shape[0]
    last = n % v or v
    if spatial == 1 and (v == 1 or last == 1):
        what = (
            "virtual batches of 1 sample" if v == 1
            else f"virtual batches of {v} samples along dim 0, the last of which holds 1 sample"
        )
        fix = "use virtual_batch_size >= 2" if v == 1 else f"use a batch size that is not 1 more than a multiple of {v}"
        raise ValueError(
            f"{layer} expected more than 1 value per channel in every virtual batch when training, got input "
            f"shape {tuple(shape)} cut into {what} (1 value per channel); {fix}, or call eval()"
        )


def ghost_batch_norm(
    input: torch.Tensor,
    virtual_batch_size: int,
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
    layer: str = "ghost_batch_norm",
) -> torch.Tensor:
    """Ghost Batch Normalization over dim 1 of ``input`` ``(N, C, *)`` (see the module docstring).

    ``training=True``: one :func:`normkit.nn.functional.batch_norm` call per
    virtual batch of ``virtual_batch_size`` samples along dim 0 (the last may be
    shorter), each updating ``running_mean``/``running_var`` in place (if given)
    and counting in ``num_batches_tracked``; the outputs are concatenated along
    dim 0 (memory format kept). ``training=False``, or ``N <= virtual_batch_size``:
    a single ``batch_norm`` call, i.e. plain BatchNorm. The ``nonfinite`` policy
    applies per virtual batch. Any error leaves every buffer as it was, even one
    raised by a later virtual batch (``nonfinite="raise"``).
    """
    v = _check_virtual_batch_size(layer, virtual_batch_size)
    if not training or input.dim() < 2 or input.shape[0] <= v:
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, training, momentum, eps,
            num_batches_tracked=num_batches_tracked, nonfinite=nonfinite, layer=layer,
        )
    F.check_input(layer, input, False, weight, bias, running_mean, running_var)
    _check_virtual_batches(layer, input.shape, v)
    state = [t for t in (running_mean, running_var, num_batches_tracked) if t is not None]
    saved = [t.detach().clone() for t in state]
    try:
        pieces = [
            F.batch_norm(
                chunk, running_mean, running_var, weight, bias, True, momentum, eps,
                num_batches_tracked=num_batches_tracked, nonfinite=nonfinite, layer=layer,
            )
            for chunk in input.split(v, 0)
        ]
    except BaseException:
        with torch.no_grad():
            for t, s in zip(state, saved):
                t.copy_(s)
        raise
    return torch.cat(pieces, 0)


class _GhostBatchNormMixin:
    """The constructor and forward shared by the three dimensionalities."""

    def __init__(
        self,
        num_features: int,
        virtual_batch_size: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        nonfinite: str = "propagate",
        bias: bool = True,
    ) -> None:
        v = _check_virtual_batch_size(f"{type(self).__name__}({num_features})", virtual_batch_size)
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, nonfinite=nonfinite)
        if affine and not bias:  # torch's BatchNorm(bias=False): a weight, no bias
            self.register_parameter("bias", None)
        self.virtual_batch_size = v

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_features}, virtual_batch_size={self.virtual_batch_size})"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(input)  # BatchNorm's inference: no virtual batches
        self._check_input_dim(input)
        track = self.track_running_stats
        return ghost_batch_norm(
            input, self.virtual_batch_size,
            self.running_mean if track else None, self.running_var if track else None,
            self.weight, self.bias, True, self.momentum, self.eps,
            num_batches_tracked=self.num_batches_tracked if track else None,
            nonfinite=self.nonfinite, layer=self._layer_name,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"


_DOC = """{cls}: Ghost Batch Normalization (Hoffer et al. 2017) over dim 1 of a {shape} input.

    Training: the batch is cut along dim 0 into virtual batches of
    ``virtual_batch_size`` samples (the last holds the remainder); each is
    normalized with its own mean ``mu_k`` and biased variance ``var_k``,
    ``y = weight * (x - mu_k) / sqrt(var_k + eps) + bias``, and updates the
    running statistics once, in order (``running = (1 - momentum) * running +
    momentum * stat_k`` with the unbiased variance; ``momentum=None``: cumulative
    average; ``num_batches_tracked`` counts virtual batches). Every virtual
    batch needs more than one value per channel. Eval: plain BatchNorm with the
    running statistics. ``virtual_batch_size >= N``: exactly BatchNorm.

    Args: ``num_features`` (C), ``virtual_batch_size`` (>= 1), then
    ``torch.nn.{base}``'s: ``eps=1e-5``, ``momentum=0.1``, ``affine=True``,
    ``track_running_stats=True``, ``device``, ``dtype``; keywords ``nonfinite``
    (applied per virtual batch, as :class:`normkit.nn.BatchNorm2d`) and
    ``bias=True`` (as torch's: ``False`` keeps the weight, drops the bias).

    State: exactly BatchNorm's (same parameters, buffers and state_dict keys:
    checkpoints load both ways with ``strict=True``); it subclasses
    :class:`normkit.nn.{base}`.

    Shape: input and output {shape}; channels_last input gives channels_last output.
    Any error leaves parameters, running statistics and ``num_batches_tracked`` unchanged.
    """


class GhostBatchNorm1d(_GhostBatchNormMixin, _bn.BatchNorm1d):
    __doc__ = _DOC.format(cls="GhostBatchNorm1d", shape="(N, C) or (N, C, L)", base="BatchNorm1d")


class GhostBatchNorm2d(_GhostBatchNormMixin, _bn.BatchNorm2d):
    __doc__ = _DOC.format(cls="GhostBatchNorm2d", shape="(N, C, H, W)", base="BatchNorm2d")


class GhostBatchNorm3d(_GhostBatchNormMixin, _bn.BatchNorm3d):
    __doc__ = _DOC.format(cls="GhostBatchNorm3d", shape="(N, C, D, H, W)", base="BatchNorm3d")
