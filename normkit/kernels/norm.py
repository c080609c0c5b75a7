"""Per-channel normalization over a ``(P, C, L)`` view: statistics, apply, backward.

This is the shared core of the batch-normalization family on the CPU. A layer
only has to present its input as a C-contiguous ``(P, C, L)`` array in which
"channel" ``c`` owns ``x[:, c, :]``:

* BatchNorm, NCHW:          ``(N, C, H*W)``
* BatchNorm, channels-last: ``(N*H*W, C, 1)``
* InstanceNorm / GroupNorm: one "channel" per (sample, channel) or (sample, group)

Contracts (the same as :mod:`normkit.reference`): ``mean`` and the biased
``var`` are float64 ``(C,)``; ``y = w * (x - mean) / sqrt(var + eps) + b``;
the backward returns the closed-form ``dx``, ``dweight = sum(dy * x_hat)`` and
``dbias = sum(dy)``. Arrays are trusted: shapes, dtypes and contiguity are
checked once by the public front ends.

Each public function is one call into compiled code (the statistics, the
per-channel coefficients and the element pass together), parallel above
:data:`PARALLEL_MIN` elements and serial below, where a thread-pool launch
would cost more than the work.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

import numba

from . import elementwise, reduce
from ._jit import helper
from .coefs import backward_coefs, forward_coefs
from .elementwise import affine2_par, affine2_ser, affine_par, affine_ser
from .fused import channel_backward_par, channel_backward_ser, channel_forward_par, channel_forward_ser
from .reduce import ROW_MIN, channel_shift, finish_moments, sums_par, sums_ser

__all__ = [
    "PARALLEL_MIN", "backward", "forward_batch", "forward_fixed", "grad_input", "grad_sums", "inv_std", "moments",
]


def inv_std(var: np.ndarray, eps: float) -> np.ndarray:
    """``1 / sqrt(var + eps)`` in float64 (NaN/Inf pass through silently)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)

#: Inputs with fewer elements run single-threaded.
PARALLEL_MIN = 1 << 15
#: Largest channel (bytes) processed by the per-channel fused passes (:mod:`.fused`):
#: about half a core's L2 cache on current x86 server parts.
FUSE_MAX_CHANNEL_BYTES = 1 << 20


def _config(x: np.ndarray):
    return (
        x.size >= PARALLEL_MIN,
        (reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS, reduce.COL_TASKS_MAX, elementwise.ROW_BLOCK_ELEMS,
         FUSE_MAX_CHANNEL_BYTES, numba.get_num_threads()),
    )


@helper
def _sums(u, v, us, vs, par, cfg):
    C = u.shape[1]
    s1 = np.empty(C)
    s2 = np.empty(C)
    chunk, block, task_elems, tasks_max = cfg[0], cfg[1], cfg[2], cfg[3]
    if par:
        sums_par(u, v, us, vs, s1, s2, chunk, block, task_elems, tasks_max)
    else:
        sums_ser(u, v, us, vs, s1, s2, chunk, block, task_elems, tasks_max)
    return s1, s2


@helper
def _apply(x, mean, rstd, w, b, out, par, cfg):
    """out = w * (x - mean) * rstd + b, as (x - m) * a + s (see .coefs)."""
    C = x.shape[1]
    m = np.empty(C, x.dtype)
    a = np.empty(C, x.dtype)
    s = np.empty(C, x.dtype)
    co = np.empty(3, x.dtype)
    for c in range(C):
        forward_coefs(mean[c], rstd[c], w, b, c, co)
        m[c] = co[0]
        a[c] = co[1]
        s[c] = co[2]
    if par:
        affine_par(x, m, a, s, out, cfg[0], cfg[4])
    else:
        affine_ser(x, m, a, s, out, cfg[0], cfg[4])


@helper
def _fusable(x, cfg):
    """Per-channel fusion: long runs, a channel within the cache budget (``cfg[5]`` bytes),
    at least two channels for each of the ``cfg[6]`` threads."""
    P, C, L = x.shape
    return L >= ROW_MIN and P * L * x.itemsize <= cfg[5] and C >= 2 * cfg[6]


@helper
def _moments(x, par, cfg):
    P, C, L = x.shape
    shift = np.empty(C)
    for c in range(C):
        shift[c] = channel_shift(x, c)
    s1, s2 = _sums(x, x, shift, shift, par, cfg)
    mean = np.empty(C)
    var = np.empty(C)
    for c in range(C):
        mean[c], var[c] = finish_moments(s1[c], s2[c], shift[c], P * L)
    return mean, var


@helper
def _forward_batch(x, w, b, eps, out, par, cfg):
    if _fusable(x, cfg):
        C = x.shape[1]
        mean = np.empty(C)
        var = np.empty(C)
        rstd = np.empty(C)
        if par:
            channel_forward_par(x, w, b, eps, out, mean, var, rstd)
        else:
            channel_forward_ser(x, w, b, eps, out, mean, var, rstd)
        return mean, var, rstd
    mean, var = _moments(x, par, cfg)
    rstd = 1.0 / np.sqrt(var + eps)
    _apply(x, mean, rstd, w, b, out, par, cfg)
    return mean, var, rstd


@helper
def _forward_fixed(x, mean, var, w, b, eps, out, par, cfg):
    C = x.shape[1]
    rstd = np.empty(C)
    for c in range(C):
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)
    _apply(x, mean, rstd, w, b, out, par, cfg)
    return rstd


