"""A stateful batch-normalization layer for NumPy training loops."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _checks
from ..running import commit_batch_stats, update_factor
from .functional import batch_norm, batch_norm_backward

__all__ = ["BatchNorm"]


class BatchNorm:
    """Batch normalization over a channel axis, with learned affine and running statistics.

    Training (``train()``, the default): per channel ``c``, the batch mean
    ``mu_c`` and biased variance ``s2_c`` over every axis but ``axis`` give
    ``y = weight_c * (x - mu_c) / sqrt(s2_c + eps) + bias_c``, and the running
    statistics move toward the batch's::

        running_mean = (1 - momentum) * running_mean + momentum * mu
        running_var  = (1 - momentum) * running_var  + momentum * s2 * m / (m - 1)

    (``momentum`` is the weight of the new batch; ``None`` averages all batches
    seen, ``1 / num_batches_tracked``; ``m`` values per channel.) Inference
    (``eval()``): the running statistics replace the batch's. With
    ``track_running_stats=False`` there are none and batch statistics are used
    in both modes.

    Args:
        num_features: ``C``, the size of the channel axis.
        eps: added to the variance, default 1e-5.
        momentum: weight of the new batch (PyTorch's convention), default 0.1, or None.
        affine: learn ``weight`` (ones) and ``bias`` (zeros).
        track_running_stats: keep ``running_mean`` (zeros), ``running_var`` (ones)
            and ``num_batches_tracked``.
        axis: the channel axis of the inputs, default 1 (``(N, C, ...)``); -1 for NHWC.
        dtype: dtype of the parameters and running statistics, default float32.
        nonfinite: what a batch with NaN/Inf statistics does to the running
            statistics: ``"propagate"`` (as PyTorch), ``"skip"`` (warn, leave them
            and the counter as they are) or ``"raise"``.

    ``backward(dy)`` returns ``dx`` for the last ``forward`` and stores the
    parameter gradients in ``grad_weight`` and ``grad_bias`` (overwritten, not
    accumulated). Any error leaves the layer exactly as it was.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        axis: int = 1,
        *,
        dtype: np.dtype = np.float32,
        nonfinite: str = "propagate",
    ) -> None:
        name = type(self).__name__
        if int(num_features) != num_features or num_features < 1:
            raise ValueError(f"{name} expected num_features to be a positive integer, got {num_features!r}")
        self.num_features = int(num_features)
        self.eps = _checks.check_eps(name, eps)
        self.momentum = _checks.check_momentum(name, momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.axis = int(axis)
        self.nonfinite = _checks.check_nonfinite_policy(name, nonfinite)
        self.dtype = np.dtype(dtype)
        C = self.num_features
        self.weight = np.ones(C, self.dtype) if affine else None
        self.bias = np.zeros(C, self.dtype) if affine else None
        self.grad_weight: Optional[np.ndarray] = None
        self.grad_bias: Optional[np.ndarray] = None
        if track_running_stats:
            self.running_mean: Optional[np.ndarray] = np.zeros(C, self.dtype)
            self.running_var: Optional[np.ndarray] = np.ones(C, self.dtype)
            self.num_batches_tracked: Optional[int] = 0
        else:
            self.running_mean = self.running_var = None
            self.num_batches_tracked = None
        self.training = True
        self._saved = None

    # -- mode ---------------------------------------------------------------
    def train(self, mode: bool = True) -> "BatchNorm":
        self.training = bool(mode)
        return self

    def eval(self) -> "BatchNorm":
        return self.train(False)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
            self.num_batches_tracked = 0

    # -- passes -------------------------------------------------------------
    def _check(self, x: np.ndarray, batch_stats: bool) -> None:
        name = type(self).__name__
        x = np.asarray(x)
        _checks.check_floating(name, str(x.dtype), np.issubdtype(x.dtype, np.floating))
        axis = _checks.check_channel_axis(name, x.shape, self.axis)
        _checks.check_channels(name, x.shape, axis, self.num_features)
        for what in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(self, what)
            _checks.check_param_shape(name, what, None if value is None else value.shape, (self.num_features,))
        if batch_stats and self.training:
            _checks.check_training_batch(name, x.shape, axis)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Normalize ``x`` (any shape with ``C`` along ``axis``); returns ``y`` in ``x``'s dtype."""
        batch_stats = self.training or self.running_mean is None
        self._check(x, batch_stats)
        result = batch_norm(
            x, self.weight, self.bias,
            running_mean=self.running_mean, running_var=self.running_var,
            training=batch_stats, eps=self.eps, axis=self.axis,
        )
        if self.training and self.running_mean is not None:
            n = _checks.reduced_count(np.shape(x), self.axis % np.ndim(x))
            count = self.num_batches_tracked + 1
            updated = n == 0 or commit_batch_stats(
                type(self).__name__, self.nonfinite, result.mean, result.var, n,
                self.running_mean, self.running_var, update_factor(self.momentum, count),
            )
            if updated:
                self.num_batches_tracked = count
        self._saved = (np.asarray(x), result.mean, result.var, batch_stats)
        return result.y

    __call__ = forward

    def backward(self, dy: np.ndarray) -> np.ndarray:
        """Gradient of the last :meth:`forward`: returns ``dx``; sets ``grad_weight``/``grad_bias``."""
        if self._saved is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        x, mean, var, batch_stats = self._saved
        dx, dweight, dbias = batch_norm_backward(
            dy, x, mean, var, self.weight, training=batch_stats, eps=self.eps, axis=self.axis
        )
        if self.affine:
            self.grad_weight = dweight.astype(self.dtype)
            self.grad_bias = dbias.astype(self.dtype)
        return dx

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}, axis={self.axis})"
        )
