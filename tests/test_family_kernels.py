"""The family's NumPy reference against independent formulas, and the kernels against the reference.

* The reference (LayerNorm, RMSNorm, GroupNorm, InstanceNorm) is checked against
  torch.nn.functional in float64 and torch autograd (a different implementation
  and differentiation), so that the oracle is itself trusted.
* The kernels (:mod:`normkit.kernels.rowwise`, :mod:`normkit.kernels.grouped`) are
  checked against the reference with hypothesis over shapes, layouts (contiguous
  and channels-last), dtypes, offsets and scales, in both the serial and the
  parallel compilations and in every memory pattern (fused and chunked rows).
"""

from __future__ import annotations

import contextlib

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import normkit.kernels.norm as norm
import normkit.kernels.rowwise as rowwise
import normkit.kernels.stream as stream
from normkit.kernels import grouped
from normkit.reference.groupnorm import group_norm, group_norm_backward
from normkit.reference.instancenorm import instance_norm, instance_norm_backward, instance_norm_running_stats
from normkit.reference.layernorm import layer_norm, layer_norm_backward
from normkit.reference.rmsnorm import default_rms_eps, rms_norm, rms_norm_backward

DTYPES = [np.float32, np.float64]


def term_scale(dy, w, rstd):
    """Size of the terms the input gradient is a cancelling sum of: ``rstd * |w * dy|``.
    Rounding in the input's dtype is relative to them (a one-value row has dx = 0
    exactly, as a difference of two such terms)."""
    g = np.abs(np.asarray(dy, dtype=np.float64))
    if w is not None:
        g = g * np.abs(np.asarray(w, dtype=np.float64)).max()
    return g.max() * np.max(rstd) + 1e-300


def tolerance(dtype, offset=0.0, scale=1.0):
    """Error allowed in normalized units.

    A few roundings of the input's dtype, *not* magnified by ``|offset|/scale``: the
    reference gets the very same (rounded) input, and the kernels subtract the mean
    rounded to the input's dtype (exactly) and carry its rounding separately, so a
    large offset must not cost float32 precision. What is magnified is float64
    rounding of the means (the reference's own, and the kernels' float64
    statistics): ``|offset| * 2^-53`` divided by the spread (``scale`` times a
    per-row factor down to 0.5).
    """
    eps = {np.float32: 6e-8, np.float64: 1.2e-16}[np.dtype(dtype).type]
    return 64 * eps + 64 * 1.2e-16 * 2 * abs(offset) / scale


