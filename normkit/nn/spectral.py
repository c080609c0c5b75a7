"""Spectral normalization (Miyato et al. 2018) as a ``torch.nn.utils.parametrize`` parametrization.

The weight ``W`` is seen as a matrix ``W_mat`` of shape ``(W.shape[dim], rest)``
(``dim`` moved first, the other dims flattened: a conv weight ``(out, in, kh, kw)``
gives ``(out, in*kh*kw)``; ConvTranspose uses ``dim=1``) and replaced by

.. math::

    W_{SN} = W / \\sigma,\\qquad \\sigma = u^H W_{mat} v \\approx \\sigma_{max}(W_{mat})

where ``u`` and ``v`` are estimates of the leading left and right singular
vectors, kept as persistent buffers and refined by the power iteration

    ``u <- normalize(W_mat v)``,  ``v <- normalize(W_mat^H u)``  (``normalize(z) = z / max(||z||, eps)``)

``n_power_iterations`` times per forward in training mode, none in eval (so
eval is deterministic and leaves the buffers alone). ``u`` and ``v`` are
constants for autograd. At construction ``u``, ``v`` are drawn from N(0, 1),
normalized, and refined by 15 iterations. A 1-D weight is simply divided by
its norm. These are exactly the semantics, buffer names (``_u``, ``_v``) and
random draws of ``torch.nn.utils.parametrizations.spectral_norm``: state_dicts
load both ways, and with the same seed both start from the same vectors.
"""

from __future__ import annotations

import math
import operator
from typing import Optional

import torch
import torch.nn.functional as TF
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["SpectralNorm", "spectral_norm"]


class SpectralNorm(nn.Module):
    """The parametrization ``W -> W / sigma`` (see the module docstring).

    Args: ``weight`` (the tensor to normalize, used for shapes and to start the
    power iteration), ``n_power_iterations=1`` (per training forward, >= 1),
    ``dim=0`` (the dim of ``weight`` that becomes the matrix rows),
    ``eps=1e-12`` (floor of the norms in ``normalize``).
    Buffers (weights with 2+ dims): ``_u`` ``(weight.shape[dim],)`` and ``_v`` ``(rest,)``.
    """

    def __init__(self, weight: Tensor, n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12) -> None:
        super().__init__()
        ndim = weight.ndim
        try:
            n_iter = operator.index(n_power_iterations)
        except TypeError:
            n_iter = 0
        if isinstance(n_power_iterations, bool) or n_iter < 1:
            raise ValueError(
                f"spectral_norm expected n_power_iterations to be an integer >= 1, got {n_power_iterations!r}"
            )
        if not (isinstance(dim, int) and -ndim <= dim < ndim):
            raise IndexError(
                f"spectral_norm expected dim in [{-ndim}, {ndim - 1}] for a weight of shape "
                f"{tuple(weight.shape)}, got {dim!r}"
            )
        if not (float(eps) >= 0.0 and math.isfinite(float(eps))):
            raise ValueError(f"spectral_norm expected eps >= 0 and finite, got {eps}")
        self.dim = dim % ndim
        self.eps = float(eps)
        self.n_power_iterations = n_iter
        if ndim > 1:
            mat = self._matrix(weight)
            h, w = mat.shape
            u = mat.new_empty(h).normal_(0, 1)
            v = mat.new_empty(w).normal_(0, 1)
            self.register_buffer("_u", TF.normalize(u, dim=0, eps=self.eps))
            self.register_buffer("_v", TF.normalize(v, dim=0, eps=self.eps))
            self._power_method(mat, 15)

    def _matrix(self, weight: Tensor) -> Tensor:
        """``weight`` as ``(weight.shape[dim], rest)``: ``dim`` first, the others flattened in order."""
        if self.dim != 0:
            weight = weight.permute(self.dim, *(d for d in range(weight.dim()) if d != self.dim))
        return weight.flatten(1)

    @torch.no_grad()
    def _power_method(self, mat: Tensor, n_iterations: int) -> None:
        # In place (out=): buffers broadcast to replicas (DataParallel) share storage with the original.
        for _ in range(n_iterations):
            self._u = TF.normalize(torch.mv(mat, self._v), dim=0, eps=self.eps, out=self._u)
            self._v = TF.normalize(torch.mv(mat.mH, self._u), dim=0, eps=self.eps, out=self._v)

    def forward(self, weight: Tensor) -> Tensor:
        if weight.ndim == 1:
            return TF.normalize(weight, dim=0, eps=self.eps)
        mat = self._matrix(weight)
        if self.training:
            self._power_method(mat, self.n_power_iterations)
        # clones: a later forward's in-place update must not disturb this one's graph
        u = self._u.clone(memory_format=torch.contiguous_format)
        v = self._v.clone(memory_format=torch.contiguous_format)
        sigma = torch.vdot(u, torch.mv(mat, v))
        return weight / sigma

    def right_inverse(self, value: Tensor) -> Tensor:
        """Assigning ``module.weight = W`` stores ``W`` itself as the unnormalized weight."""
        return value

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_power_iterations={self.n_power_iterations}, eps={self.eps}"


def spectral_norm(
    module: nn.Module,
    name: str = "weight",
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    dim: Optional[int] = None,
) -> nn.Module:
    """Register :class:`SpectralNorm` on ``module.<name>`` and return ``module``.

    ``dim`` defaults to 1 for ConvTranspose1d/2d/3d (their weight is
    ``(in, out, ...)``) and 0 otherwise. The unnormalized weight lives at
    ``module.parametrizations.<name>.original``; the buffers at
    ``module.parametrizations.<name>[0]._u`` / ``._v``. Remove with
    ``torch.nn.utils.parametrize.remove_parametrizations(module, name)``.
    Nothing is registered if an argument is refused.
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        tensors = [n for n, _ in module.named_parameters(recurse=False)]
        tensors += [n for n, _ in module.named_buffers(recurse=False)]
        raise ValueError(
            f"spectral_norm expected {type(module).__name__} to have a parameter or buffer named {name!r}, "
            f"got {type(weight).__name__ if weight is not None else 'none'}; its tensors are {tensors}"
        )
    if dim is None:
        dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    parametrize.register_parametrization(module, name, SpectralNorm(weight, n_power_iterations, dim, eps))
    return module
