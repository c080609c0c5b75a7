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

Each public function is one call into compiled code: the per-channel fused
passes of :mod:`.fused` when a channel fits in cache, else a two-pass
orchestration (statistics, coefficients, element pass) from this module. Every
compiled entry point exists in a parallel flavour, used above
:data:`PARALLEL_MIN` elements, and a serial one below, where a thread-pool
launch would cost more than the work; each is compiled only when first used.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numba
import numpy as np

from . import elementwise, reduce, stream
from ._jit import helper, twin
from .coefs import backward_channels, forward_coefs
from .act import act_forward
from .elementwise import affine2_par, affine2_ser, affine_par, affine_ser
from .fused import (
    block_backward_par, block_backward_ser, block_forward_par, block_forward_ser, channel_backward_par,
    channel_backward_ser,
)
from .machine import VENDOR
from .reduce import ROW_MIN, channel_shift, finish_moments, sums_par, sums_ser
from .stream import streams

__all__ = [
    "FUSE_MAX_CHANNEL_BYTES", "PARALLEL_MIN", "apply_coefficients", "apply_coefficients2", "backward",
    "forward_batch", "forward_fixed", "grad_input", "grad_sums", "inv_std", "moments", "short_run_limits",
]

#: Inputs with fewer elements run single-threaded.
PARALLEL_MIN = 1 << 15
#: Largest channel (bytes) processed by the per-channel fused passes (:mod:`.fused`):
#: about half a core's L2 cache on current x86 server parts.
FUSE_MAX_CHANNEL_BYTES = 1 << 20
#: No limit on the run length (see :func:`short_run_limits`).
ANY_RUN = 1 << 62


def short_run_limits(vendor: str) -> Tuple[int, int]:
    """The longest runs ``L`` for which the training forward and the backward take the
    blocked forms (:func:`.fused.block_forward_par`, :func:`.fused.block_backward_par`:
    blocks of whole channels whose rows are walked as runs of segments) rather than
    the per-channel ones, on a processor of ``vendor`` (:data:`.machine.VENDOR`).

    * Intel, and processors not measured: forward up to 64 (maps up to 8x8),
      backward up to 256 (16x16). Measured on an Intel Xeon
      (``docs/experiments/segment_forms.py``): the blocked forward up to 15%
      faster on 7x7 maps with several rows, level or slower on 14x14; the
      blocked backward 3.5-4.5x faster on 32x2048x7x7 and 1.3x on
      32x1024x14x14. The per-channel forward reached 1.23-1.31 of the memory
      floor on 28x28 and 56x56 maps there.
    * AMD: every length. Measured on an AMD EPYC, Zen 4
      (``docs/experiments/fused_vs_twopass.py``): the per-channel forms write a
      channel's runs one sample's stride apart, and with 32 runs per channel
      they took 1.4-1.8x (forward) and 1.2-1.7x (backward) the blocked forms'
      time on 14x14 to 56x56 maps. With 8 runs per channel the per-channel
      forms were 4-10% faster; with one (InstanceNorm's view) the forward was
      level, and the backward keeps its per-channel form (below).
    """
    if vendor == "AuthenticAMD":
        return ANY_RUN, ANY_RUN
    return 64, 256


#: Longest runs of the blocked training forward and backward on this machine
#: (:func:`short_run_limits`; set them to override).
SHORT_FORWARD_RUN, SHORT_BACKWARD_RUN = short_run_limits(VENDOR)
#: Fewest rows ``P`` for the short-run backward: with one run per channel
#: (InstanceNorm's view) the per-channel backward is level or faster.
SHORT_BACKWARD_MIN_ROWS = 2


