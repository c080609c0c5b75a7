"""The NumPy front end (fused kernels) against the float64 reference, and BN's invariants."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numba

import normkit.kernels.elementwise as elementwise
import normkit.kernels.machine as machine
import normkit.kernels.norm as norm
import normkit.kernels.reduce as reduce
import normkit.kernels.stream as stream
from normkit import reference as ref
from normkit.numpy import batch_norm, batch_norm_backward

DTYPES = [np.float32, np.float64, np.float16]


@st.composite
def cases(draw, dtypes=DTYPES):
    ndim = draw(st.integers(1, 5))
    shape = draw(st.lists(st.integers(1, 6), min_size=ndim, max_size=ndim))
    axis = draw(st.integers(-ndim, ndim - 1))
    if np.prod(shape) // shape[axis] < 2:  # training needs two values per channel
        shape[0 if axis % ndim != 0 else -1] = 2 if ndim > 1 else shape[0]
    if ndim == 1:
        shape, axis = [draw(st.integers(2, 5)), draw(st.integers(1, 4))], 1
    layout = draw(st.sampled_from(["contiguous", "channels_last", "strided"]))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**31 - 1))
    offset = draw(st.sampled_from([0.0, 3.0, -200.0]))
    scale = draw(st.sampled_from([1.0, 0.01, 50.0]))
    return tuple(shape), axis, layout, np.dtype(dtype), seed, offset, scale


def make_input(shape, axis, layout, dtype, seed, offset, scale):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    if layout == "channels_last":  # channel axis fastest in memory
        x = np.moveaxis(rng.normal(size=shape[:axis % len(shape)] + shape[axis % len(shape) + 1:] + (C,)), -1, axis)
    elif layout == "strided":
        big = list(shape)
        big[0] *= 2
        x = rng.normal(size=big)[::2]
    else:
        x = rng.normal(size=shape)
    chan = [1] * len(shape)
    chan[axis] = C
    x = x * scale * rng.uniform(0.5, 2.0, C).reshape(chan) + offset
    x = x.astype(dtype)
    assert x.shape == shape
    return x, rng


def tolerance(dtype, offset, scale):
    # Errors in normalized units: rounding of the input's dtype, magnified by |mean|/std.
    eps = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}[dtype.type]
    return 4 * eps * (1 + abs(offset) / scale)


@given(cases())
def test_forward_matches_reference(case):
    shape, axis, layout, dtype, seed, offset, scale = case
    x, rng = make_input(shape, axis, layout, dtype, seed, offset, scale)
    C = shape[axis]
    w, b = rng.uniform(0.5, 2.0, C), rng.normal(size=C)
    y, mean, var = batch_norm(x, w, b, axis=axis)
    y_ref, mean_ref, var_ref = ref.batch_norm(x, w, b, axis=axis)
    assert y.dtype == x.dtype and y.shape == x.shape
    tol = tolerance(dtype, offset, scale)
    np.testing.assert_allclose(y, y_ref, atol=tol * 4, rtol=tol)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12, atol=1e-12 * (abs(offset) + scale))
    np.testing.assert_allclose(var, var_ref, rtol=1e-9, atol=1e-12 * scale**2)
    # inference with the same numbers as running statistics
    rm, rv = rng.normal(size=C), rng.uniform(0.5, 2.0, C) * scale**2
    y, _, _ = batch_norm(x, w, b, running_mean=rm, running_var=rv, training=False, axis=axis)
    y_ref, _, _ = ref.batch_norm(x, w, b, running_mean=rm, running_var=rv, training=False, axis=axis)
    np.testing.assert_allclose(y, y_ref, atol=tol * 4 * (1 + abs(offset)), rtol=tol)


@given(cases(), st.booleans())
def test_backward_matches_reference(case, training):
    shape, axis, layout, dtype, seed, offset, scale = case
    x, rng = make_input(shape, axis, layout, dtype, seed, offset, scale)
    C = shape[axis]
    w = rng.uniform(0.5, 2.0, C)
    dy = rng.normal(size=shape).astype(dtype)
    if training:
        mean, var = ref.batch_stats(x, axis)
    else:
        mean, var = rng.normal(size=C) * scale + offset, rng.uniform(0.5, 2.0, C) * scale**2
    dx, dw, db = batch_norm_backward(dy, x, mean, var, w, training=training, axis=axis)
    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy, x, mean, var, w, training=training, axis=axis)
    assert dx.dtype == x.dtype and dx.shape == x.shape
    tol = tolerance(dtype, offset, scale)
    # the size of the terms that cancel in dx (n = 2 gives dx = 0 exactly)
    gscale = np.abs(dy.astype(np.float64)).max() * (w / np.sqrt(var + 1e-5)).max()
    np.testing.assert_allclose(dx, dx_ref, atol=tol * 8 * gscale, rtol=tol)
    n = x.size // C
    np.testing.assert_allclose(db, db_ref, atol=1e-10 * n, rtol=1e-9)
    dw_tol = {np.float16: 1e-2, np.float32: 1e-5, np.float64: 1e-10}[dtype.type] * (1 + abs(offset) / scale)
    np.testing.assert_allclose(dw, dw_ref, atol=dw_tol * n, rtol=dw_tol)


@given(cases(dtypes=[np.float64]))
def test_output_is_standardized(case):
    shape, axis, layout, dtype, seed, offset, scale = case
    x, _ = make_input(shape, axis, layout, dtype, seed, offset, scale)
    y, _, _ = batch_norm(x, eps=0.0, axis=axis)
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=axes), 1.0, rtol=1e-9)


@given(cases(dtypes=[np.float64]), st.integers(0, 2**31 - 1))
def test_invariant_to_per_channel_affine_of_the_input(case, seed):
    shape, axis, layout, dtype, seed0, offset, scale = case
    x, _ = make_input(shape, axis, layout, dtype, seed0, offset, scale)
    rng = np.random.default_rng(seed)
    chan = [1] * x.ndim
    chan[axis] = shape[axis]
    a = rng.uniform(0.1, 10.0, shape[axis]).reshape(chan)
    b = rng.normal(0, 100, shape[axis]).reshape(chan)
    y1, _, _ = batch_norm(x, eps=0.0, axis=axis)
    y2, _, _ = batch_norm(a * x + b, eps=0.0, axis=axis)
    np.testing.assert_allclose(y2, y1, atol=1e-8)


def test_large_offset_float32_keeps_precision():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 8, 32, 32)) + 1e4).astype(np.float32)
    y, mean, var = batch_norm(x)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(y.astype(np.float64).var(axis=(0, 2, 3)), 1.0, rtol=1e-3)
    np.testing.assert_allclose(y.astype(np.float64).mean(axis=(0, 2, 3)), 0.0, atol=1e-3)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_channel_gives_bias(layout, dtype):
    x = np.random.default_rng(1).normal(size=(4, 3, 5, 5)).astype(dtype)
    x[:, 1] = 12345.678
    if layout == "channels_last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    bias = np.array([0.5, -0.25, 2.0], dtype=dtype)
    y, _, var = batch_norm(x, np.ones(3), bias)
    assert var[1] == 0.0
    assert np.all(y[:, 1] == bias[1])
    assert np.isfinite(y).all()
    dx, dw, db = batch_norm_backward(np.ones_like(x), x, *batch_norm(x)[1:])
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("chunk", [16, 1 << 20])
@pytest.mark.parametrize("fused", ["two-pass", "per-channel", "short-run blocks"])
@pytest.mark.parametrize("parallel,streamed", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("shape", [(3, 4, 50), (2, 8, 40), (2, 3, 7), (40, 30, 3), (2, 4, 300), (1000, 3, 1), (5, 2100, 1)])
def test_split_work_agrees(monkeypatch, shape, parallel, streamed, fused, chunk):
    """Tiny chunk and block sizes force every run to be split across tasks; each
    forward and backward form (two-pass, per-channel fused, short-run blocks) where it applies;
    the element passes' rows pattern (``chunk`` 16: runs split) and segments pattern
    (long ``chunk``: blocks of channels cut to a channel or two per task); the columns
    pattern's column blocks cutting through a channel (``(40, 30, 3)``); outputs
    written with ordinary or streaming stores (runs shorter than, and straddling,
    cache lines)."""
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, shape)
    dy = rng.normal(size=shape)
    y_ref, mean_ref, var_ref = ref.batch_norm(x)
    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy, x, mean_ref, var_ref)
    monkeypatch.setattr(reduce, "CHUNK", chunk)
    monkeypatch.setattr(reduce, "COL_BLOCK", 64)
    monkeypatch.setattr(reduce, "COL_TASK_ELEMS", 64)
    monkeypatch.setattr(elementwise, "ROW_BLOCK_ELEMS", 64)
    monkeypatch.setattr(norm, "PARALLEL_MIN", 1 if parallel else 1 << 40)
    monkeypatch.setattr(norm, "FUSE_MAX_CHANNEL_BYTES", 0 if fused == "two-pass" else 1 << 40)
    monkeypatch.setattr(norm, "SHORT_FORWARD_RUN", 1 << 40 if fused == "short-run blocks" else 0)
    monkeypatch.setattr(norm, "SHORT_BACKWARD_RUN", 1 << 40 if fused == "short-run blocks" else 0)
    monkeypatch.setattr(norm, "SHORT_BACKWARD_MIN_ROWS", 1)
    monkeypatch.setattr(norm, "_num_threads", lambda: 1)  # fusion needs 2 channels per thread
    monkeypatch.setattr(stream, "STREAM_MIN_BYTES", 0 if streamed else 1 << 40)
    monkeypatch.setattr(stream, "STREAM_MIN_GRAD_BYTES", 0 if streamed else 1 << 40)
    y, mean, var = batch_norm(x)
    dx, dw, db = batch_norm_backward(dy, x, mean, var)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(var, var_ref, rtol=1e-10)
    np.testing.assert_allclose(y, y_ref, atol=1e-10)
    np.testing.assert_allclose(dx, dx_ref, atol=1e-10)
    np.testing.assert_allclose(dw, dw_ref, atol=1e-9)
    np.testing.assert_allclose(db, db_ref, atol=1e-9)
    # fixed statistics (the backward of inference mode), with a weight
    w = rng.uniform(0.5, 2.0, shape[1])
    rm, rv = rng.normal(size=shape[1]), rng.uniform(0.5, 2.0, shape[1])
    got = batch_norm_backward(dy, x, rm, rv, w, training=False)
    want = ref.batch_norm_backward(dy, x, rm, rv, w, training=False)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, atol=1e-9)


def test_short_blocks_where_runs_are_short():
    """The short-run forms take short maps, with many runs per channel (BatchNorm) or
    one (InstanceNorm's view; the backward then keeps its per-channel form), not long
    runs nor channels beyond the cache budget; two tasks per thread at least."""
    for P, C, L in ((32, 2048, 49), (32, 1024, 196), (1, 32 * 2048, 49)):
        cb = norm.short_block(P, C, L, 4, 256)
        assert 0 < cb and -(-C // cb) >= 2 * norm._num_threads() - 1
    intel_forward, intel_backward = norm.short_run_limits("GenuineIntel")
    assert norm.short_block(32, 1024, 196, 4, intel_forward) == 0  # 14x14 forward: per channel
    assert norm.short_block(32, 512, 784, 4, intel_backward) == 0
    assert norm.short_block(32, 2048, 49, 4, intel_forward) > 0  # 7x7: blocks
    assert norm.short_block(8192, 64, 49, 4, 256) == 0  # one channel beyond the cache budget
    assert norm.SHORT_BACKWARD_MIN_ROWS > 1


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD", "", "SomethingElse"])
def test_short_run_limits_by_vendor(vendor):
    """AMD takes the blocked forms at every run length that fits the per-channel budget;
    Intel and unmeasured processors only on short runs; this machine's limits are its
    vendor's."""
    forward, backward = norm.short_run_limits(vendor)
    if vendor == "AuthenticAMD":
        for P, C, L in ((32, 256, 784), (32, 1024, 196), (8, 64, 3136)):
            assert norm.short_block(P, C, L, 4, forward) > 0
            assert norm.short_block(P, C, L, 4, backward) > 0
        assert norm.short_block(32, 64, 12544, 4, forward) == 0  # a channel beyond the budget: two-pass
    else:
        assert (forward, backward) == (64, 256)
    assert (norm.SHORT_FORWARD_RUN, norm.SHORT_BACKWARD_RUN) == norm.short_run_limits(machine.VENDOR)


def test_cpuinfo_field(tmp_path):
    """The first ``name : value`` line's value; "" for a missing field or file."""
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n"
                    "processor\t: 1\nvendor_id\t: GenuineIntel\n")
    assert machine.cpuinfo_field("vendor_id", str(info)) == "AuthenticAMD"
    assert machine.cpuinfo_field("model name", str(info)) == "AMD EPYC"
    assert machine.cpuinfo_field("flags", str(info)) == ""
    assert machine.cpuinfo_field("vendor_id", str(tmp_path / "missing")) == ""


