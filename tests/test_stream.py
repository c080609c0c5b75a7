"""Streaming stores (normkit.kernels.stream): the element-formula intrinsic against
NumPy, the policy that decides which outputs stream, and whole layers written
with streaming stores against torch.nn."""

import mmap
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

import normkit.allocator as allocator
import normkit.kernels.machine as machine
import normkit.kernels.stream as stream
import normkit.nn as nkn
from normkit.kernels.stream import fence, segment_map, segment_sums, stream_map


@njit
def _affine(x, o, m, a, b, nt):
    stream_map("0 1 - 2 * 3 +", o, (x, m, a, b), nt)
    fence(nt)


@njit
def _mixed_relu(g, x, o, a, b, k, nt):
    stream_map("0 2 * 1 3 - * 4 + relu", o, (g, x, a, b, k), nt)
    fence(nt)


@st.composite
def runs(draw):
    n = draw(st.integers(0, 200))
    lead = draw(st.integers(0, 20))  # offset of the run in its buffer: every alignment to a cache line
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    nt = draw(st.booleans())
    vectors = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return n, lead, dtype, nt, vectors, seed


@given(runs())
def test_stream_map_matches_numpy_at_every_alignment(case):
    n, lead, dtype, nt, vectors, seed = case
    rng = np.random.default_rng(seed)
    x = rng.normal(size=lead + n + 3).astype(dtype)
    buf = np.full(lead + n + 3, 7.0, dtype)
    if vectors:
        m, a, b = (rng.normal(size=n).astype(dtype) for _ in range(3))
    else:
        m, a, b = (dtype.type(v) for v in rng.normal(size=3))
    _affine(x[lead:lead + n], buf[lead:lead + n], m, a, b, nt)
    want = (x[lead:lead + n].astype(np.float64) - m) * a + b
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(buf[lead:lead + n], want, rtol=tol, atol=tol * 10)
    assert (buf[:lead] == 7).all() and (buf[lead + n:] == 7).all()  # nothing written outside the run


@pytest.mark.parametrize("nt", [False, True])
def test_stream_map_formula_with_relu_propagates_nan(nt):
    rng = np.random.default_rng(1)
    n = 100
    g, x, a, k = (rng.normal(size=n) for _ in range(4))
    x[[3, 50, 99]] = np.nan
    o = np.empty(n)
    _mixed_relu(g, x, o, a, 0.5, k, nt)
    raw = g * a * (x - 0.5) + k
    want = np.where(raw < 0, 0.0, raw)  # NaN stays NaN, as torch.relu
    np.testing.assert_allclose(o, want, rtol=1e-14, atol=1e-14)
    assert np.isnan(o[[3, 50, 99]]).all()


@njit
def _segment_affine(x, o, m, a, b, seg_len, nt):
    segment_map("0 1 - 2 * 3 +", o, (x, m), (a, b), seg_len, nt)
    fence(nt)


@st.composite
def segmented(draw):
    seg_len = draw(st.integers(1, 70))
    segs = draw(st.integers(0, 12))
    lead = draw(st.integers(0, 20))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    return seg_len, segs, lead, dtype, draw(st.booleans()), draw(st.integers(0, 2**31 - 1))


@given(segmented())
def test_segment_map_matches_numpy_at_every_alignment(case):
    """Segments shorter than, equal to and longer than a vector, vectors straddling
    boundaries, streamed and ordinary stores, every alignment of the run."""
    seg_len, segs, lead, dtype, nt, seed = case
    n = seg_len * segs
    rng = np.random.default_rng(seed)
    x = rng.normal(size=lead + n + 3).astype(dtype)
    buf = np.full(lead + n + 3, 7.0, dtype)
    a, b = rng.normal(size=(2, segs)).astype(dtype)
    m = dtype.type(rng.normal())
    _segment_affine(x[lead:lead + n], buf[lead:lead + n], m, a, b, seg_len, nt)
    want = (x[lead:lead + n].astype(np.float64) - m) * np.repeat(a, seg_len) + np.repeat(b, seg_len)
    tol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(buf[lead:lead + n], want, rtol=tol, atol=tol * 10)
    assert (buf[:lead] == 7).all() and (buf[lead + n:] == 7).all()


@njit
def _segment_sums(u, v, a, b, seg_len, s1, s2):
    segment_sums(u, v, a, b, seg_len, s1, s2)