def inv_std(var: np.ndarray, eps: float) -> np.ndarray:
    """``1 / sqrt(var + eps)`` in float64 (NaN/Inf pass through silently)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1.0 / np.sqrt(np.asarray(var, dtype=np.float64) + eps)


# The pool is started at import (see _jit.py), so the thread count can be read
# without numba.get_num_threads()'s start-up check (a lock per call); fall back to
# the public function if Numba's internals move.
_num_threads = getattr(numba.np.ufunc.parallel, "_get_num_threads", numba.get_num_threads)


def fusable(P: int, C: int, L: int, itemsize: int, any_size: bool = False) -> bool:
    """Whether the per-channel fused kernels suit a ``(P, C, L)`` view: runs long enough to
    vectorise, a channel within the cache budget (unless ``any_size``: for callers with no
    two-pass alternative, where a channel re-read from memory still beats separate
    operations), at least two channels per thread."""
    fits = any_size or P * L * itemsize <= FUSE_MAX_CHANNEL_BYTES
    return L >= ROW_MIN and fits and C >= 2 * _num_threads()


def short_block(P: int, C: int, L: int, itemsize: int, longest: int) -> int:
    """Channels per task of the short-run forward or backward, or 0 where they do not
    apply (runs outside ``[ROW_MIN, longest]``, or one channel beyond the cache
    budget). A block's data stays within the budget, with two tasks per thread at
    least; the block is a multiple of the channels that fill whole vectors of
    :func:`.stream.segment_sums`, so every channel's values fall on the same vector
    lanes whatever the block size, and the results do not depend on the thread count."""
    per_channel = P * L * itemsize
    if not ROW_MIN <= L <= longest or per_channel > FUSE_MAX_CHANNEL_BYTES:
        return 0
    threads = _num_threads()
    tasks = max(2 * threads, -(-C * per_channel // FUSE_MAX_CHANNEL_BYTES))
    tasks = -(-tasks // threads) * threads
    lanes = stream.SEGMENT_VECTOR // itemsize
    unit = lanes // math.gcd(L, lanes)
    per_task = -(-C // tasks)
    return -(-per_task // unit) * unit


def _config(x: np.ndarray, want_fused: bool = False, out: Optional[np.ndarray] = None, gradient: bool = False):
    """(parallel?, fused?, the tuning tuple the compiled code reads); ``fused`` is only
    worked out when the caller has a fused kernel (``want_fused``). The tuple's last
    entry is 1 where ``out`` (an input gradient if ``gradient``) is written with
    streaming stores (:func:`.stream.streams`)."""
    P, C, L = x.shape
    par = x.size >= PARALLEL_MIN
    fused = want_fused and fusable(P, C, L, x.itemsize)
    nt = int(out is not None and streams(out.nbytes, gradient, out))
    cfg = (reduce.CHUNK, reduce.COL_BLOCK, reduce.COL_TASK_ELEMS, reduce.COL_TASKS_MAX, elementwise.ROW_BLOCK_ELEMS, nt)
    return par, fused, cfg


# -- small serial helpers (per-channel vectors) ---------------------------------


@helper
def _forward_vectors(x, mean, rstd, w, b):
    coefs = np.empty((3, x.shape[1]), x.dtype)
    for c in range(x.shape[1]):
        forward_coefs(mean[c], rstd[c], w, b, c, coefs)
    return coefs[0], coefs[1], coefs[2]


@helper
def _backward_vectors(x, mean, rstd, w, s1, s2, n, batch_stats):
    coefs = np.empty((4, x.shape[1]), x.dtype)
    backward_channels(mean, rstd, w, s1, s2, n, batch_stats, 0, x.shape[1], coefs)
    return coefs[0], coefs[1], coefs[2], coefs[3]


@helper
def _shifts(x):
    C = x.shape[1]
    shift = np.empty(C)
    for c in range(C):
        shift[c] = channel_shift(x, c)
    return shift


# -- two-pass orchestrations; _SUMS/_AFFINE/_AFFINE2 are bound per flavour ------


def _moments2(x, cfg):
    P, C, L = x.shape
    shift = _shifts(x)
    s1 = np.empty(C)
    s2 = np.empty(C)
    _SUMS(x, x, shift, shift, s1, s2, cfg[0], cfg[1], cfg[2], cfg[3], True)  # noqa: F821
    mean = np.empty(C)
    var = np.empty(C)
    for c in range(C):
        mean[c], var[c] = finish_moments(s1[c], s2[c], shift[c], P * L)
    return mean, var


def _forward_batch2(x, w, b, eps, out, cfg):
    mean, var = _MOMENTS(x, cfg)  # noqa: F821
    rstd = 1.0 / np.sqrt(var + eps)
    m, a, s = _forward_vectors(x, mean, rstd, w, b)
    _AFFINE(x, m, a, s, out, cfg[0], cfg[4], cfg[5])  # noqa: F821
    return mean, var, rstd


def _forward_fixed2(x, mean, var, w, b, eps, out, cfg):
    rstd = 1.0 / np.sqrt(var + eps)
    m, a, s = _forward_vectors(x, mean, rstd, w, b)
    _AFFINE(x, m, a, s, out, cfg[0], cfg[4], cfg[5])  # noqa: F821
    return rstd


def _grad_sums2(dy, x, mean, cfg):
    C = x.shape[1]
    s1 = np.empty(C)
    s2 = np.empty(C)
    _SUMS(dy, x, np.zeros(C), mean, s1, s2, cfg[0], cfg[1], cfg[2], cfg[3], False)  # noqa: F821
    return s1, s2


def _grad_input2(dy, x, mean, rstd, w, s1, s2, n, batch_stats, dx, cfg):
    a, q, m, k = _backward_vectors(x, mean, rstd, w, s1, s2, n, batch_stats)
    if batch_stats:
        _AFFINE2(dy, x, a, q, m, k, dx, cfg[0], cfg[4], cfg[5])  # noqa: F821
    else:  # dx = a * dy: x is not read (q = k = 0)
        _AFFINE(dy, q, a, k, dx, cfg[0], cfg[4], cfg[5])  # noqa: F821


def _backward2(dy, x, mean, rstd, w, batch_stats, dx, need_dx, cfg):
    P, C, L = x.shape
    s1, s2 = _GRAD_SUMS(dy, x, mean, cfg)  # noqa: F821
    if need_dx:
        _GRAD_INPUT(dy, x, mean, rstd, w, s1, s2, P * L, batch_stats, dx, cfg)  # noqa: F821
    return s2 * rstd, s1


def _flavours(fn, **named):
    """Parallel and serial compilations of ``fn`` with ``named`` globals bound per flavour:
    each value is a ``(parallel, serial)`` pair."""
    return twin(fn, {k: v[0] for k, v in named.items()}, {k: v[1] for k, v in named.items()}, loops=False)


_moments = _flavours(_moments2, _SUMS=(sums_par, sums_ser))
_forward_batch = _flavours(_forward_batch2, _MOMENTS=_moments, _AFFINE=(affine_par, affine_ser))
_forward_fixed = _flavours(_forward_fixed2, _AFFINE=(affine_par, affine_ser))
_grad_sums = _flavours(_grad_sums2, _SUMS=(sums_par, sums_ser))
_grad_input = _flavours(_grad_input2, _AFFINE=(affine_par, affine_ser), _AFFINE2=(affine2_par, affine2_ser))
_backward = _flavours(_backward2, _GRAD_SUMS=_grad_sums, _GRAD_INPUT=_grad_input)
_fused_forward = act_forward[0]  # the per-channel forward with no activation and no residual
_NO_STATS = np.empty(0)
_fused_backward = (channel_backward_par, channel_backward_ser)
_block_backward = (block_backward_par, block_backward_ser)
_block_forward = (block_forward_par, block_forward_ser)


def _pick(pair, par: bool):
    return pair[0] if par else pair[1]


# -- public entry points ------------------------------------------------------------


def forward_batch(
    x: np.ndarray, weight: Optional[np.ndarray], bias: Optional[np.ndarray], eps: float, out: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training forward: batch statistics, then ``out = w * (x - mean) * rstd + b``.

    ``x`` is ``(P, C, L)`` with ``P*L > 0``; ``weight``/``bias`` are ``(C,)`` float
    vectors or None. Returns float64 ``(mean, var, rstd)`` (``var`` biased).
    Statistics are float64 one-pass shifted sums (:mod:`.reduce`).
    """
    par, fused, cfg = _config(x, want_fused=True, out=out)
    cb = short_block(*x.shape, x.itemsize, SHORT_FORWARD_RUN)
    if cb:
        return _pick(_block_forward, par)(x, weight, bias, float(eps), out, cb, bool(cfg[5]))
    if fused:
        return _pick(_fused_forward, par)(x, None, weight, bias, float(eps), out, True, _NO_STATS, _NO_STATS,
                                          bool(cfg[5]))
    return _pick(_forward_batch, par)(x, weight, bias, float(eps), out, cfg)


