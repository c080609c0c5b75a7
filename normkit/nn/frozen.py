"""Frozen batch normalization: fixed statistics and affine, the same output in train and eval.

``y = weight * (x - running_mean) / sqrt(running_var + eps) + bias`` per channel
(dim 1), whatever the module's training flag: nothing is ever updated. The
statistics are buffers; the affine is a pair of buffers too, or trainable
Parameters with ``trainable_affine=True``. The state_dict keys are BatchNorm's
(``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``), so BatchNorm checkpoints load into it and back.

:func:`freeze` turns every BatchNorm of a model (torch's, normkit's, their
subclasses, SyncBatchNorm) into the matching frozen layer carrying its values;
:func:`unfreeze` turns them back.

CPU float32/float64 run on the kernels (``forward_fixed``); the backward is the
closed form ``dx = dy * weight / sigma`` (one pass over ``dy``, ``x`` not read)
and, when the affine is trainable, ``dweight = sum(dy * x_hat)``,
``dbias = sum(dy)``. Other devices and dtypes use torch operations.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy

from .. import _checks, kernels
from . import _torch_impl
from . import batchnorm as _bn
from . import functional as F
from ._bridge import as_view, new_like_view, param_grad
from ._bridge import numpy_view as _np

__all__ = [
    "FrozenBatchNorm", "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d", "KernelFrozenBatchNorm",
    "freeze", "frozen_batch_norm", "unfreeze",
]


def _kernel_forward(x, running_mean, running_var, weight, bias, eps):
    x3, view = as_view(x, 1)
    y, y3 = new_like_view(x.shape, view, x.dtype)
    rstd = kernels.forward_fixed(x3, _np(running_mean), _np(running_var), _np(weight), _np(bias), eps, y3)
    return y, rstd, view


class KernelFrozenBatchNorm(torch.autograd.Function):
    """``y = weight * (x - running_mean) * rstd + bias`` with constant statistics, differentiable."""

    @staticmethod
    def forward(ctx, x, running_mean, running_var, weight, bias, eps: float):
        y, rstd, view = _kernel_forward(x, running_mean, running_var, weight, bias, eps)
        mean64 = np.ascontiguousarray(_np(running_mean), dtype=np.float64)
        ctx.save_for_backward(x, weight, torch.from_numpy(mean64), torch.from_numpy(rstd))
        ctx.view = view
        ctx.eps = eps
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, rstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        dx = dw = db = None
        if torch.is_grad_enabled():  # create_graph=True: differentiable torch operations
            dx, dw, db = _torch_impl.normalize_backward(dy, x, weight, ctx.eps, False, mean, rstd)
        else:
            dy3, view = as_view(dy, 1, like=ctx.view)
            dx3 = None
            if need_x:
                dx, dx3 = new_like_view(x.shape, view, x.dtype)
            if need_w or need_b:  # one reduction pass for the sums, dx in the same call
                x3, _ = as_view(x, 1, like=view)
                dw, db = kernels.backward(dy3, x3, mean.numpy(), rstd.numpy(), _np(weight), False, dx3)
                dw = param_grad(dw, weight.dtype) if need_w else None
                db = param_grad(db, ctx.bias_dtype) if need_b else None
            elif need_x:  # dx = dy * weight * rstd: one element pass, x is not read
                scale = rstd.numpy() if weight is None else rstd.numpy() * _np(weight)
                zeros = np.zeros(view.C, dx3.dtype)
                kernels.apply_coefficients(dy3, zeros, scale.astype(dx3.dtype), zeros, dx3)
        return (dx if need_x else None, None, None, dw if need_w else None, db if need_b else None, None)


def frozen_batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    eps: float = 1e-5,
    *,
    layer: str = "frozen_batch_norm",
) -> torch.Tensor:
    """``weight * (x - running_mean) / sqrt(running_var + eps) + bias`` over dim 1 of ``(N, C, *)``.

    The statistics are constants (no gradient, never updated); gradients flow
    to ``input`` (``dx = dy * weight / sigma``) and to ``weight``/``bias`` when
    they require it. Shapes: every vector ``(C,)``; the output keeps the
    input's shape, dtype and memory format.
    """
    if running_mean is None or running_var is None:
        raise ValueError(f"{layer} expected running_mean and running_var tensors, got None")
    F.check_input(layer, input, False, weight, bias, running_mean, running_var)
    if input.numel() == 0:
        return F.batch_norm(input, running_mean, running_var, weight, bias, False, 0.0, eps, layer=layer)
    if F.uses_kernels(input, weight, bias):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
            return KernelFrozenBatchNorm.apply(input, running_mean, running_var, weight, bias, eps)
        return _kernel_forward(input, running_mean, running_var, weight, bias, eps)[0]
    return _torch_impl.normalize(input, running_mean.detach(), running_var.detach(), weight, bias, eps)


class FrozenBatchNorm(nn.Module):
    """Frozen batch normalization over dim 1 of an ``(N, C, *)`` input of any rank.

    ``y = weight * (x - running_mean) / sqrt(running_var + eps) + bias``, in
    training and in eval alike; nothing is updated. ``running_mean`` (zeros),
    ``running_var`` (ones) and ``num_batches_tracked`` (0, never changed) are
    buffers; ``weight`` (ones) and ``bias`` (zeros) are buffers too, or
    Parameters with ``trainable_affine=True``; absent with ``affine=False``
    (``bias`` alone absent with ``bias=False``, as torch's BatchNorm).
    The state_dict keys are BatchNorm's: its checkpoints load both ways.

    Args: ``num_features`` (C), ``eps=1e-5``, ``affine=True``,
    ``trainable_affine=False``, ``device``, ``dtype``, keyword ``bias=True``.
    The 1d/2d/3d subclasses check the input's rank as the BatchNorm they mirror.
    """

    _input_dims: Optional[Sequence[int]] = None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        affine: bool = True,
        trainable_affine: bool = False,
        device: Any = None,
        dtype: Any = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        name = f"{type(self).__name__}({num_features})"
        if trainable_affine and not affine:
            raise ValueError(f"{name} expected affine=True for trainable_affine=True, got affine=False")
        self.num_features = num_features
        self.eps = _checks.check_eps(name, eps)
        self.affine = affine
        self.trainable_affine = trainable_affine
        factory = dict(device=device, dtype=dtype)
        tensors = {
            "weight": torch.ones(num_features, **factory) if affine else None,
            "bias": torch.zeros(num_features, **factory) if affine and bias else None,
        }
        for key, t in tensors.items():
            if trainable_affine:
                self.register_parameter(key, None if t is None else nn.Parameter(t))
            else:
                self.register_buffer(key, t)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long, device=device))

    @property
    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        name = self._layer_name
        if self._input_dims is not None:
            _checks.check_ndim(name, tuple(input.shape), self._input_dims)
        if input.dim() >= 2:
            _checks.check_channels(name, tuple(input.shape), 1, self.num_features)
        return frozen_batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, self.eps, layer=name
        )

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}, affine={self.affine}"
        if self.affine and self.bias is None:
            text += ", bias=False"
        return text + (", trainable_affine=True" if self.trainable_affine else "")


class FrozenBatchNorm1d(FrozenBatchNorm):
    __doc__ = FrozenBatchNorm.__doc__.replace("of any rank", "(N, C) or (N, C, L)")
    _input_dims = (2, 3)


class FrozenBatchNorm2d(FrozenBatchNorm):
    __doc__ = FrozenBatchNorm.__doc__.replace("of any rank", "(N, C, H, W)")
    _input_dims = (4,)


class FrozenBatchNorm3d(FrozenBatchNorm):
    __doc__ = FrozenBatchNorm.__doc__.replace("of any rank", "(N, C, D, H, W)")
    _input_dims = (5,)


# --------------------------------------------------------------------------- freeze / unfreeze

_FROZEN_FOR = (
    (nn.BatchNorm1d, FrozenBatchNorm1d), (nn.BatchNorm2d, FrozenBatchNorm2d), (nn.BatchNorm3d, FrozenBatchNorm3d),
)
_FROZEN_BY_DIM = {1: FrozenBatchNorm1d, 2: FrozenBatchNorm2d, 3: FrozenBatchNorm3d}
_UNFROZEN_FOR = {
    FrozenBatchNorm1d: _bn.BatchNorm1d, FrozenBatchNorm2d: _bn.BatchNorm2d, FrozenBatchNorm3d: _bn.BatchNorm3d,
}
_AFFINE = ("weight", "bias")
_BN_TENSORS = _AFFINE + ("running_mean", "running_var", "num_batches_tracked")


def _check_freezable(path: str, m: nn.Module) -> None:
    what = f"freeze: {type(m).__name__} at {path or '<model>'!r}"
    if any(is_lazy(t) for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False))):
        raise ValueError(f"{what} expected initialized parameters, got a lazy module; run one forward first")
    if getattr(m, "running_mean", None) is None or getattr(m, "running_var", None) is None:
        raise ValueError(
            f"{what} expected running statistics to freeze, got none (track_running_stats=False)"
        )


def _frozen_class(m: _BatchNorm) -> Type[FrozenBatchNorm]:
    """By the BatchNorm's rank: its class, else a ``bn_dim`` it remembers (SyncBatchNorm), else any rank."""
    cls = next((f for b, f in _FROZEN_FOR if isinstance(m, b)), None)
    return cls or _FROZEN_BY_DIM.get(getattr(m, "bn_dim", None), FrozenBatchNorm)


def _to_frozen(m: _BatchNorm, trainable_affine: bool) -> FrozenBatchNorm:
    affine = m.weight is not None
    trainable = trainable_affine and affine
    rm = m.running_mean
    new = _frozen_class(m)(
        m.num_features, m.eps, affine, trainable, device=rm.device, dtype=rm.dtype, bias=m.bias is not None
    )
    for key in _AFFINE:
        p = getattr(m, key)
        if p is not None:  # trainable: the very Parameters, so an optimizer built on them keeps working
            setattr(new, key, p if trainable else p.detach().clone())
    new.running_mean, new.running_var = m.running_mean, m.running_var
    if m.num_batches_tracked is not None:
        new.num_batches_tracked = m.num_batches_tracked
    new.train(m.training)
    # where it came from, for unfreeze: its class, its plain attributes (eps,
    # momentum, ... -- not in the state_dict), any extra buffers (e.g.
    # renorm_step) and whether each affine Parameter required a gradient
    config = {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "training"}
    extra = {
        k: (t, k not in m._non_persistent_buffers_set) for k, t in m._buffers.items() if k not in _BN_TENSORS
    }
    grads = {k: getattr(m, k).requires_grad for k in _AFFINE if getattr(m, k) is not None}
    new._frozen_from = (type(m), config, extra, grads)
    return new


def _default_class(f: FrozenBatchNorm) -> type:
    """normkit's BatchNorm of the frozen layer's rank, for a layer that freeze() did not make."""
    cls = next((b for fr, b in _UNFROZEN_FOR.items() if isinstance(f, fr)), None)
    if cls is None:
        raise ValueError(
            f"unfreeze: {f._layer_name} was not made by freeze() and has no fixed rank, so the BatchNorm "
            f"class to restore is unknown; use FrozenBatchNorm1d/2d/3d"
        )
    return cls


def _to_batchnorm(f: FrozenBatchNorm) -> nn.Module:
    origin: Optional[Tuple[type, Dict[str, Any], Dict[str, Any], Dict[str, bool]]] = getattr(f, "_frozen_from", None)
    device = f.running_mean.device
    if origin is None:
        new = _default_class(f)(f.num_features, f.eps, affine=f.affine, device=device, dtype=f.running_mean.dtype)
        grads: Dict[str, bool] = {}
    else:
        cls, config, extra, grads = origin
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.__dict__.update(config)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            new.register_buffer(name, None)
        for name, (t, persistent) in extra.items():
            new.register_buffer(name, None if t is None else t.to(device), persistent=persistent)
    for key in _AFFINE:
        t = getattr(f, key)
        if t is None:
            new.register_parameter(key, None)
        elif isinstance(t, nn.Parameter):  # trainable: the very same Parameter
            new.register_parameter(key, t)
        else:
            new.register_parameter(key, nn.Parameter(t.detach().clone(), requires_grad=grads.get(key, True)))
    new.running_mean, new.running_var, new.num_batches_tracked = f.running_mean, f.running_var, f.num_batches_tracked
    new.train(f.training)
    return new


def _replace(model: nn.Module, pick, make) -> nn.Module:
    """Replace every module for which ``pick`` is true by ``make(module)``, in place;
    a module shared at several places becomes one shared replacement."""
    done: Dict[int, nn.Module] = {}

    def visit(m: nn.Module) -> nn.Module:
        if id(m) in done:
            return done[id(m)]
        if pick(m):
            new = make(m)
        else:
            for name, child in list(m._modules.items()):  # named_children() would skip repeats
                if child is None:
                    continue
                new_child = visit(child)
                if new_child is not child:
                    setattr(m, name, new_child)
            new = m
        done[id(m)] = new
        return new

    return visit(model)


def freeze(model: nn.Module, *, trainable_affine: bool = False) -> nn.Module:
    """Replace every BatchNorm in ``model`` by a frozen one carrying its values, in place.

    Every instance of torch's ``_BatchNorm`` is converted: ``torch.nn`` and
    ``normkit.nn`` BatchNorm1d/2d/3d and their subclasses (BatchRenorm,
    GhostBatchNorm) become FrozenBatchNorm1d/2d/3d; SyncBatchNorm becomes the
    one of the rank it remembers (``bn_dim``, set by normkit's
    ``convert_sync_batchnorm``) or else the any-rank :class:`FrozenBatchNorm`. Running statistics are the same tensors;
    the affine becomes buffers (copies), or with ``trainable_affine=True``
    stays the very same Parameters. The original class and its settings are
    remembered for :func:`unfreeze`. Returns ``model`` (or the new layer if
    ``model`` is itself a BatchNorm). A layer without running statistics or a
    lazy one not yet initialized is refused before anything changes.
    """
    for path, m in model.named_modules():
        if isinstance(m, _BatchNorm):
            _check_freezable(path, m)
    return _replace(model, lambda m: isinstance(m, _BatchNorm), lambda m: _to_frozen(m, trainable_affine))


def unfreeze(model: nn.Module) -> nn.Module:
    """Replace every frozen layer in ``model`` by a trainable BatchNorm carrying its values, in place.

    A layer made by :func:`freeze` becomes an instance of the class it came from,
    with the same settings (eps, momentum, ...) and extra buffers; any other
    FrozenBatchNorm1d/2d/3d becomes :class:`normkit.nn.BatchNorm1d`/``2d``/``3d``
    (momentum 0.1). Values are those the frozen layer holds now; statistics are
    the same tensors, a buffer affine becomes new Parameters (trainable ones stay
    the same objects). Returns ``model`` (or the new layer).
    """
    for m in model.modules():  # refuse before anything changes
        if isinstance(m, FrozenBatchNorm) and getattr(m, "_frozen_from", None) is None:
            _default_class(m)
    return _replace(model, lambda m: isinstance(m, FrozenBatchNorm), _to_batchnorm)