# --------------------------------------------------------------------------- the reference vs torch (float64)

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def _torch_single_thread():
    """The torch references run single-threaded (restored afterwards). With Numba's pool
    started (its 'omp' threading layer), torch's OpenMP threads and Numba's spin against
    each other on a small machine and every small torch call gets ~100x slower; the
    references need no threads, and results do not depend on it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _torch_grads(fn, x, params, dy):
    """Output and gradients of ``fn(x, *params)`` through torch autograd (float64)."""
    xt = _t(x, True)
    pt = [None if p is None else _t(p, True) for p in params]
    y = fn(xt, *pt)
    y.backward(_t(dy))
    return y.detach().numpy(), xt.grad.numpy(), [None if p is None else p.grad.numpy() for p in pt]


@pytest.mark.parametrize("shape,k", [((4, 7), 1), ((3, 2, 5, 4), 2), ((6,), 1), ((2, 3, 4), 3)])
def test_reference_layer_norm_matches_torch(shape, k):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, shape)
    ns = shape[len(shape) - k:]
    w, b, dy = rng.uniform(0.5, 2, ns), rng.normal(size=ns), rng.normal(size=shape)
    y, mean, var = layer_norm(x, ns, w, b, eps=1e-5)
    dx, dw, db = layer_norm_backward(dy, x, ns, mean, var, w, eps=1e-5)
    yt, dxt, (dwt, dbt) = _torch_grads(lambda x, w, b: F.layer_norm(x, ns, w, b, 1e-5), x, [w, b], dy)
    np.testing.assert_allclose(y, yt, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dxt, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw, dwt, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, dbt, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eps", [None, 1e-3])
@pytest.mark.parametrize("shape,k", [((5, 9), 1), ((2, 3, 4), 2)])
def test_reference_rms_norm_matches_torch(shape, k, eps):
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 1e-4 if eps is None else 1.0, shape)  # tiny values: the default eps matters
    ns = shape[len(shape) - k:]
    w, dy = rng.uniform(0.5, 2, ns), rng.normal(size=shape)
    y, ms = rms_norm(x, ns, w, eps)
    dx, dw = rms_norm_backward(dy, x, ns, ms, w, eps)
    yt, dxt, (dwt,) = _torch_grads(lambda x, w: F.rms_norm(x, ns, w, eps), x, [w], dy)
    np.testing.assert_allclose(y, yt, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, dxt, rtol=1e-9, atol=1e-9 * np.abs(dxt).max())
    np.testing.assert_allclose(dw, dwt, rtol=1e-10, atol=1e-12)
    assert default_rms_eps(np.float64) == torch.finfo(torch.float64).eps
    assert default_rms_eps(np.float16) == default_rms_eps(np.float32) == torch.finfo(torch.float32).eps


@pytest.mark.parametrize("shape,G", [((3, 6, 5), 3), ((2, 4, 3, 3), 1), ((2, 4, 3, 2), 4), ((5, 6), 2)])
def test_reference_group_norm_matches_torch(shape, G):
    rng = np.random.default_rng(2)
    x = rng.normal(-1.0, 2.0, shape)
    C = shape[1]
    w, b, dy = rng.uniform(0.5, 2, C), rng.normal(size=C), rng.normal(size=shape)
    y, mean, var = group_norm(x, G, w, b)
    dx, dw, db = group_norm_backward(dy, x, G, mean, var, w)
    yt, dxt, (dwt, dbt) = _torch_grads(lambda x, w, b: F.group_norm(x, G, w, b, 1e-5), x, [w, b], dy)
    for got, want in ((y, yt), (dx, dxt), (dw, dwt), (db, dbt)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)
    xg = x.reshape(shape[0], G, -1)
    np.testing.assert_allclose(mean, xg.mean(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, xg.var(-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 6), (2, 3, 4, 5)])
def test_reference_instance_norm_matches_torch(shape, use_input_stats):
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 2.0, shape)
    C = shape[1]
    w, b, dy = rng.uniform(0.5, 2, C), rng.normal(size=C), rng.normal(size=shape)
    rm, rv = rng.normal(size=C), rng.uniform(0.5, 2, C)
    y, mean, var = instance_norm(x, w, b, running_mean=rm, running_var=rv, use_input_stats=use_input_stats)
    dx, dw, db = instance_norm_backward(dy, x, mean, var, w, use_input_stats=use_input_stats)
    rmt, rvt = _t(rm), _t(rv)
    yt, dxt, (dwt, dbt) = _torch_grads(
        lambda x, w, b: F.instance_norm(x, rmt, rvt, w, b, use_input_stats, 0.3, 1e-5), x, [w, b], dy
    )
    for got, want in ((y, yt), (dx, dxt), (dw, dwt), (db, dbt)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-11)
    if use_input_stats:  # torch updated its buffers in place: compare with the reference rule
        L = int(np.prod(shape[2:]))
        new_mean, new_var = instance_norm_running_stats(rm, rv, mean, var, L, 0.3)
        np.testing.assert_allclose(new_mean, rmt.numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(new_var, rvt.numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- the kernels vs the reference


@contextlib.contextmanager
def patterns(fuse_max=None, chunk=None, par=False, task_elems=None, streamed=False):
    """Set the row kernels' thresholds, the parallel threshold, and whether every output
    is written with streaming stores, for one example (restored after)."""
    saved = (rowwise.ROW_FUSE_MAX, rowwise.ROW_CHUNK, rowwise.TASK_ELEMS, norm.PARALLEL_MIN, stream.STREAM_MIN_BYTES,
             stream.STREAM_MIN_GRAD_BYTES)
    rowwise.ROW_FUSE_MAX = saved[0] if fuse_max is None else fuse_max
    rowwise.ROW_CHUNK = saved[1] if chunk is None else chunk
    rowwise.TASK_ELEMS = saved[2] if task_elems is None else task_elems
    norm.PARALLEL_MIN = 0 if par else saved[3]
    stream.STREAM_MIN_BYTES = 0 if streamed else saved[4]
    stream.STREAM_MIN_GRAD_BYTES = 0 if streamed else saved[5]
    try:
        yield
    finally:
        (rowwise.ROW_FUSE_MAX, rowwise.ROW_CHUNK, rowwise.TASK_ELEMS, norm.PARALLEL_MIN, stream.STREAM_MIN_BYTES,
         stream.STREAM_MIN_GRAD_BYTES) = saved


def streamed(seed):
    """Half of the examples (by seed) write their outputs with streaming stores."""
    return seed % 2 == 0


@st.composite
def row_cases(draw):
    R = draw(st.integers(1, 12))
    D = draw(st.integers(1, 40))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    chunked = draw(st.booleans())
    par = draw(st.booleans())
    offset = draw(st.sampled_from([0.0, 5.0, -300.0]))
    scale = draw(st.sampled_from([1.0, 0.01, 30.0]))
    affine = draw(st.sampled_from(["both", "weight", "none"]))
    seed = draw(st.integers(0, 2**31 - 1))
    return R, D, dtype, chunked, par, offset, scale, affine, seed


def _row_data(R, D, dtype, offset, scale, affine, seed):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(R, D)) * scale * rng.uniform(0.5, 2.0, (R, 1)) + offset).astype(dtype)
    w = None if affine == "none" else rng.uniform(0.5, 2.0, D).astype(dtype)
    b = rng.normal(size=D).astype(dtype) if affine == "both" else None
    dy = rng.normal(size=(R, D)).astype(dtype)
    return x, w, b, dy


@given(row_cases())
def test_row_kernels_match_reference_layer_norm(case):
    R, D, dtype, chunked, par, offset, scale, affine, seed = case
    with patterns(fuse_max=D - 1 if chunked else rowwise.ROW_FUSE_MAX, chunk=7, par=par, task_elems=8,
                  streamed=streamed(seed)):
        x, w, b, dy = _row_data(R, D, dtype, offset, scale, affine, seed)
        y = np.empty_like(x)
        mean, var, rstd = rowwise.row_forward(x, w, b, 1e-5, y, center=True)
        y_ref, mean_ref, var_ref = layer_norm(x, D, w, b, 1e-5)
        tol = tolerance(dtype, offset, scale)
        np.testing.assert_allclose(y, y_ref, rtol=tol, atol=4 * tol)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12 * (abs(offset) + scale))
        np.testing.assert_allclose(var, var_ref, rtol=1e-8, atol=1e-12 * scale**2)
        np.testing.assert_allclose(rstd, 1 / np.sqrt(var_ref + 1e-5), rtol=1e-8)
        dx = np.empty_like(x)
        dw, db = rowwise.row_backward(dy, x, mean, rstd, w, dx, center=True)
        dx_ref, dw_ref, db_ref = layer_norm_backward(dy, x, D, mean_ref, var_ref, w, 1e-5)
        np.testing.assert_allclose(dx, dx_ref, rtol=tol, atol=4 * tol * term_scale(dy, w, rstd))
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-8, atol=1e-9 * R)
        np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-10 * R)
        dw2, db2 = rowwise.row_backward(dy, x, mean, rstd, w, None, center=True)  # parameter gradients only
        np.testing.assert_array_equal(dw2, dw)
        np.testing.assert_array_equal(db2, db)


@given(row_cases())
def test_row_kernels_match_reference_rms_norm(case):
    R, D, dtype, chunked, par, offset, scale, affine, seed = case
    with patterns(fuse_max=D - 1 if chunked else rowwise.ROW_FUSE_MAX, chunk=5, par=par, task_elems=8,
                  streamed=streamed(seed)):
        x, w, _, dy = _row_data(R, D, dtype, offset, scale, affine, seed)
        y = np.empty_like(x)
        mean, ms, rstd = rowwise.row_forward(x, w, None, 1e-6, y, center=False)
        y_ref, ms_ref = rms_norm(x, D, w, 1e-6)
        assert not mean.any()
        tol = tolerance(dtype)  # no cancellation: no magnification by the offset
        np.testing.assert_allclose(y, y_ref, rtol=tol, atol=4 * tol)
        np.testing.assert_allclose(ms, ms_ref, rtol=1e-10)
        dx = np.empty_like(x)
        dw, db = rowwise.row_backward(dy, x, mean, rstd, w, dx, center=False)
        dx_ref, dw_ref = rms_norm_backward(dy, x, D, ms_ref, w, 1e-6)
        np.testing.assert_allclose(dx, dx_ref, rtol=tol * 4, atol=4 * tol * term_scale(dy, w, rstd))
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-8, atol=1e-9 * R)
        np.testing.assert_allclose(db, dy.astype(np.float64).sum(0), rtol=1e-10, atol=1e-10 * R)


@pytest.mark.parametrize("center", [True, False])
def test_row_kernels_default_thresholds_long_rows(center):
    """Rows longer than ROW_FUSE_MAX (the chunked pattern, as configured), parallel."""
    rng = np.random.default_rng(5)
    R, D = 2, rowwise.ROW_FUSE_MAX + 1000
    x = rng.normal(3.0, 2.0, (R, D))
    w, b, dy = rng.uniform(0.5, 2, D), rng.normal(size=D), rng.normal(size=(R, D))
    y, dx = np.empty_like(x), np.empty_like(x)
    mean, var, rstd = rowwise.row_forward(x, w, b if center else None, 1e-5, y, center)
    dw, db = rowwise.row_backward(dy, x, mean, rstd, w, dx, center)
    if center:
        y_ref, m_ref, v_ref = layer_norm(x, D, w, b)
        dx_ref, dw_ref, db_ref = layer_norm_backward(dy, x, D, m_ref, v_ref, w)
    else:
        y_ref, ms_ref = rms_norm(x, D, w, 1e-5)
        dx_ref, dw_ref = rms_norm_backward(dy, x, D, ms_ref, w, 1e-5)
        db_ref = dy.sum(0)
    for got, want in ((y, y_ref), (dx, dx_ref), (dw, dw_ref), (db, db_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-11)


def test_row_backward_does_not_depend_on_thread_count():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 257)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    w = rng.uniform(0.5, 2, 257).astype(np.float32)
    y = np.empty_like(x)
    mean, _, rstd = rowwise.row_forward(x, w, None, 1e-5, y)
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, before}):
            numba.set_num_threads(threads)
            dx = np.empty_like(x)
            results.append((dx, *rowwise.row_backward(dy, x, mean, rstd, w, dx)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(results[0], results[-1]):
        np.testing.assert_array_equal(a, b)


@st.composite
def grouped_cases(draw):
    N = draw(st.integers(1, 4))
    G = draw(st.integers(1, 4))
    Cg = draw(st.integers(1, 3))
    L = draw(st.sampled_from([2, 3, 7, 16, 21]))
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    channels_last = draw(st.booleans())
    par = draw(st.booleans())
    offset = draw(st.sampled_from([0.0, 5.0, -300.0]))
    scale = draw(st.sampled_from([1.0, 0.01, 30.0]))
    affine = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return N, G, Cg, L, dtype, channels_last, par, offset, scale, affine, seed


def _grouped_data(N, C, L, dtype, channels_last, offset, scale, affine, seed):
    """(x, dy) as (N, C, L) arrays and the kernels' views of them, plus w, b."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(N, C, L)) * scale * rng.uniform(0.5, 2.0, (N, C, 1)) + offset).astype(dtype)
    dy = rng.normal(size=(N, C, L)).astype(dtype)
    w = rng.uniform(0.5, 2.0, C).astype(dtype) if affine else None
    b = rng.normal(size=C).astype(dtype) if affine else None
    if channels_last:  # (N, L, C) memory; the kernels get that array
        return x, dy, np.ascontiguousarray(x.transpose(0, 2, 1)), np.ascontiguousarray(dy.transpose(0, 2, 1)), w, b
    return x, dy, x, dy, w, b