def forward_fixed(
    x: np.ndarray, mean: np.ndarray, var: np.ndarray, weight: Optional[np.ndarray],
    bias: Optional[np.ndarray], eps: float, out: np.ndarray,
) -> np.ndarray:
    """Forward with given statistics (inference): returns float64 ``rstd``."""
    par, _, cfg = _config(x, out=out)
    return _pick(_forward_fixed, par)(x, mean, var, weight, bias, float(eps), out, cfg)


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
    par, fused, cfg = _config(x, want_fused=True, out=dx, gradient=True)
    need_dx = dx is not None
    nt = bool(cfg[5])
    target = dx if need_dx else np.empty((0, 0, 0), x.dtype)
    cb = short_block(*x.shape, x.itemsize, SHORT_BACKWARD_RUN) if x.shape[0] >= SHORT_BACKWARD_MIN_ROWS else 0
    if cb:
        return _pick(_block_backward, par)(dy, x, mean, rstd, weight, bool(batch_stats), target, need_dx, cb, nt)
    if fused:
        return _pick(_fused_backward, par)(dy, x, mean, rstd, weight, bool(batch_stats), target, need_dx, nt)
    return _pick(_backward, par)(dy, x, mean, rstd, weight, bool(batch_stats), target, need_dx, cfg)


