"""Drop-in replacements for ``torch.nn.BatchNorm1d/2d/3d``.

Each class *is* its torch counterpart (a subclass): same constructor
arguments, parameters (``weight``, ``bias``), buffers (``running_mean``,
``running_var``, ``num_batches_tracked``) and state_dict keys, so checkpoints
load both ways and ``isinstance(m, torch.nn.BatchNorm2d)`` holds. Only
``forward`` differs: it validates once, picks the mode and calls
:func:`normkit.nn.functional.batch_norm`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from .. import _checks
from . import functional as F

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNormMixin:
    """The forward shared by the three dimensionalities."""

    _input_dims: Sequence[int] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
        nonfinite: str = "propagate",
    ) -> None:
        # torch >= 2.13 takes bias= (a learned weight without a bias); pass it only when
        # it differs from the default, so older torch versions keep working
        extra = {} if bias else {"bias": False}
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype, **extra)
        self.nonfinite = _checks.check_nonfinite_policy(type(self).__name__, nonfinite)

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_input_dim(self, input: torch.Tensor) -> None:
        shape = input.shape
        if len(shape) not in self._input_dims or shape[1] != self.num_features:  # the errors, with messages
            _checks.check_ndim(self._layer_name, tuple(shape), self._input_dims)
            _checks.check_channels(self._layer_name, tuple(shape), 1, self.num_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        # PyTorch's mode rules: batch statistics in training, or when there are no
        # running statistics; running statistics are updated only in training with
        # track_running_stats on.
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            input,
            self.running_mean if track else None,
            self.running_var if track else None,
            self.weight,
            self.bias,
            batch_stats,
            self.momentum,
            self.eps,
            num_batches_tracked=self.num_batches_tracked if self.training and self.track_running_stats else None,
            nonfinite=self.nonfinite,
            layer=self._layer_name,
        )

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.nonfinite == "propagate" else f"{text}, nonfinite={self.nonfinite!r}"


_DOC = """{cls}: batch normalization over dim 1 of a {shape} input, on normkit's kernels.

    Training: per channel, the batch mean ``mu`` and biased variance ``s2`` over
    every dim but 1 give ``y = weight * (x - mu) / sqrt(s2 + eps) + bias``, and
    ``running = (1 - momentum) * running + momentum * batch`` (``running_var``
    takes the unbiased ``s2 * m / (m - 1)``, ``m`` values per channel;
    ``momentum=None``: cumulative average over ``num_batches_tracked``).
    Eval: ``running_mean``/``running_var`` replace the batch statistics. With
    ``track_running_stats=False`` batch statistics are used in both modes.

    Args: as ``torch.nn.{cls}`` -- ``num_features`` (C), ``eps=1e-5``,
    ``momentum=0.1`` (weight of the new batch, or None), ``affine=True``,
    ``track_running_stats=True``, ``device``, ``dtype``, keyword ``bias=True``
    (torch >= 2.13) -- plus the keyword ``nonfinite``: ``"propagate"`` (default, as torch), ``"skip"`` (a batch with
    NaN/Inf leaves the running statistics and counter unchanged, with a
    warning) or ``"raise"``.

    Shape: input and output {shape}; channels_last input gives channels_last output.
    Any error leaves parameters, running statistics and ``num_batches_tracked`` unchanged.
    """


class BatchNorm1d(_BatchNormMixin, nn.BatchNorm1d):
    __doc__ = _DOC.format(cls="BatchNorm1d", shape="(N, C) or (N, C, L)")
    _input_dims = (2, 3)


class BatchNorm2d(_BatchNormMixin, nn.BatchNorm2d):
    __doc__ = _DOC.format(cls="BatchNorm2d", shape="(N, C, H, W)")
    _input_dims = (4,)


class BatchNorm3d(_BatchNormMixin, nn.BatchNorm3d):
    __doc__ = _DOC.format(cls="BatchNorm3d", shape="(N, C, D, H, W)")
    _input_dims = (5,)