def _back(a, channels_last):
    return a.transpose(0, 2, 1) if channels_last else a


@given(grouped_cases())
def test_group_kernels_match_reference(case):
    N, G, Cg, L, dtype, cl, par, offset, scale, affine, seed = case
    with patterns(par=par, streamed=streamed(seed)):
        C = G * Cg
        x, dy, xk, dyk, w, b = _grouped_data(N, C, L, dtype, cl, offset, scale, affine, seed)
        y = np.empty_like(xk)
        mean, var, rstd = grouped.group_forward(xk, G, w, b, 1e-5, y, cl)
        y_ref, mean_ref, var_ref = group_norm(x, G, w, b)
        tol = tolerance(dtype, offset, scale)
        np.testing.assert_allclose(_back(y, cl), y_ref, rtol=tol, atol=4 * tol)
        np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12 * (abs(offset) + scale))
        np.testing.assert_allclose(var, var_ref, rtol=1e-8, atol=1e-12 * scale**2)
        dx = np.empty_like(xk)
        dw, db = grouped.group_backward(dyk, xk, G, mean, rstd, w, dx, cl)
        dx_ref, dw_ref, db_ref = group_norm_backward(dy, x, G, mean_ref, var_ref, w)
        np.testing.assert_allclose(_back(dx, cl), dx_ref, rtol=tol, atol=4 * tol * term_scale(dy, w, rstd))
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-8, atol=1e-9 * N * L)
        np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-10 * N * L)