def moments(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 mean and biased variance of a ``(P, C, L)`` view with ``P*L > 0``."""
    par, _, cfg = _config(x)
    return _pick(_moments, par)(x, cfg)


def grad_sums(dy: np.ndarray, x: np.ndarray, mean: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel float64 ``(sum(dy), sum(dy * (x - mean)))``: the backward's one reduction.

    Summed over processes, these give the global batch's backward (SyncBatchNorm).
    """
    par, _, cfg = _config(x)
    return _pick(_grad_sums, par)(dy, x, mean, cfg)


def grad_input(
    dy: np.ndarray, x: np.ndarray, mean: np.ndarray, rstd: np.ndarray, weight: Optional[np.ndarray],
    sum_dy: np.ndarray, sum_dy_xmu: np.ndarray, n: int, dx: np.ndarray,
) -> np.ndarray:
    """``dx = g*dy - g*rstd^2*sum_dy_xmu/n * (x - mean) - g*sum_dy/n`` with ``g = weight*rstd``.

    The input gradient of training-mode normalization given the reductions of
    :func:`grad_sums` over ``n`` values per channel (possibly more than this
    view holds: the global batch of SyncBatchNorm).
    """
    par, _, cfg = _config(x, out=dx, gradient=True)
    _pick(_grad_input, par)(dy, x, mean, rstd, weight, sum_dy, sum_dy_xmu, float(n), True, dx, cfg)
    return dx


def apply_coefficients(x: np.ndarray, m: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = (x - m[c]) * a[c] + b[c]`` over a ``(P, C, L)`` view (vectors in ``x``'s dtype).

    The element pass every per-channel normalization ends in; layers that compute
    their own coefficients (GroupNorm, Batch Renormalization) call it directly.
    """
    par, _, cfg = _config(x, out=out)
    m, a, b = (np.ascontiguousarray(v) for v in (m, a, b))  # the segments pattern reads them as runs
    _pick((affine_par, affine_ser), par)(x, m, a, b, out, cfg[0], cfg[4], cfg[5])
    return out


def apply_coefficients2(
    dy: np.ndarray, x: np.ndarray, a: np.ndarray, b: np.ndarray, m: np.ndarray, k: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """``out = a[c] * dy + b[c] * (x - m[c]) + k[c]`` (vectors in ``x``'s dtype): the backward's element pass."""
    par, _, cfg = _config(x, out=out, gradient=True)
    a, b, m, k = (np.ascontiguousarray(v) for v in (a, b, m, k))
    _pick((affine2_par, affine2_ser), par)(dy, x, a, b, m, k, out, cfg[0], cfg[4], cfg[5])
    return out
