"""Streaming stores (normkit.kernels.stream): the element-formula intrinsic against
NumPy, the policy that decides which outputs stream, and whole layers written
with streaming stores against torch.nn."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

import normkit.allocator as allocator
import normkit.kernels.stream as stream
import normkit.nn as nkn
from normkit.kernels.stream import fence, stream_map


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


def test_span_covers_tasks_once():
    for tasks in (0, 1, 5, 64, 101):
        for workers in (1, 2, 3, 8):
            covered = [t for w in range(workers) for t in range(*stream.span(w, workers, tasks))]
            assert covered == list(range(tasks))


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
])
def test_layers_with_streaming_stores_match_torch(monkeypatch, layer, shape, channels_last):
    """Every output of a training step and of inference written with streaming stores
    (runs of at least NT_MIN_RUN bytes; shorter ones take ordinary stores)."""
    monkeypatch.setattr(stream, "STREAM_MIN_BYTES", 0)
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