@given(grouped_cases(), st.booleans())
def test_instance_kernels_match_reference(case, use_input_stats):
    N, _, C, L, dtype, cl, par, offset, scale, affine, seed = case
    with patterns(par=par, streamed=streamed(seed)):
        x, dy, xk, dyk, w, b = _grouped_data(N, C, L, dtype, cl, offset, scale, affine, seed)
        rng = np.random.default_rng(seed + 1)
        rm, rv = rng.normal(size=C) * scale + offset, rng.uniform(0.5, 2.0, C) * scale**2
        y = np.empty_like(xk)
        if use_input_stats:
            mean, var, rstd = grouped.instance_forward(xk, w, b, 1e-5, y, cl)
        else:
            mean, var, rstd = grouped.instance_forward(xk, w, b, 1e-5, y, cl, rm, rv)
        y_ref, mean_ref, var_ref = instance_norm(x, w, b, running_mean=rm, running_var=rv,
                                                 use_input_stats=use_input_stats)
        tol = tolerance(dtype, offset, scale)
        np.testing.assert_allclose(_back(y, cl), y_ref, rtol=tol, atol=4 * tol)
        np.testing.assert_allclose(np.broadcast_to(mean, (N, C)), mean_ref, rtol=1e-12,
                                   atol=1e-12 * (abs(offset) + scale))
        np.testing.assert_allclose(np.broadcast_to(var, (N, C)), var_ref, rtol=1e-8, atol=1e-12 * scale**2)
        dx = np.empty_like(xk)
        dw, db = grouped.instance_backward(dyk, xk, mean, rstd, w, use_input_stats, dx, cl)
        dx_ref, dw_ref, db_ref = instance_norm_backward(dy, x, mean_ref, var_ref, w, use_input_stats=use_input_stats)
        np.testing.assert_allclose(_back(dx, cl), dx_ref, rtol=tol, atol=4 * tol * term_scale(dy, w, rstd))
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-8, atol=1e-9 * N * L)
        np.testing.assert_allclose(db, db_ref, rtol=1e-10, atol=1e-10 * N * L)


