"""Load Keras- and Flax-style batch-norm weights into a normkit/torch BatchNorm.

What each number means
----------------------
Keras ``BatchNormalization`` (TF/Keras 2 and 3), weights in the order
``[gamma, beta, moving_mean, moving_variance]``:

* ``gamma``/``beta``: scale and offset (absent with ``scale=False``/``center=False``);
* ``moving_mean``/``moving_variance``: exponential moving averages of the batch
  mean and of the **biased** batch variance (``tf.nn.moments``: divide by n);
* ``momentum=0.99`` is a **decay**, the weight of the *old* value:
  ``moving = moving * momentum + batch * (1 - momentum)``;
* ``epsilon=1e-3`` (not PyTorch's 1e-5); inference ``gamma * (x - mm) / sqrt(mv + eps) + beta``;
* the channel axis is the last (``axis=-1``), but the weights are per-channel
  vectors, so no transposition is needed -- only the activations' layout differs.

Flax ``linen.BatchNorm`` / ``nnx.BatchNorm``: ``params`` ``scale``, ``bias``;
``batch_stats`` ``mean``, ``var``; ``momentum=0.99`` (a decay as in Keras),
``epsilon=1e-5``; ``var`` is an EMA of the **biased** batch variance
(``E[x^2] - E[x]^2`` by default, ``use_fast_variance=True``).

PyTorch/normkit: ``momentum`` is the weight of the *new* batch
(``momentum = 1 - decay``, :func:`normkit.running.momentum_from_decay`), and
``running_var`` is an EMA of the **unbiased** batch variance (``n/(n-1)``).

What the loaders do
-------------------
``running_mean = moving_mean``; ``running_var = moving_variance`` unchanged --
eval outputs are then *identical* to the source framework's, which is what a
port needs. The biased/unbiased difference is a factor ``n/(n-1)`` on what the
EMA estimates (n = values per channel in a training batch, e.g. 32*7*7 = 1568:
0.06%); pass ``batch_count=n`` to rescale ``running_var`` by ``n/(n-1)`` instead,
if you will keep training and want PyTorch's convention. ``eps`` and
``momentum`` of the module are set from the source's ``epsilon`` and decay;
``num_batches_tracked`` is left alone (neither framework keeps a counter).
Missing ``gamma``/``beta`` set ``weight`` to 1 / ``bias`` to 0 when the module
has them. All shapes are checked before anything is written.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from ..running import momentum_from_decay
from ._common import is_batchnorm

__all__ = ["load_keras_batchnorm", "load_flax_batchnorm"]


def _vec(name: str, value: Any, C: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(value, dtype=np.float64))
    if t.shape != (C,):
        raise ValueError(f"expected {name} of shape ({C},) for a BatchNorm with {C} channels, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} has non-finite values")
    return t.to(device=like.device, dtype=like.dtype)


def _load(module: nn.Module, scale: Any, shift: Any, mean: Any, var: Any, eps: float, decay: float,
          batch_count: Optional[int], names: tuple) -> nn.Module:
    if not is_batchnorm(module):
        raise TypeError(f"expected a torch/normkit BatchNorm module, got {type(module).__name__}")
    if module.running_mean is None or module.running_var is None:
        raise ValueError("the module has no running statistics (track_running_stats=False); nothing to load them into")
    if not eps > 0:
        raise ValueError(f"epsilon must be > 0, got {eps}")
    momentum = momentum_from_decay(decay)
    C = module.num_features
    ref = module.running_mean
    m = _vec(names[2], mean, C, ref)
    v = _vec(names[3], var, C, module.running_var)
    if (v < 0).any():
        raise ValueError(f"{names[3]} has negative values")
    if batch_count is not None:
        if batch_count < 2:
            raise ValueError(f"batch_count must be >= 2 (values per channel in a training batch), got {batch_count}")
        v = v * (batch_count / (batch_count - 1))
    w = _vec(names[0], scale, C, module.weight) if scale is not None and module.weight is not None else None
    b = _vec(names[1], shift, C, module.bias) if shift is not None and module.bias is not None else None
    if scale is not None and module.weight is None and not np.allclose(np.asarray(scale, dtype=np.float64), 1.0):
        raise ValueError(f"the module has no weight (affine=False) but {names[0]} is not all ones")
    if shift is not None and module.bias is None and not np.allclose(np.asarray(shift, dtype=np.float64), 0.0):
        raise ValueError(f"the module has no bias but {names[1]} is not all zeros")
    with torch.no_grad():
        module.running_mean.copy_(m)
        module.running_var.copy_(v)
        if module.weight is not None:
            module.weight.copy_(w if w is not None else torch.ones_like(module.weight))
        if module.bias is not None:
            module.bias.copy_(b if b is not None else torch.zeros_like(module.bias))
    module.eps = float(eps)
    module.momentum = momentum
    return module


def load_keras_batchnorm(module: nn.Module, gamma: Any, beta: Any, moving_mean: Any, moving_variance: Any,
                         epsilon: float = 1e-3, momentum: float = 0.99, *,
                         batch_count: Optional[int] = None) -> nn.Module:
    """Load a Keras ``BatchNormalization`` layer's weights into ``module`` (in place; returned).

    ``momentum`` is **Keras'** (a decay, weight of the old value): the module gets
    ``momentum = 1 - momentum``. ``gamma``/``beta`` may be None (``scale``/``center``
    off). Conventions and the biased ``moving_variance``: see the module docstring.
    """
    return _load(module, gamma, beta, moving_mean, moving_variance, epsilon, momentum, batch_count,
                 ("gamma", "beta", "moving_mean", "moving_variance"))


def load_flax_batchnorm(module: nn.Module, scale: Any, bias: Any, mean: Any, var: Any,
                        epsilon: float = 1e-5, momentum: float = 0.99, *,
                        batch_count: Optional[int] = None) -> nn.Module:
    """Load a Flax ``BatchNorm``'s ``params`` (``scale``, ``bias``) and ``batch_stats``
    (``mean``, ``var``) into ``module`` (in place; returned). ``momentum`` is **Flax's**
    decay (default 0.99 -> module momentum 0.01); ``epsilon`` Flax's default 1e-5."""
    return _load(module, scale, bias, mean, var, epsilon, momentum, batch_count, ("scale", "bias", "mean", "var"))