def test_shift_removes_cancellation():
    """Raw E[x^2] - E[x]^2 in float64 loses everything here; the shifted sums do not."""
    rng = np.random.default_rng(3)
    x = 1e9 + rng.normal(size=(4096, 2, 1))
    _, _, var = batch_norm(x)
    exact = x.astype(np.float64).var(axis=(0, 2))
    naive = (x**2).mean(axis=(0, 2)) - x.mean(axis=(0, 2)) ** 2
    assert np.abs(naive - exact).max() > 1e-3  # the naive formula really does fail here
    np.testing.assert_allclose(var, exact, rtol=1e-7)


def test_results_do_not_depend_on_thread_count():
    import numba

    x = np.random.default_rng(4).normal(size=(700, 33, 1)).astype(np.float32)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, before):
            numba.set_num_threads(threads)
            results.append(batch_norm(x)[2])
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


def test_short_runs_do_not_depend_on_block_size(monkeypatch):
    """The short-run forms' blocks change with the thread count; every channel's
    values still fall on the same vector lanes, so results are bit-identical."""
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 3.0, size=(6, 40, 49)).astype(np.float32)
    dy = rng.normal(size=x.shape).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 40).astype(np.float32)
    sizes = set()
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(norm, "_num_threads", lambda threads=threads: threads)
        sizes.add(norm.short_block(6, 40, 49, 4, norm.SHORT_FORWARD_RUN))
        out, dx = np.empty_like(x), np.empty_like(x)
        mean, var, rstd = norm.forward_batch(x, w, None, 1e-5, out)
        dw, db = norm.backward(dy, x, mean, rstd, w, True, dx)
        results.append((mean, var, out, dx, dw, db))
    assert len(sizes) > 1 and 0 not in sizes
    for other in results[1:]:
        for got, first in zip(other, results[0]):
            np.testing.assert_array_equal(got, first)
    want_y, want_m, want_v = ref.batch_norm(x.astype(np.float64))
    np.testing.assert_allclose(results[0][0], want_m, rtol=1e-12)
    np.testing.assert_allclose(results[0][1], want_v, rtol=1e-10)