@pytest.mark.parametrize("kind", ["layer", "rms", "group", "instance"])
def test_float32_large_offset_keeps_precision(kind):
    """float32 data with mean 1e4 and std 1: the kernels' outputs and input gradients stay
    at float32 rounding of the normalized values (an error of order 1e4 * 2^-24 ~ 6e-4
    would mean the offset was not cancelled exactly)."""
    rng = np.random.default_rng(7)
    x64 = rng.normal(1e4, 1.0, (4, 6, 50))
    x = x64.astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    C = 6
    w, b = rng.uniform(0.5, 2, C).astype(np.float32), rng.normal(size=C).astype(np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    if kind in ("layer", "rms"):
        x2, y2, dx2, dy2 = (a.reshape(24, 50) for a in (x, y, dx, dy))
        wr = rng.uniform(0.5, 2, 50).astype(np.float32)
        mean, _, rstd = rowwise.row_forward(x2, wr, None, 1e-5, y2, center=kind == "layer")
        rowwise.row_backward(dy2, x2, mean, rstd, wr, dx2, center=kind == "layer")
        if kind == "layer":
            y_ref, m, v = layer_norm(x2, 50, wr, None)
            dx_ref = layer_norm_backward(dy2, x2, 50, m, v, wr)[0]
        else:
            y_ref, ms = rms_norm(x2, 50, wr, 1e-5)
            dx_ref = rms_norm_backward(dy2, x2, 50, ms, wr, 1e-5)[0]
        y, dx = y2, dx2
    elif kind == "group":
        mean, _, rstd = grouped.group_forward(x, 3, w, b, 1e-5, y)
        grouped.group_backward(dy, x, 3, mean, rstd, w, dx)
        y_ref, m, v = group_norm(x, 3, w, b)
        dx_ref = group_norm_backward(dy, x, 3, m, v, w)[0]
    else:
        mean, _, rstd = grouped.instance_forward(x, w, b, 1e-5, y)
        grouped.instance_backward(dy, x, mean, rstd, w, True, dx)
        y_ref, m, v = instance_norm(x, w, b)
        dx_ref = instance_norm_backward(dy, x, m, v, w)[0]
    scale_y = np.abs(y_ref).max()
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-6 * scale_y * 4)
    if kind != "rms":  # rms of 1e4 data: dx is tiny (~1e-4 relative); compare relative to its scale
        np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=4e-6 * np.abs(dx_ref).max() * 8)
    else:
        np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=1e-4 * np.abs(dx_ref).max())
