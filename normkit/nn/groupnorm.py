"""Drop-in replacement for ``torch.nn.GroupNorm``.

A subclass: same constructor (``num_groups``, ``num_channels``, ``eps``,
``affine``, ``device``, ``dtype`` and torch's keyword ``bias``), parameters and
state_dict keys. Only the validation at construction (a clearer message) and
``forward`` differ.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import _checks
from . import functional_family as FF

__all__ = ["GroupNorm"]


class GroupNorm(nn.GroupNorm):
    """GroupNorm: ``C`` channels in ``G`` groups of ``C/G``, normalized per sample and group.

    Per sample ``n`` and group ``g``: ``mu``, biased ``s2`` over the group's channels
    and every spatial position; ``y = weight[c] * (x - mu) / sqrt(s2 + eps) + bias[c]``,
    the same in training and eval. ``GroupNorm(1, C)`` is LayerNorm over ``(C, *)``
    with a per-channel affine; ``GroupNorm(C, C)`` is InstanceNorm with an affine.

    Args: as ``torch.nn.GroupNorm`` -- ``num_groups`` (must divide ``num_channels``:
    ``ValueError`` quoting both, at construction), ``num_channels``, ``eps=1e-5``,
    ``affine=True`` (``weight`` ones, ``bias`` zeros, ``(C,)``), ``device``,
    ``dtype``, keyword ``bias=True``.

    Shape: input ``(N, C, *)`` with ``C = num_channels``, output the same;
    contiguous and channels-last inputs are read in place and the output keeps the layout.
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        _checks.check_groups(type(self).__name__, num_groups, num_channels)
        super().__init__(num_groups, num_channels, eps, affine, device, dtype, bias=bias)

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_groups}, {self.num_channels})"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        name = self._layer_name
        _checks.check_min_ndim(name, tuple(input.shape), 2, "(N, C, *)")
        _checks.check_channels(name, tuple(input.shape), 1, self.num_channels)
        return FF.group_norm(input, self.num_groups, self.weight, self.bias, self.eps, layer=name)