@pytest.mark.parametrize("bad,exc,match", [
    (np.arange(12).reshape(3, 4), TypeError, "floating-point input"),
    (np.ones((1, 4)), ValueError, "more than 1 value per channel"),
])
def test_functional_errors(bad, exc, match):
    with pytest.raises(exc, match=match):
        batch_norm(bad)


def test_functional_parameter_shape_errors():
    x = np.ones((4, 3, 2))
    with pytest.raises(ValueError, match=r"expected weight of shape \(3,\), got \(4,\)"):
        batch_norm(x, np.ones(4))
    with pytest.raises(ValueError, match="channel axis 3 is out of range"):
        batch_norm(x, axis=3)
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        batch_norm(x, training=False)
    with pytest.raises(ValueError, match="dy of the input's shape"):
        batch_norm_backward(np.ones((4, 3)), x, np.zeros(3), np.ones(3))


def test_empty_batch():
    x = np.ones((0, 3, 4), np.float32)
    y, mean, var = batch_norm(x)
    assert y.shape == x.shape and np.isnan(mean).all()
    dx, dw, db = batch_norm_backward(np.ones_like(x), x, np.zeros(3), np.ones(3))
    assert dx.shape == x.shape and (dw == 0).all() and (db == 0).all()


@given(shape=st.lists(st.integers(1, 40), min_size=2, max_size=4), offset=st.integers(0, 15),
       dtype=st.sampled_from([np.float32, np.float64]), channels_last=st.booleans())