@given(segmented())
def test_segment_sums_match_numpy(case):
    seg_len, segs, lead, dtype, _, seed = case
    n = seg_len * segs
    rng = np.random.default_rng(seed)
    u = rng.normal(3.0, 2.0, size=lead + n).astype(dtype)[lead:]
    v = rng.normal(size=lead + n).astype(dtype)[lead:]
    s1 = np.full(segs + 2, 7.0)
    s2 = np.full(segs + 2, 7.0)
    start1, start2 = rng.normal(size=(2, segs))
    s1[1:segs + 1], s2[1:segs + 1] = start1, start2
    # shifts as numbers, and as one float64 per segment (vectors straddling two segments blend them)
    per_segment = rng.normal(size=(2, segs))
    a, b = (2.5, -0.5) if seed % 2 else (per_segment[0], per_segment[1])
    _segment_sums(u, v, a, b, seg_len, s1[1:segs + 1], s2[1:segs + 1])
    du = u.astype(np.float64) - np.repeat(np.broadcast_to(a, segs), seg_len)
    dv = v.astype(np.float64) - np.repeat(np.broadcast_to(b, segs), seg_len)
    want1 = start1 + du.reshape(segs, seg_len).sum(axis=1)  # the sums are added to what is there
    want2 = start2 + (du * dv).reshape(segs, seg_len).sum(axis=1)
    np.testing.assert_allclose(s1[1:segs + 1], want1, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(s2[1:segs + 1], want2, rtol=1e-12, atol=1e-11)
    assert s1[0] == s1[-1] == s2[0] == s2[-1] == 7  # nothing written outside the segments' entries


@njit
def _segment_moments(u, a, seg_len, s1, s2):
    segment_sums(u, None, a, None, seg_len, s1, s2)


@given(segmented())
def test_segment_moments_match_numpy_and_the_paired_form(case):
    """``v`` and ``b`` None: the forward moments, each value loaded once; the same
    floating-point operations as passing ``u`` and ``a`` twice."""
    seg_len, segs, lead, dtype, _, seed = case
    n = seg_len * segs
    rng = np.random.default_rng(seed)
    u = rng.normal(3.0, 2.0, size=lead + n).astype(dtype)[lead:]
    a = 2.5 if seed % 2 else rng.normal(3.0, 1.0, size=segs)
    s1, s2 = np.zeros(segs), np.zeros(segs)
    _segment_moments(u, a, seg_len, s1, s2)
    p1, p2 = np.zeros(segs), np.zeros(segs)
    _segment_sums(u, u, a, a, seg_len, p1, p2)
    np.testing.assert_array_equal(s1, p1)
    np.testing.assert_array_equal(s2, p2)
    du = (u.astype(np.float64) - np.repeat(np.broadcast_to(a, segs), seg_len)).reshape(segs, seg_len)
    np.testing.assert_allclose(s1, du.sum(axis=1), rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(s2, (du * du).sum(axis=1), rtol=1e-12, atol=1e-11)


def test_segment_sums_propagate_nan_to_their_segment_only():
    x = np.arange(48, dtype=np.float32)
    x[20] = np.nan  # segment 1 of 3 (16 values each)
    s1, s2 = np.zeros(3), np.zeros(3)
    _segment_sums(x, x, 0.0, 0.0, 16, s1, s2)
    assert np.isnan(s1[1]) and np.isnan(s2[1])
    np.testing.assert_allclose(s1[[0, 2]], [x[:16].sum(), x[32:].sum()])


def test_segment_intrinsics_reject_bad_operands():
    @njit
    def seg_vector_scalar(x, o):
        segment_map("0 1 *", o, (x,), (1.0,), 4, False)

    with pytest.raises(TypingError, match="operand 0 must be an array"):
        seg_vector_scalar(np.ones(8), np.ones(8))

    @njit
    def sums_f32_out(x, s):
        segment_sums(x, x, 0.0, 0.0, 4, s, s)

    with pytest.raises(TypingError, match="s1 must be a 1-D float64 array"):
        sums_f32_out(np.ones(8), np.ones(2, np.float32))

    @njit
    def sums_f32_shift(x, a, s):
        segment_sums(x, x, a, 0.0, 4, s, s)

    with pytest.raises(TypingError, match="a must be a number or a 1-D float64 array"):
        sums_f32_shift(np.ones(8), np.ones(2, np.float32), np.zeros(2))

    @njit
    def moments_with_b(x, s):
        segment_sums(x, None, 0.0, 0.0, 4, s, s)

    with pytest.raises(TypingError, match="v and b must both be None"):
        moments_with_b(np.ones(8), np.zeros(2))


@pytest.mark.parametrize("formula,match", [
    ("0 1 +  9 -", "names operand 9"),
    ("0 1 ^", "unknown token"),
    ("0 +", "not a postfix expression"),
    ("0 1", "leaves 2 values"),
])
def test_stream_map_rejects_bad_formulas(formula, match):
    @njit
    def bad(x, o):
        stream_map(formula, o, (x, 1.0), False)

    with pytest.raises(TypingError, match=match):
        bad(np.ones(4), np.ones(4))


def test_stream_map_rejects_mixed_dtypes_and_shapes():
    @njit
    def mixed(x, o):
        stream_map("0", o, (x,), False)

    with pytest.raises(TypingError, match="operand 0 must be 1-D float64"):
        mixed(np.ones(4, np.float32), np.ones(4))
    with pytest.raises(TypingError, match="out must be a 1-D float array"):
        mixed(np.ones((2, 2)), np.ones((2, 2)))


@njit
def _span(w, workers, tasks):
    return stream.span(w, workers, tasks)


@njit
def _span_unsigned(w, workers, tasks):
    return stream.span(np.uint64(w), workers, tasks)  # a prange index's type


@pytest.mark.parametrize("span", [_span, _span_unsigned])
def test_span_covers_tasks_once(span):
    for tasks in (0, 1, 5, 64, 101):
        for workers in (1, 2, 3, 8):
            bounds = [span(w, workers, tasks) for w in range(workers)]
            assert all(type(lo) is int and type(hi) is int for lo, hi in bounds)  # not float64
            covered = [t for lo, hi in bounds for t in range(lo, hi)]
            assert covered == list(range(tasks))


def test_helpers_refuse_a_python_call():
    # compiled without a Python entry point: a clear error, not a jump to nowhere
    with pytest.raises(TypeError, match="normkit.kernels.stream.span is a kernel helper.*@njit"):
        stream.span(0, 2, 10)
    assert _span(0, 2, 10) == (0, 5)  # the same helper from jitted code


def test_policy_bounds_and_switches(monkeypatch):
    monkeypatch.setattr(stream, "_X86", True)
    monkeypatch.setattr(stream, "_reused", False)
    lo, hi = stream.STREAM_MIN_BYTES, stream.STREAM_MAX_BYTES
    assert not stream.streams(lo - 1)
    assert stream.streams(lo) and stream.streams(hi)
    assert not stream.streams(hi + 1)  # glibc maps it afresh: ordinary stores
    stream.reused_memory(True)
    assert stream.streams(hi + 1)
    stream.reused_memory(False)
    try:
        assert stream.streaming(False) is False
        assert not stream.streams(lo)
        assert stream.streaming() is False
    finally:
        stream.streaming(True)
    assert stream.streams(lo)
    monkeypatch.setattr(stream, "_X86", False)  # other processors: never
    assert not stream.streams(lo) and stream.streaming() is False


@pytest.mark.parametrize("vendor", ["GenuineIntel", "AuthenticAMD", ""])
def test_stream_min_bytes_by_vendor(vendor):
    """AMD streams forward outputs from 8 MiB (its 6.4 MB outputs were faster with
    ordinary stores) and gradients from 4 MiB; Intel and unmeasured processors both
    from 4 MiB. This machine's bounds are its vendor's, below the upper bound, and
    streams() applies the one of the output's kind."""
    forward, gradient = stream.stream_min_bytes(vendor)
    assert forward == (8 << 20 if vendor == "AuthenticAMD" else 4 << 20) < stream.STREAM_MAX_BYTES
    assert gradient == 4 << 20
    assert (stream.STREAM_MIN_BYTES, stream.STREAM_MIN_GRAD_BYTES) == stream.stream_min_bytes(machine.VENDOR)


def test_streams_applies_the_threshold_of_the_outputs_kind(monkeypatch):
    monkeypatch.setattr(stream, "_X86", True)
    monkeypatch.setattr(stream, "_reused", False)
    monkeypatch.setattr(stream, "STREAM_MIN_BYTES", 8 << 20)
    monkeypatch.setattr(stream, "STREAM_MIN_GRAD_BYTES", 4 << 20)
    size = 6 << 20
    assert not stream.streams(size) and stream.streams(size, gradient=True)
    assert stream.streams(8 << 20) and stream.streams(8 << 20, gradient=True)
    assert not stream.streams((4 << 20) - 1, gradient=True)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore is Linux's")
def test_resident_tells_fresh_pages_from_written_ones():
    size = 16 << 20
    with mmap.mmap(-1, size) as fresh:  # anonymous, untouched: nothing mapped yet
        arr = np.frombuffer(fresh, np.uint8)
        address = arr.ctypes.data
        assert not stream.resident(address, size)
        arr[:4096] = 1  # the first page only
        assert not stream.resident(address, size)
        arr[-1] = 1
        assert stream.resident(address, size)
        assert not stream.resident(address, 0)
        del arr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mincore is Linux's")
def test_streams_above_the_upper_bound_only_into_memory_in_use(monkeypatch):
    """Above STREAM_MAX_BYTES: ordinary stores into fresh pages (zeroed through the cache
    on first touch), streaming ones into memory written before or kept for reuse."""
    monkeypatch.setattr(stream, "_X86", True)
    monkeypatch.setattr(stream, "_reused", False)
    size = stream.STREAM_MAX_BYTES + (1 << 20)
    with mmap.mmap(-1, size) as fresh:
        out = np.frombuffer(fresh, np.uint8)
        assert not stream.streams(size, out=out) and not stream.streams(size, gradient=True, out=out)
        out[:] = 0
        assert stream.streams(size, out=out) and stream.streams(size, gradient=True, out=out)
        assert not stream.streams(size)  # no array: the size rule alone
        stream.reused_memory(True)
        try:
            assert stream.streams(size)
        finally:
            stream.reused_memory(False)
        del out


def test_keep_freed_memory_lifts_the_upper_bound(monkeypatch):
    monkeypatch.setattr(stream, "_reused", False)
    if not allocator.keep_freed_memory(True):
        pytest.skip("glibc's mallopt is not available here")
    try:
        assert stream._reused
    finally:
        allocator.keep_freed_memory(False)
    assert not stream._reused


@pytest.mark.parametrize("layer,shape,channels_last", [
    ("bn", (2, 6, 16, 16), False),   # per-channel fused forward and backward, runs of 256
    ("bn", (3, 64, 7, 7), False),    # short runs (ordinary stores): blocks pattern, short-run backward
    ("bn", (4, 6, 5, 7), True),      # channels-last: two passes, rows swept several at a time
    ("ln", (9, 300), False),
    ("gn", (3, 8, 16, 16), False),
    ("gn", (4, 32, 7, 7), False),    # a group's channels as segments of one streamed run
])
def test_layers_with_streaming_stores_match_torch(monkeypatch, layer, shape, channels_last):
    """Every output of a training step and of inference written with streaming stores
    (runs of at least NT_MIN_RUN bytes; shorter ones take ordinary stores)."""
    monkeypatch.setattr(stream, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(stream, "STREAM_MIN_GRAD_BYTES", 0)
    torch.manual_seed(0)
    C = shape[1] if layer != "ln" else shape[-1]
    if layer == "bn":
        ours, theirs = nkn.BatchNorm2d(C), torch.nn.BatchNorm2d(C)
    elif layer == "ln":
        ours, theirs = nkn.LayerNorm(C), torch.nn.LayerNorm(C)
    else:
        ours, theirs = nkn.GroupNorm(4, C), torch.nn.GroupNorm(4, C)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), theirs.parameters()):
            p.copy_(torch.rand_like(p) + 0.5)
            q.copy_(p)
    x = torch.randn(*shape) * 3 + 2
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = torch.randn(*shape)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), theirs(xb)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["relu", None])
@pytest.mark.parametrize("residual", [False, True])
def test_batchnorm_act_with_streaming_stores_matches_torch(monkeypatch, act, residual):
    """BatchNormAct2d's ReLU and identity forms write through stream_map."""
    monkeypatch.setattr(stream, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(stream, "STREAM_MIN_GRAD_BYTES", 0)
    torch.manual_seed(3)
    ours, ref = nkn.BatchNormAct2d(16, act=act), torch.nn.BatchNorm2d(16)
    x = torch.randn(6, 16, 9, 7) * 2 + 1
    z = torch.randn(6, 16, 9, 7) if residual else None
    for train in (True, False):
        ours.train(train)
        ref.train(train)
        y = ours(x, z)
        p = ref(x) + (z if residual else 0)
        torch.testing.assert_close(y, torch.relu(p) if act == "relu" else p, rtol=1e-5, atol=1e-5)
