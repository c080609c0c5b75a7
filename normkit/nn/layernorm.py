"""Drop-in replacements for ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``.

Each class *is* its torch counterpart (a subclass): the constructor, the
parameters (``weight``, and ``bias`` for LayerNorm) and the state_dict keys are
torch's own, so checkpoints load both ways. Only ``forward`` differs: it calls
:mod:`normkit.nn.functional_family`, which validates and runs the kernels (CPU
float32/float64) or plain torch operations (everything else).
"""

from __future__ import annotations

import torch
from torch import nn

from . import functional_family as FF

__all__ = ["LayerNorm", "RMSNorm"]


class LayerNorm(nn.LayerNorm):
    """LayerNorm over the trailing ``normalized_shape`` dims, on normkit's kernels.

    Per row (every index of the leading dims), with ``D = prod(normalized_shape)``
    values: ``mu = mean(x)``, ``s2 = mean((x - mu)^2)`` (biased) and
    ``y = weight * (x - mu) / sqrt(s2 + eps) + bias``, the same in training and eval.

    Args: as ``torch.nn.LayerNorm`` -- ``normalized_shape`` (int or tuple),
    ``eps=1e-5``, ``elementwise_affine=True`` (``weight`` of ones and ``bias`` of
    zeros, shape ``normalized_shape``), ``bias=True``, ``device``, ``dtype``.

    Shape: input ``(*, *normalized_shape)``, output the same (contiguous).
    Statistics accumulate in float64 on the kernels; float16/bfloat16 use float32.
    """

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.normalized_shape})"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return FF.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps, layer=self._layer_name)


class RMSNorm(nn.RMSNorm):
    """RMSNorm over the trailing ``normalized_shape`` dims, on normkit's kernels.

    Per row: ``ms = mean(x^2)`` and ``y = weight * x / sqrt(ms + eps)`` -- no
    centring, no bias. ``eps=None`` (default) is the machine epsilon of the dtype
    the statistics are computed in, as torch: ``finfo(float64).eps`` for float64
    input, ``finfo(float32).eps`` for float32, float16 and bfloat16 (computed in
    float32) -- see :func:`normkit.nn.functional_family.rms_eps`.

    Args: as ``torch.nn.RMSNorm`` -- ``normalized_shape``, ``eps=None``,
    ``elementwise_affine=True`` (``weight`` of ones, shape ``normalized_shape``),
    ``device``, ``dtype``. Shape: input ``(*, *normalized_shape)``, output the same.
    """

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.normalized_shape})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return FF.rms_norm(x, self.normalized_shape, self.weight, self.eps, layer=self._layer_name)