def test_outputs_start_on_a_cache_line(shape, offset, dtype, channels_last):
    """The NumPy front end's outputs start on a 64-byte line wherever the input lies (NumPy's
    own allocations start 16 bytes past one; streamed passes are slower there), and keep
    the input's layout."""
    shape[0] = max(2, shape[0])
    raw = np.random.default_rng(0).standard_normal(int(np.prod(shape)) + offset).astype(dtype)
    x = raw[offset:].reshape(shape)
    if channels_last and len(shape) > 2:
        x = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 1, -1)), -1, 1)
    y, mean, var = batch_norm(x)
    dx, _, _ = batch_norm_backward(np.ones_like(x), x, mean, var)
    for out in (y, dx):
        assert out.ctypes.data % stream.LINE == 0
        wide = [d for d in range(x.ndim) if x.shape[d] > 1]  # the input's layout (size-1 dims aside)
        assert sorted(wide, key=lambda d: out.strides[d]) == sorted(wide, key=lambda d: x.strides[d])
    np.testing.assert_allclose(y, ref.batch_norm(x.astype(np.float64))[0], atol=1e-4 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("shape,dtype", [((3, 5), np.float32), ((2, 3, 4), np.float64), ((0, 7), np.float32)])
def test_aligned_empty(shape, dtype):
    a = stream.aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
    assert a.size == 0 or a.ctypes.data % stream.LINE == 0
    a[...] = 1  # the whole array is writable memory of its own
    assert a.sum() == np.prod(shape)


@pytest.mark.parametrize("shape", [(4, 3, 20), (50, 6, 1), (2, 5, 3)])
def test_split_backward_entry_points_match_reference(shape):
    """moments, grad_sums and grad_input (SyncBatchNorm's pieces) against the oracle."""
    from normkit import kernels

    rng = np.random.default_rng(7)
    x = rng.normal(1.0, 2.0, shape)
    dy = rng.normal(size=shape)
    w = rng.uniform(0.5, 2.0, shape[1])
    mean, var = kernels.moments(x)
    mean_ref, var_ref = ref.batch_stats(x)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-12)
    np.testing.assert_allclose(var, var_ref, rtol=1e-12)
    s1, s2 = kernels.grad_sums(dy, x, mean)
    np.testing.assert_allclose(s1, dy.sum(axis=(0, 2)), rtol=1e-12)
    np.testing.assert_allclose(s2, (dy * (x - mean[None, :, None])).sum(axis=(0, 2)), rtol=1e-10, atol=1e-12)
    rstd = kernels.inv_std(var, 1e-5)
    dx = kernels.grad_input(dy, x, mean, rstd, w, s1, s2, shape[0] * shape[2], np.empty_like(x))
    dx_ref, _, _ = ref.batch_norm_backward(dy, x, mean_ref, var_ref, w)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_norm_fused_and_two_pass_paths_match_reference(monkeypatch, fused, dtype):
    """GroupNorm's per-(sample, group) fused kernels and the two-pass path, against the oracle."""
    from normkit.kernels import grouped

    monkeypatch.setattr(norm, "FUSE_MAX_CHANNEL_BYTES", 1 << 40 if fused else 0)
    rng = np.random.default_rng(11)
    N, C, L, G = 4, 12, 20, 3
    x = (rng.normal(size=(N, C, L)) * 3 + 50).astype(dtype)
    dy = rng.normal(size=(N, C, L)).astype(dtype)
    w, b = rng.uniform(0.5, 2, C), rng.normal(size=C)
    out, dx = np.empty_like(x), np.empty_like(x)
    mean, var, rstd = grouped.group_forward(x, G, w, b, 1e-5, out)
    dw, db = grouped.group_backward(dy, x, G, mean, rstd, w, dx)
    y_ref, mean_ref, var_ref = ref.group_norm(x.astype(np.float64), G, w, b, 1e-5)
    dx_ref, dw_ref, db_ref = ref.group_norm_backward(dy.astype(np.float64), x.astype(np.float64), G, mean_ref,
                                                     var_ref, w, 1e-5)
    tol = 2e-4 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-10)
    np.testing.assert_allclose(out, y_ref, atol=tol, rtol=tol)
    np.testing.assert_allclose(dx, dx_ref, atol=tol, rtol=tol)
    np.testing.assert_allclose(dw, dw_ref, atol=tol * L * N, rtol=tol)
    np.testing.assert_allclose(db, db_ref, atol=tol * L * N, rtol=tol)
