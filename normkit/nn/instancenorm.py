"""Drop-in replacements for ``torch.nn.InstanceNorm1d/2d/3d``.

Each class *is* its torch counterpart (a subclass): same constructor
(``num_features``, ``eps``, ``momentum``, ``affine=False``,
``track_running_stats=False``, ``device``, ``dtype``, keyword ``bias``),
parameters, buffers, state_dict keys and state_dict loading rules. Only
``forward`` differs: it validates, picks the mode as torch does and calls
:func:`normkit.nn.functional_family.instance_norm`.
"""

from __future__ import annotations

import warnings
from typing import Dict

import torch
from torch import nn

from .. import _checks
from . import functional_family as FF

__all__ = ["InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d"]


class _InstanceNormMixin:
    """The forward shared by the three dimensionalities (torch's rules, normkit's errors)."""

    #: ndim of an unbatched input, and the accepted layouts
    _no_batch_ndim: int = 0
    _layouts: Dict[int, str] = {}

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        name = self._layer_name
        shape = tuple(input.shape)
        _checks.check_ndim_layouts(name, shape, self._layouts)
        feature_dim = input.dim() - self._no_batch_ndim
        C = shape[feature_dim]
        if C != self.num_features:
            if self.affine or self.running_mean is not None:
                raise ValueError(
                    f"{name} expected input with {self.num_features} channels along dim {feature_dim}, got {C} "
                    f"(input shape {shape}); the layer's "
                    f"{'affine parameters' if self.affine else 'running statistics'} have {self.num_features}"
                )
            # torch's behaviour: without parameters or running statistics num_features is unused
            warnings.warn(
                f"{name}: input's size at dim={feature_dim} ({C}) does not match num_features; "
                "num_features is not used because affine=False and there are no running statistics",
                stacklevel=2,
            )
        unbatched = input.dim() == self._no_batch_ndim
        x = input.unsqueeze(0) if unbatched else input
        # torch's mode rule: instance statistics in training or without tracking; running
        # statistics (if the buffers exist) are passed and then updated whenever instance
        # statistics are used; momentum=None means no update.
        y = FF.instance_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0,
            self.eps,
            layer=name,
        )
        return y.squeeze(0) if unbatched else y


_DOC = """{cls}: instance normalization of a {shape} input, on normkit's kernels.

    Per sample and channel, over the {L} spatial positions: ``mu``, biased ``s2``,
    ``y = weight[c] * (x - mu) / sqrt(s2 + eps) + bias[c]``. With
    ``track_running_stats=True``: training also updates
    ``running = (1 - momentum) * running + momentum * batch`` with the batch
    average of the instance means and unbiased variances (``momentum=None``:
    no update; ``num_batches_tracked`` is not counted, as torch), and eval
    normalizes with the running statistics.

    Args: as ``torch.nn.{cls}`` -- ``num_features`` (C), ``eps=1e-5``,
    ``momentum=0.1``, ``affine=False``, ``track_running_stats=False``,
    ``device``, ``dtype``, keyword ``bias=True``.

    Shape: input {shape} or unbatched {unbatched}, output the same; contiguous and
    channels-last inputs are read in place and the output keeps the layout.
    Instance statistics need more than one spatial value (``ValueError`` otherwise).
    With ``affine=False`` and no running statistics, a channel count other than
    ``num_features`` only warns, as torch. Any error leaves parameters and running
    statistics unchanged.
    """


class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    __doc__ = _DOC.format(cls="InstanceNorm1d", shape="(N, C, L)", unbatched="(C, L)", L="L")
    _no_batch_ndim = 2
    _layouts = {2: "(C, L)", 3: "(N, C, L)"}


class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    __doc__ = _DOC.format(cls="InstanceNorm2d", shape="(N, C, H, W)", unbatched="(C, H, W)", L="H*W")
    _no_batch_ndim = 3
    _layouts = {3: "(C, H, W)", 4: "(N, C, H, W)"}


class InstanceNorm3d(_InstanceNormMixin, nn.InstanceNorm3d):
    __doc__ = _DOC.format(cls="InstanceNorm3d", shape="(N, C, D, H, W)", unbatched="(C, D, H, W)", L="D*H*W")
    _no_batch_ndim = 4
    _layouts = {4: "(C, D, H, W)", 5: "(N, C, D, H, W)"}