@helper
def _grad_input(dy, x, mean, rstd, w, s1, s2, n, batch_stats, dx, par, cfg):
    C = x.shape[1]
    a = np.empty(C, x.dtype)
    bb = np.empty(C, x.dtype)
    m = np.empty(C, x.dtype)
    k = np.empty(C, x.dtype)
    co = np.empty(4, x.dtype)
    for c in range(C):
        backward_coefs(mean[c], rstd[c], w, c, s1[c], s2[c], n, batch_stats, co)
        a[c] = co[0]
        bb[c] = co[1]
        m[c] = co[2]
        k[c] = co[3]
    chunk, row_block = cfg[0], cfg[4]
    if batch_stats:
        if par:
            affine2_par(dy, x, a, bb, m, k, dx, chunk, row_block)
        else:
            affine2_ser(dy, x, a, bb, m, k, dx, chunk, row_block)
    else:  # dx = g * dy: no need to read x
        if par:
            affine_par(dy, k, a, bb, dx, chunk, row_block)
        else:
            affine_ser(dy, k, a, bb, dx, chunk, row_block)


@helper
def _backward(dy, x, mean, rstd, w, batch_stats, dx, need_dx, par, cfg):
    P, C, L = x.shape
    if _fusable(x, cfg):
        dw = np.empty(C)
        db = np.empty(C)
        if par:
            channel_backward_par(dy, x, mean, rstd, w, batch_stats, dx, need_dx, dw, db)
        else:
            channel_backward_ser(dy, x, mean, rstd, w, batch_stats, dx, need_dx, dw, db)
        return dw, db
    s1, s2 = _sums(dy, x, np.zeros(C), mean, par, cfg)
    if need_dx:
        _grad_input(dy, x, mean, rstd, w, s1, s2, P * L, batch_stats, dx, par, cfg)
    return s2 * rstd, s1


def forward_batch(
    x: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray], eps: float, out: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training forward: batch statistics, then ``out = w * (x - mean) * rstd + b``.

    ``x`` is ``(P, C, L)`` with ``P*L > 0``; ``weight``/``bias`` are ``(C,)`` float
    vectors or None. Returns float64 ``(mean, var, rstd)`` (``var`` biased).
    Statistics are float64 one-pass shifted sums (:mod:`.reduce`).
    """
    par, cfg = _config(x)
    return _forward_batch(x, weight, bias, float(eps), out, par, cfg)


def forward_fixed(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, weight: Optional[np.ndarray],
    bias: Optional[np.ndarray], eps: float, out: np.ndarray,
) -> np.ndarray:
    """Forward with given statistics (inference): returns float64 ``rstd``."""
    par, cfg = _config(x)
    return _forward_fixed(x, mean, var, weight, bias, float(eps), out, par, cfg)


def backward(
    dy: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, weight: Optional[np.ndarray],
    batch_stats: bool, dx: Optional[np.ndarray],
) -> Tuple[np.ndarray, np.ndarray]:
    """Closed-form gradients: fills ``dx`` (if given) and returns float64 ``(dweight, dbias)``.

    One reduction pass gives ``s1 = sum(dy)`` and ``s2 = sum(dy * (x - mean))``
    together; then, with ``n`` values per channel and ``g = weight * rstd``:

    * ``batch_stats=True`` (training): ``dx = g*dy - g*rstd^2*s2/n * (x - mean) - g*s1/n``;
    * ``batch_stats=False`` (fixed statistics): ``dx = g * dy``.

    ``dweight = rstd * s2``, ``dbias = s1``. ``mean``/``rstd`` are float64 ``(C,)``.
    """
    par, cfg = _config(x)
    need_dx = dx is not None
    return _backward(
        dy, x, mean, rstd, weight, bool(batch_stats),
        dx if need_dx else np.empty((0, 0, 0), x.dtype), need_dx, par, cfg,
    )


def moments(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 mean and biased variance of a ``(P, C, L)`` view with ``P*L > 0``."""
    par, cfg = _config(x)
    return _moments(x, par, cfg)


def grad_sums(dy: np.ndarray, x: np.ndarray, mean: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``: the backward's one reduction.

    Summed over processes, these give the global batch's backward (SyncBatchNorm).
    """
    par, cfg = _config(x)
    return _sums(dy, x, np.zeros(x.shape[1]), mean, par, cfg)


def grad_input(
    dy: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, weight: Optional[np.ndarray],
    sum_dy: np.ndarray, sum_dy_xmu: np.ndarray, n: int, dx: np.ndarray,
) -> np.ndarray:
    """``dx = g*dy - g*rstd^2*sum_dy_xmu/n * (x - mean) - g*sum_dy/n`` with ``g = weight*rstd``.

    The input gradient of training-mode normalization given the reductions of
    :func:`grad_sums` over ``n`` values per channel (possibly more than this
    view holds: the global batch of SyncBatchNorm).
    """
    par, cfg = _config(x)
    _grad_input(dy, x, mean, rstd, weight, sum_dy, sum_dy_xmu, float(n), True, dx, par, cfg)
    return dx


def apply_coefficients(x: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = (x - m[c]) * a[c] + b[c]`` over a ``(P, C, L)`` view (vectors in ``x``'s dtype).

    The element pass every per-channel normalization ends in; layers that compute
    their own coefficients (GroupNorm, Batch Renormalization) call it directly.
    """
    par, cfg = _config(x)
    if par:
        affine_par(x, m, a, b, out, cfg[0], cfg[4])
    else:
        affine_ser(x, m, a, b, out, cfg[0], cfg[4])
    return out


def apply_coefficients2(
    dy: np.ndarray, x: np.ndarray, a: np.ndarray, b: np.ndarray, m: np.ndarray, k: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """``out = a[c] * dy + b[c] * (x - m[c]) + k[c]`` (vectors in ``x``'s dtype): the backward's element pass."""
    par, cfg = _config(x)
    if par:
        affine2_par(dy, x, a, b, m, k, out, cfg[0], cfg[4])
    else:
        affine2_ser(dy, x, a, b, m, k, out, cfg[0], cfg[4])
    return out
