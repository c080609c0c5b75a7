"""InstanceNorm and GroupNorm on the shared per-channel core (:mod:`.norm`).

Both normalize each sample on its own, over groups of channels (``G = C`` for
InstanceNorm) and every spatial position, with a per-channel affine. No new
compiled code of its own but GroupNorm's per-(sample, group) fused passes in
:mod:`.fused`; otherwise the inputs are presented to the core's entry points as
``(P, C, L)`` views in which a "channel" is a (sample, channel) or a
(sample, group) pair.

Input layouts (``L`` = product of the spatial sizes, ``Cg = C / G``):

* **contiguous** ``(N, C, L)`` (NCHW memory):

  - InstanceNorm: the ``(1, N*C, L)`` view with the affine tiled per sample, in
    one fused call (:func:`.norm.forward_batch` / :func:`.norm.backward`);
    with fixed (running) statistics the plain ``(N, C, L)`` view.
  - GroupNorm: statistics on ``(1, N*G, Cg*L)`` (:func:`.norm.moments`), then
    per-(n, c) coefficients and one :func:`.norm.apply_coefficients` on
    ``(1, N*C, L)``. Backward: :func:`.norm.grad_sums` on ``(1, N*C, L)``
    against the expanded group mean, combined per group with the weights, then
    :func:`.norm.apply_coefficients2`.

* **channels-last** ``(N, L, C)`` (NHWC memory, read in place): one sample's
  ``(L, C)`` block is the ``(L, C, 1)`` view (a channel is a column) and, for
  the group statistics, the ``(L, G, Cg)`` view (a group is ``Cg`` adjacent
  columns); the same entry points run once per sample. Fixed statistics need no
  loop: the whole batch is the ``(N*L, C, 1)`` view.

Statistics are float64: ``mean``, biased ``var`` and ``rstd = 1/sqrt(var + eps)``
of shape ``(N, C)`` (InstanceNorm) or ``(N, G)`` (GroupNorm). The element
passes use the core's rounding convention: ``m`` is the mean rounded to the
input's dtype and the remainder goes into the additive coefficient, so large
offsets cancel exactly. Inputs are trusted: C-contiguous arrays of one float
dtype, ``L > 0``, ``N > 0``, ``C % G == 0``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

import numba

from . import fused, norm
from .stream import streams

__all__ = ["group_backward", "group_forward", "instance_backward", "instance_forward"]

Stats = Tuple[np.ndarray, np.ndarray, np.ndarray]


def _f64(v: Optional[np.ndarray], C: int, fill: float) -> np.ndarray:
    return np.full(C, fill) if v is None else np.asarray(v, dtype=np.float64).reshape(C)


def _tile(v: Optional[np.ndarray], N: int) -> Optional[np.ndarray]:
    return None if v is None else np.tile(np.asarray(v).reshape(-1), N)


def _sizes(x: np.ndarray, channels_last: bool) -> Tuple[int, int, int]:
    """``(N, C, L)`` of an ``(N, C, L)`` or, channels-last, ``(N, L, C)`` array."""
    if channels_last:
        N, L, C = x.shape
    else:
        N, C, L = x.shape
    return N, C, L


# --------------------------------------------------------------------------- InstanceNorm


def instance_forward(
    x: np.ndarray,
    weight: Optional[np.ndarray],
    bias: Optional[np.ndarray],
    eps: float,
    out: np.ndarray,
    channels_last: bool = False,
    mean: Optional[np.ndarray] = None,
    var: Optional[np.ndarray] = None,
) -> Stats:
    """``out = weight[c] * (x - mu) * rstd + bias[c]`` per (sample, channel).

    Without ``mean``/``var``: the instances' own statistics, returned as float64
    ``(N, C)`` arrays ``(mean, var, rstd)``. With ``(C,)`` ``mean``/``var`` (running
    statistics): those for every sample, returned as ``(C,)`` arrays.
    """
    N, C, L = _sizes(x, channels_last)
    eps = float(eps)
    if mean is not None:  # fixed statistics: one per-channel pass over the whole batch
        mean = np.ascontiguousarray(mean, dtype=np.float64)
        var = np.ascontiguousarray(var, dtype=np.float64)
        shape = (N * L, C, 1) if channels_last else (N, C, L)
        rstd = norm.forward_fixed(x.reshape(shape), mean, var, weight, bias, eps, out.reshape(shape))
        return mean, var, rstd
    if not channels_last:
        means, vars_, rstds = norm.forward_batch(
            x.reshape(1, N * C, L), _tile(weight, N), _tile(bias, N), eps, out.reshape(1, N * C, L)
        )
        return means.reshape(N, C), vars_.reshape(N, C), rstds.reshape(N, C)
    stats = np.empty((3, N, C))
    for n in range(N):
        m, v, r = norm.forward_batch(x[n].reshape(L, C, 1), weight, bias, eps, out[n].reshape(L, C, 1))
        stats[0, n], stats[1, n], stats[2, n] = m, v, r
    return stats[0], stats[1], stats[2]


def instance_backward(
    dy: np.ndarray,
    x: np.ndarray,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray],
    batch_stats: bool,
    dx: Optional[np.ndarray],
    channels_last: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """Closed-form gradients of :func:`instance_forward`: fills ``dx`` (if given) and
    returns float64 ``(dweight, dbias)`` of shape ``(C,)``.

    ``batch_stats=True``: ``mean``/``rstd`` are the ``(N, C)`` instance statistics and
    depend on ``x``; ``False``: ``(C,)`` constants (``dx = weight * rstd * dy``).
    """
    N, C, L = _sizes(x, channels_last)
    if not batch_stats:
        shape = (N * L, C, 1) if channels_last else (N, C, L)
        return norm.backward(
            dy.reshape(shape), x.reshape(shape), np.ascontiguousarray(mean, dtype=np.float64),
            np.ascontiguousarray(rstd, dtype=np.float64), weight, False, None if dx is None else dx.reshape(shape),
        )
    mean = np.ascontiguousarray(mean, dtype=np.float64).reshape(N, C)
    rstd = np.ascontiguousarray(rstd, dtype=np.float64).reshape(N, C)
    if not channels_last:
        shape = (1, N * C, L)
        dw, db = norm.backward(
            dy.reshape(shape), x.reshape(shape), mean.reshape(-1), rstd.reshape(-1), _tile(weight, N), True,
            None if dx is None else dx.reshape(shape),
        )
        return dw.reshape(N, C).sum(axis=0), db.reshape(N, C).sum(axis=0)
    dw = np.zeros(C)
    db = np.zeros(C)
    shape = (L, C, 1)
    for n in range(N):
        w_n, b_n = norm.backward(
            dy[n].reshape(shape), x[n].reshape(shape), mean[n], rstd[n], weight, True,
            None if dx is None else dx[n].reshape(shape),
        )
        dw += w_n
        db += b_n
    return dw, db


# --------------------------------------------------------------------------- GroupNorm


def _apply_coefficients(mean, rstd, weight, bias, Cg, dtype):
    """Per-(n, c) ``(m, a, s)`` in ``dtype`` with ``y = (x - m) * a + s`` (as :func:`.norm.forward_batch`)."""
    N, G = mean.shape
    C = G * Cg
    mean_c = np.repeat(mean, Cg, axis=1)
    scale = np.repeat(rstd, Cg, axis=1) * _f64(weight, C, 1.0)
    m = mean_c.astype(dtype)
    a = scale.astype(dtype)
    with np.errstate(invalid="ignore"):  # NaN/Inf statistics give NaN outputs, as torch
        s = (-(mean_c - m) * scale + _f64(bias, C, 0.0)).astype(dtype)
    return m, a, s


def _vec(v: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if v is None else np.ascontiguousarray(v).reshape(-1)


def _fused_groups(x: np.ndarray, N: int, G: int, Cg: int, L: int, channels_last: bool) -> bool:
    """The per-(sample, group) fused kernels of :mod:`.fused`: contiguous input, runs
    long enough to vectorise, a group within the cache budget, tasks for every thread."""
    return (not channels_last and L >= 16 and Cg * L * x.itemsize <= norm.FUSE_MAX_CHANNEL_BYTES
            and N * G >= 2 * numba.get_num_threads())


def group_forward(
    x: np.ndarray,
    groups: int,
    weight: Optional[np.ndarray],
    bias: Optional[np.ndarray],
    eps: float,
    out: np.ndarray,
    channels_last: bool = False,
) -> Stats:
    """GroupNorm forward into ``out``; returns float64 ``(N, G)`` ``(mean, var, rstd)``."""
    N, C, L = _sizes(x, channels_last)
    G = groups
    Cg = C // G
    if _fused_groups(x, N, G, Cg, L, channels_last):
        run = fused.group_forward_par if x.size >= norm.PARALLEL_MIN else fused.group_forward_ser
        mean, var, rstd = run(x, G, _vec(weight), _vec(bias), float(eps), out, streams(out.nbytes, out=out))
        return mean.reshape(N, G), var.reshape(N, G), rstd.reshape(N, G)
    if not channels_last:
        mean, var = norm.moments(x.reshape(1, N * G, Cg * L))
        mean, var = mean.reshape(N, G), var.reshape(N, G)
    else:
        mean = np.empty((N, G))
        var = np.empty((N, G))
        for n in range(N):
            mean[n], var[n] = norm.moments(x[n].reshape(L, G, Cg))
    rstd = norm.inv_std(var, eps)
    m, a, s = _apply_coefficients(mean, rstd, weight, bias, Cg, x.dtype)
    if not channels_last:
        norm.apply_coefficients(x.reshape(1, N * C, L), m.reshape(-1), a.reshape(-1), s.reshape(-1),
                                out.reshape(1, N * C, L))
    else:
        for n in range(N):
            norm.apply_coefficients(x[n].reshape(L, C, 1), m[n], a[n], s[n], out[n].reshape(L, C, 1))
    return mean, var, rstd


def group_backward(
    dy: np.ndarray,
    x: np.ndarray,
    groups: int,
    mean: np.ndarray,
    rstd: np.ndarray,
    weight: Optional[np.ndarray],
    dx: Optional[np.ndarray],
    channels_last: bool = False,
) -> Tuple[np.ndarray, np.ndarray]:
    """Closed-form gradients of :func:`group_forward`: fills ``dx`` (if given) and
    returns float64 ``(dweight, dbias)`` of shape ``(C,)``.

    Per (n, c): ``s1 = sum(dy)``, ``s2 = sum(dy * (x - mu))``; per group, with
    ``M = Cg*L`` values: ``S1 = sum_c w_c s1``, ``S2 = sum_c w_c s2`` and
    ``dx = rstd*w_c*dy - rstd^3*S2/M * (x - mu) - rstd*S1/M``;
    ``dweight = sum_n rstd*s2``, ``dbias = sum_n s1``.
    """
    N, C, L = _sizes(x, channels_last)
    G = groups
    Cg = C // G
    dtype = x.dtype
    mean = np.asarray(mean, dtype=np.float64).reshape(N, G)
    rstd = np.asarray(rstd, dtype=np.float64).reshape(N, G)
    if dx is not None and _fused_groups(x, N, G, Cg, L, channels_last):
        run = fused.group_backward_par if x.size >= norm.PARALLEL_MIN else fused.group_backward_ser
        s1 = np.empty((N, C))
        s2r = np.empty((N, C))  # rstd * s2
        nt = streams(dx.nbytes, gradient=True, out=dx)
        run(dy, x, G, mean.reshape(-1), rstd.reshape(-1), _vec(weight), dx, s1, s2r, nt)
        return s2r.sum(axis=0), s1.sum(axis=0)
    mean_c = np.repeat(mean, Cg, axis=1)
    rstd_c = np.repeat(rstd, Cg, axis=1)
    if not channels_last:
        shape = (1, N * C, L)
        s1, s2 = norm.grad_sums(dy.reshape(shape), x.reshape(shape), mean_c.reshape(-1))
        s1, s2 = s1.reshape(N, C), s2.reshape(N, C)
    else:
        shape = (L, C, 1)
        s1 = np.empty((N, C))
        s2 = np.empty((N, C))
        for n in range(N):
            s1[n], s2[n] = norm.grad_sums(dy[n].reshape(shape), x[n].reshape(shape), mean_c[n])
    dweight = (s2 * rstd_c).sum(axis=0)
    dbias = s1.sum(axis=0)
    if dx is None:
        return dweight, dbias
    w = _f64(weight, C, 1.0)
    M = Cg * L
    S1 = (s1 * w).reshape(N, G, Cg).sum(axis=2)
    S2 = (s2 * w).reshape(N, G, Cg).sum(axis=2)
    with np.errstate(invalid="ignore", over="ignore"):
        bg = -(rstd ** 3) * S2 / M
        b = np.repeat(bg, Cg, axis=1)
        m = mean_c.astype(dtype)
        k = np.repeat(-rstd * S1 / M, Cg, axis=1) + b * (m - mean_c)  # the rounding of m goes to k
    a = (rstd_c * w).astype(dtype)
    b = b.astype(dtype)
    k = k.astype(dtype)
    if not channels_last:
        norm.apply_coefficients2(dy.reshape(shape), x.reshape(shape), a.reshape(-1), b.reshape(-1), m.reshape(-1),
                                 k.reshape(-1), dx.reshape(shape))
    else:
        for n in range(N):
            norm.apply_coefficients2(dy[n].reshape(shape), x[n].reshape(shape), a[n], b[n], m[n], k[n],
                                     dx[n].reshape(shape))
    return dweight, dbias
