"""Batch normalization's small-batch remedies: BatchRenorm, GhostBatchNorm, FrozenBatchNorm, freeze/unfreeze.

Independent references only: torch.nn (BatchNorm in train and eval, its
functional form per virtual batch), the float64 NumPy reference
(normkit.reference.remedies, itself checked against per-channel loops and
finite differences here), and torch.autograd.gradcheck. No expected number is
written down: every expectation is computed from a formula or another library.
"""

from __future__ import annotations

import copy
import itertools
import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import normkit.nn as nkn  # noqa: E402
from normkit.nn import functional as nkF  # noqa: E402
from normkit.nn.frozen import (  # noqa: E402
    FrozenBatchNorm, FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d, freeze, frozen_batch_norm, unfreeze,
)
from normkit.nn.ghost import GhostBatchNorm1d, GhostBatchNorm2d, GhostBatchNorm3d, ghost_batch_norm  # noqa: E402
from normkit.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d, batch_renorm, renorm_limits  # noqa: E402
from normkit.reference import batchnorm as ref_bn  # noqa: E402
from normkit.reference import remedies as ref  # noqa: E402
from normkit.running import NonFiniteBatchError, NonFiniteBatchWarning  # noqa: E402

# --------------------------------------------------------------------------- helpers

TORCH_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
NK_BN = {1: nkn.BatchNorm1d, 2: nkn.BatchNorm2d, 3: nkn.BatchNorm3d}
RENORM = {1: BatchRenorm1d, 2: BatchRenorm2d, 3: BatchRenorm3d}
GHOST = {1: GhostBatchNorm1d, 2: GhostBatchNorm2d, 3: GhostBatchNorm3d}
FROZEN = {1: FrozenBatchNorm1d, 2: FrozenBatchNorm2d, 3: FrozenBatchNorm3d}

TOL = {torch.float32: dict(rtol=1e-4, atol=3e-5), torch.float64: dict(rtol=1e-9, atol=1e-10)}
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["f32", "f64"]

LAYOUTS = [
    ((10, 3), torch.contiguous_format),
    ((6, 3, 20), torch.contiguous_format),
    ((5, 3, 3, 4), torch.contiguous_format),
    ((5, 3, 3, 4), torch.channels_last),
    ((5, 2, 2, 3, 2), torch.channels_last_3d),
]
LAYOUT_IDS = ["NC", "NCL", "NCHW", "NHWC", "NDHWC"]


def bn_dim(shape) -> int:
    return {2: 1, 3: 1, 4: 2, 5: 3}[len(shape)]


def make_input(shape, dtype=torch.float32, fmt=torch.contiguous_format, seed=0, offset=0.5, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset
    return x.to(dtype).contiguous(memory_format=fmt)


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def randomize(module, seed=0, count=3):
    """Random affine and running statistics (tests must not pass by weight=1, bias=0)."""
    gen = torch.Generator().manual_seed(seed)
    C = module.num_features
    with torch.no_grad():
        if module.weight is not None:
            module.weight.copy_(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5)
            if module.bias is not None:
                module.bias.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
        if module.running_mean is not None:
            module.running_mean.copy_(torch.randn(C, generator=gen, dtype=torch.float64))
            module.running_var.copy_(torch.rand(C, generator=gen, dtype=torch.float64) + 0.5)
            module.num_batches_tracked.fill_(count)
    return module


def snapshot(module):
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}
    return state, grads


def assert_same_state(module, snap):
    state, grads = snap
    now = module.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed: {v} -> {now[k]}"
    for n, p in module.named_parameters():
        assert (p.grad is None) == (grads[n] is None) and (p.grad is None or torch.equal(p.grad, grads[n])), n


def close(actual, expected, dtype, what="", scale=1.0):
    tol = TOL[dtype]
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    torch.testing.assert_close(
        actual.to(expected.dtype), expected, rtol=tol["rtol"], atol=tol["atol"] * scale, msg=lambda m: f"{what}: {m}"
    )


def run(module, x, dy):
    """Forward + backward; returns (y, dx, dweight, dbias) detached."""
    xl = leaf(x)
    for p in module.parameters():
        p.grad = None
    y = module(xl)
    y.backward(dy)
    w = getattr(module, "weight", None)
    b = getattr(module, "bias", None)
    grad = lambda p: None if p is None or p.grad is None else p.grad.clone()  # noqa: E731
    return y.detach(), xl.grad, grad(w), grad(b)


def compare_runs(a, b, dtype, what):
    for name, u, v in zip(("output", "input grad", "weight grad", "bias grad"), a, b):
        assert (u is None) == (v is None), f"{what} {name}: {u} vs {v}"
        if u is not None:
            close(u, v, dtype, f"{what} {name}")


def compare_buffers(a, b, dtype):
    close(a.running_mean, b.running_mean, dtype, "running_mean")
    close(a.running_var, b.running_var, dtype, "running_var")
    assert int(a.num_batches_tracked) == int(b.num_batches_tracked)


def stats64(x):
    """Per-channel float64 mean and biased variance (NumPy reference)."""
    return ref_bn.batch_stats(x.detach().double().numpy())


# =========================================================================== the reference


def test_reference_batch_renorm_matches_per_channel_loops():
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (6, 4, 5))
    w, b = rng.uniform(0.5, 2, 4), rng.normal(size=4)
    rm, rv = rng.normal(size=4) * 3, rng.uniform(0.05, 20, 4)
    rmax, dmax, eps = 2.0, 0.7, 1e-3
    y, mean, var, r, d = ref.batch_renorm(x, w, b, running_mean=rm, running_var=rv, rmax=rmax, dmax=dmax, eps=eps)
    for c in range(4):
        vals = x[:, c].ravel()
        mu = sum(vals) / len(vals)
        s2 = sum((v - mu) ** 2 for v in vals) / len(vals)
        r_c = min(max(np.sqrt(s2 + eps) / np.sqrt(rv[c] + eps), 1 / rmax), rmax)
        d_c = min(max((mu - rm[c]) / np.sqrt(rv[c] + eps), -dmax), dmax)
        expect = w[c] * ((x[:, c] - mu) / np.sqrt(s2 + eps) * r_c + d_c) + b[c]
        np.testing.assert_allclose(y[:, c], expect, rtol=1e-12, atol=1e-12)
        assert r[c] == pytest.approx(r_c, rel=1e-12) and d[c] == pytest.approx(d_c, rel=1e-12, abs=1e-14)
    # at least one channel of each kind was exercised: clipped and unclipped
    assert np.any(np.isclose(np.abs(d), dmax)) and np.any(np.abs(d) < dmax)
    # rmax=1, dmax=0 is plain batch normalization
    y1 = ref.batch_renorm(x, w, b, running_mean=rm, running_var=rv, rmax=1.0, dmax=0.0, eps=eps)[0]
    np.testing.assert_allclose(y1, ref_bn.batch_norm(x, w, b, eps=eps)[0], rtol=1e-13, atol=1e-13)


def _numeric_grad(f, a, h=1e-6):
    g = np.zeros_like(a)
    for idx in itertools.product(*map(range, a.shape)):
        old = a[idx]
        a[idx] = old + h
        fp = f()
        a[idx] = old - h
        fm = f()
        a[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


def test_reference_batch_renorm_backward_is_the_gradient_with_r_d_held():
    rng = np.random.default_rng(1)
    x = rng.normal(0.5, 1.5, (4, 3, 2))
    w, b = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    dy = rng.normal(size=x.shape)
    _, mean, var, r0, d0 = ref.batch_renorm(
        x, w, b, running_mean=rng.normal(size=3), running_var=rng.uniform(0.3, 3, 3), rmax=1.5, dmax=0.5, eps=1e-3
    )

    def loss():  # r and d frozen at their values: the stop-gradient of the paper
        mu, s2 = ref_bn.batch_stats(x)
        x_hat = (x - mu[None, :, None]) / np.sqrt(s2[None, :, None] + 1e-3)
        y = w[None, :, None] * (x_hat * r0[None, :, None] + d0[None, :, None]) + b[None, :, None]
        return float((y * dy).sum())

    dx, dw, db = ref.batch_renorm_backward(dy, x, mean, var, r0, d0, w, eps=1e-3)
    np.testing.assert_allclose(dx, _numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _numeric_grad(loss, b), rtol=1e-6, atol=1e-7)


def test_reference_ghost_batch_norm_chunks_and_running_statistics():
    rng = np.random.default_rng(2)
    x = rng.normal(2.0, 3.0, (11, 3, 4))
    w, b = rng.uniform(0.5, 2, 3), rng.normal(size=3)
    rm0, rv0 = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    y, rm, rv, count = ref.ghost_batch_norm(
        x, 4, w, b, running_mean=rm0, running_var=rv0, num_batches_tracked=2, momentum=None, eps=1e-5
    )
    assert count == 2 + 3  # chunks of 4, 4 and 3 samples
    # every chunk is normalized on its own: per chunk and channel, (y - b) / w has mean 0 and variance ~1
    for lo, hi in ((0, 4), (4, 8), (8, 11)):
        z = (y[lo:hi] - b[None, :, None]) / w[None, :, None]
        np.testing.assert_allclose(z.mean(axis=(0, 2)), 0, atol=1e-12)
        np.testing.assert_allclose(z.var(axis=(0, 2)), x[lo:hi].var(axis=(0, 2)) / (x[lo:hi].var(axis=(0, 2)) + 1e-5))
    # momentum=None after 2 batches and 3 chunks: the plain mean of the 5 statistics
    stats_m = [x[lo:hi].mean(axis=(0, 2)) for lo, hi in ((0, 4), (4, 8), (8, 11))]
    stats_v = [x[lo:hi].var(axis=(0, 2), ddof=1) for lo, hi in ((0, 4), (4, 8), (8, 11))]
    np.testing.assert_allclose(rm, (2 * rm0 + sum(stats_m)) / 5, rtol=1e-12)
    np.testing.assert_allclose(rv, (2 * rv0 + sum(stats_v)) / 5, rtol=1e-12)
    # a virtual batch as large as the batch is BatchNorm
    y_all = ref.ghost_batch_norm(x, 11, w, b, running_mean=rm0, running_var=rv0)[0]
    np.testing.assert_allclose(y_all, ref_bn.batch_norm(x, w, b)[0], rtol=1e-13, atol=1e-13)
    # inference in both references is BatchNorm's with the running statistics, nothing updated
    expect = ref_bn.batch_norm(x, w, b, running_mean=rm0, running_var=rv0, training=False)[0]
    y_eval, rm_e, rv_e, count_e = ref.ghost_batch_norm(x, 4, w, b, running_mean=rm0, running_var=rv0, training=False)
    np.testing.assert_allclose(y_eval, expect, rtol=1e-13, atol=1e-13)
    assert rm_e is rm0 and rv_e is rv0 and count_e == 0
    y_eval, _, _, r, d = ref.batch_renorm(x, w, b, running_mean=rm0, running_var=rv0, training=False)
    np.testing.assert_allclose(y_eval, expect, rtol=1e-13, atol=1e-13)
    assert np.all(r == 1) and np.all(d == 0)


# =========================================================================== BatchRenorm


def limits_formula(step, rmax, dmax, warmup, relax):
    """The documented schedule, written out independently of normkit."""
    if step < warmup:
        return 1.0, 0.0
    rr, rd = relax if isinstance(relax, tuple) else (relax, relax)
    k = step - warmup + 1
    fr = 1.0 if rr == 0 else min(1.0, k / rr)
    fd = 1.0 if rd == 0 else min(1.0, k / rd)
    return 1 + (rmax - 1) * fr, dmax * fd


@pytest.mark.parametrize("relax", [0, 4, (6, 3)], ids=["jump", "4", "6_3"])
def test_renorm_schedule(relax):
    for step in range(14):
        got = renorm_limits(step, 3.0, 5.0, warmup_steps=3, relax_steps=relax)
        assert got == pytest.approx(limits_formula(step, 3.0, 5.0, 3, relax), rel=1e-15)
    # the paper's: BN for 5000 steps, rmax 3 at 40k, dmax 5 at 25k
    paper = dict(warmup_steps=5000, relax_steps=(35000, 20000))
    assert renorm_limits(4999, 3, 5, **paper) == (1.0, 0.0)
    assert renorm_limits(39999, 3, 5, **paper)[0] == pytest.approx(3.0)
    assert renorm_limits(39998, 3, 5, **paper)[0] < 3.0
    assert renorm_limits(24999, 3, 5, **paper)[1] == pytest.approx(5.0)
    assert renorm_limits(24998, 3, 5, **paper)[1] < 5.0


def clipping_state(x, C, rmax, dmax, eps=1e-5):
    """Running statistics that put channels in every regime: r clipped above, below, free;
    d clipped above, below, free (cycled over the channels)."""
    mean, var = stats64(x)
    sigma_b = np.sqrt(var + eps)
    r_target = np.resize([2.0 * rmax, 0.5 / rmax, 0.5 * (1 + rmax)], C)
    d_target = np.resize([-0.5 * dmax, 2.0 * dmax, -2.0 * dmax], C)
    sigma = sigma_b / r_target
    rv = sigma ** 2 - eps
    rm = mean - d_target * sigma
    return torch.from_numpy(rm), torch.from_numpy(rv)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
def test_batch_renorm_rmax1_dmax0_is_batchnorm(momentum, shape, fmt, dtype):
    """rmax=1, dmax=0 after the warm-up: outputs, gradients and buffers of torch's BatchNorm, step after step."""
    dim, C = bn_dim(shape), shape[1]
    bn = randomize(TORCH_BN[dim](C, momentum=momentum, dtype=dtype))
    rn = RENORM[dim](C, momentum=momentum, rmax=1.0, dmax=0.0, warmup_steps=0, dtype=dtype)
    rn.load_state_dict(bn.state_dict())
    for step in range(3):
        x = make_input(shape, dtype, fmt, seed=step, offset=0.4 * step)
        dy = make_input(shape, dtype, seed=100 + step)
        a, b = run(rn, x, dy), run(bn, x, dy)
        compare_runs(a, b, dtype, f"step {step}")
        if fmt is not torch.contiguous_format:
            assert a[0].is_contiguous(memory_format=fmt)
        compare_buffers(rn, bn, dtype)
    assert int(rn.renorm_step) == 3
    rn.eval()
    bn.eval()
    compare_runs(run(rn, x, dy), run(bn, x, dy), dtype, "eval")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_renorm_warmup_is_batchnorm_then_renormalizes(dtype):
    shape = (6, 3, 4)
    bn = randomize(nn.BatchNorm1d(3, dtype=dtype))
    rn = BatchRenorm1d(3, rmax=3.0, dmax=5.0, warmup_steps=2, dtype=dtype)
    rn.load_state_dict(bn.state_dict())
    for step in range(2):
        x = make_input(shape, dtype, seed=step, offset=3.0, scale=5.0)
        dy = make_input(shape, dtype, seed=50 + step)
        compare_runs(run(rn, x, dy), run(bn, x, dy), dtype, f"warm-up step {step}")
        compare_buffers(rn, bn, dtype)
    # after the warm-up: the running statistics lag behind this far-off batch, so r, d are active
    x = make_input(shape, dtype, seed=9, offset=3.0, scale=5.0)
    rm0, rv0 = rn.running_mean.double().numpy().copy(), rn.running_var.double().numpy().copy()
    y = rn(x).detach()
    expect = ref.batch_renorm(x.double().numpy(), rn.weight.detach().double().numpy(), rn.bias.detach().double().numpy(),
                              running_mean=rm0, running_var=rv0, rmax=3.0, dmax=5.0)
    close(y, torch.from_numpy(expect[0]).to(dtype), dtype, "renormalized output", scale=10)
    assert not torch.allclose(y, bn(x).detach(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("affine", [True, False, "nobias"], ids=["affine", "noaffine", "nobias"])
def test_batch_renorm_matches_reference(affine, shape, fmt, dtype):
    """Outputs, gradients (r, d held constant) and running statistics against the float64 reference,
    with channels in every clipping regime."""
    dim, C = bn_dim(shape), shape[1]
    rmax, dmax, momentum, eps = 2.0, 1.5, 0.3, 1e-5
    rn = randomize(RENORM[dim](C, momentum=momentum, affine=bool(affine), bias=affine is True, rmax=rmax, dmax=dmax,
                               warmup_steps=0, dtype=dtype))
    x = make_input(shape, dtype, fmt, seed=4)
    rm0, rv0 = clipping_state(x, C, rmax, dmax)
    with torch.no_grad():
        rn.running_mean.copy_(rm0)
        rn.running_var.copy_(rv0)
    rm0, rv0 = rn.running_mean.double().numpy().copy(), rn.running_var.double().numpy().copy()  # as stored
    dy = make_input(shape, dtype, fmt, seed=5)
    y, dx, dw, db = run(rn, x, dy)

    x64 = x.double().numpy()
    w64 = None if not affine else rn.weight.detach().double().numpy()
    b64 = None if rn.bias is None else rn.bias.detach().double().numpy()
    ey, mean, var, r, d = ref.batch_renorm(x64, w64, b64, running_mean=rm0, running_var=rv0, rmax=rmax, dmax=dmax, eps=eps)
    assert np.any(r == rmax) and np.any(r == 1 / rmax) and np.any(np.abs(d) == dmax) and np.any(np.abs(d) < dmax)
    edx, edw, edb = ref.batch_renorm_backward(dy.double().numpy(), x64, mean, var, r, d, w64, eps=eps)
    close(y, torch.from_numpy(ey), dtype, "output", scale=10)
    close(dx, torch.from_numpy(edx), dtype, "input grad", scale=10)
    if affine:
        close(dw, torch.from_numpy(edw), dtype, "weight grad", scale=30)
    assert (db is None) == (rn.bias is None)
    if db is not None:
        close(db, torch.from_numpy(edb), dtype, "bias grad", scale=30)
    if fmt is not torch.contiguous_format:
        assert y.is_contiguous(memory_format=fmt)
    n = x.numel() // C
    close(rn.running_mean, torch.from_numpy((1 - momentum) * rm0 + momentum * mean), dtype, "running_mean")
    close(rn.running_var, torch.from_numpy((1 - momentum) * rv0 + momentum * var * n / (n - 1)), dtype, "running_var")
    assert int(rn.num_batches_tracked) == 4 and int(rn.renorm_step) == 1


@settings(max_examples=12)
@given(
    shape=st.lists(st.integers(1, 5), min_size=2, max_size=5).map(tuple),
    cl=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
    rmax=st.floats(1.0, 4.0),
    dmax=st.floats(0.0, 3.0),
)
def test_batch_renorm_functional_matches_reference_any_shape(shape, cl, dtype, seed, rmax, dmax):
    shape = (max(shape[0], 2),) + shape[1:]
    fmt = torch.channels_last if cl and len(shape) == 4 else torch.contiguous_format
    C = shape[1]
    gen = torch.Generator().manual_seed(seed)
    x = make_input(shape, dtype, fmt, seed=seed, offset=1.0)
    rm = torch.randn(C, generator=gen, dtype=dtype)
    rv = torch.rand(C, generator=gen, dtype=dtype) * 3 + 0.1
    w = torch.rand(C, generator=gen, dtype=dtype) + 0.5
    b = torch.randn(C, generator=gen, dtype=dtype)
    rm0, rv0 = rm.double().numpy().copy(), rv.double().numpy().copy()
    y = batch_renorm(x, rm, rv, w, b, True, 0.1, 1e-5, rmax, dmax)
    ey = ref.batch_renorm(x.double().numpy(), w.double().numpy(), b.double().numpy(), running_mean=rm0,
                          running_var=rv0, rmax=rmax, dmax=dmax)[0]
    close(y, torch.from_numpy(ey), dtype, "output", scale=10)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_batch_renorm_torch_path_matches_reference(monkeypatch, dtype):
    """The pure-torch path (other devices/dtypes) computes the same thing: forced here on CPU."""
    shape, C = (5, 3, 3, 4), 3
    x = make_input(shape, dtype, torch.channels_last, seed=6)
    mods = []
    for kernels_on in (True, False):
        rn = randomize(BatchRenorm2d(C, rmax=2.0, dmax=1.5, warmup_steps=0, dtype=dtype))
        rm0, rv0 = clipping_state(x, C, 2.0, 1.5)
        with torch.no_grad():
            rn.running_mean.copy_(rm0)
            rn.running_var.copy_(rv0)
        if not kernels_on:
            monkeypatch.setattr(nkF, "uses_kernels", lambda *a, **k: False)
        mods.append((rn, run(rn, x, make_input(shape, dtype, seed=7))))
    (k_mod, k_run), (t_mod, t_run) = mods
    compare_runs(t_run, k_run, dtype, "torch path vs kernels")
    compare_buffers(t_mod, k_mod, dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_batch_renorm_low_precision_matches_reference(dtype):
    shape, C = (6, 3, 4, 4), 3
    x = make_input(shape, dtype, torch.channels_last, seed=8)
    rn = randomize(BatchRenorm2d(C, rmax=2.0, dmax=1.0, warmup_steps=0))
    rm0, rv0 = rn.running_mean.double().numpy().copy(), rn.running_var.double().numpy().copy()
    xl = leaf(x)
    y = rn(xl)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    y.float().sum().backward()
    assert xl.grad.dtype == dtype and torch.isfinite(rn.weight.grad).all()
    ey = ref.batch_renorm(x.double().numpy(), rn.weight.detach().double().numpy(), rn.bias.detach().double().numpy(),
                          running_mean=rm0, running_var=rv0, rmax=2.0, dmax=1.0)[0]
    torch.testing.assert_close(y.double(), torch.from_numpy(ey), rtol=4e-2, atol=6e-2)


def _renorm_fn(running):
    def fn(x, w, b):
        return batch_renorm(x, running[0].clone(), running[1].clone(), w, b, True, 0.1, 1e-5, 2.0, 0.5)
    return fn


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contig", "cl"])
def test_batch_renorm_gradcheck_and_gradgradcheck(fmt):
    """With r and d clipped in every channel they are locally constant, so finite differences see
    exactly the gradient the paper prescribes (no gradient through r, d), weight*r and d terms included."""
    dtype = torch.float64
    x = make_input((4, 3, 3, 3), dtype, fmt, seed=2).requires_grad_(True)
    gen = torch.Generator().manual_seed(3)
    w = (torch.rand(3, generator=gen, dtype=dtype) + 0.5).requires_grad_(True)
    b = torch.randn(3, generator=gen, dtype=dtype).requires_grad_(True)
    mean, var = stats64(x)
    # sigma = 4 sigma_B -> r = 1/rmax; |mu_B - mu| = 3 sigma -> d = +-dmax (margins far beyond the probe)
    sigma = 4 * np.sqrt(var + 1e-5)
    running = (torch.from_numpy(mean + np.array([3.0, -3.0, 3.0]) * sigma), torch.from_numpy(sigma ** 2 - 1e-5))
    fn = _renorm_fn(running)
    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5, rtol=1e-4)
    assert_differentiable_backward_agrees(fn, (x, w, b))


def assert_differentiable_backward_agrees(fn, inputs):
    """The backward written for create_graph=True gives the kernels' first-order gradients
    (gradgradcheck alone would not see an error shared by both of its sides)."""
    dy = make_input(fn(*inputs).shape, inputs[0].dtype, seed=77)
    plain = torch.autograd.grad(fn(*inputs), inputs, dy)
    graph = torch.autograd.grad(fn(*inputs), inputs, dy, create_graph=True)
    for i, (a, b) in enumerate(zip(graph, plain)):
        torch.testing.assert_close(a.detach(), b, rtol=1e-10, atol=1e-12, msg=lambda m, i=i: f"input {i}: {m}")


def test_batch_renorm_state_dict_with_batchnorm():
    bn = randomize(nn.BatchNorm2d(4))
    rn = BatchRenorm2d(4, warmup_steps=0)
    rn(make_input((3, 4, 2, 2)))
    assert int(rn.renorm_step) == 1
    assert list(rn.state_dict()) == list(bn.state_dict()) + ["renorm_step"]
    # a BatchNorm checkpoint loads with strict=True; the step counter keeps its value
    result = rn.load_state_dict(bn.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in bn.state_dict().items():
        assert torch.equal(rn.state_dict()[k], v), k
    assert int(rn.renorm_step) == 1
    # BatchRenorm -> torch BatchNorm: strict=False, renorm_step the one unexpected key
    back = nn.BatchNorm2d(4)
    with pytest.raises(RuntimeError, match="renorm_step"):
        back.load_state_dict(rn.state_dict())
    result = back.load_state_dict(rn.state_dict(), strict=False)
    assert result.unexpected_keys == ["renorm_step"] and not result.missing_keys
    # BatchRenorm -> BatchRenorm carries the counter; reset_running_stats resets it
    other = BatchRenorm2d(4)
    other.load_state_dict(rn.state_dict())
    assert int(other.renorm_step) == 1
    other.reset_running_stats()
    assert int(other.renorm_step) == 0 and int(other.num_batches_tracked) == 0


def test_batch_renorm_nonfinite_policies():
    rn = randomize(BatchRenorm1d(3, warmup_steps=0, nonfinite="skip"))
    x = make_input((6, 3))
    x[2, 1] = float("nan")
    snap = snapshot(rn)
    with pytest.warns(NonFiniteBatchWarning):
        y = rn(x)
    assert torch.isnan(y[:, 1]).all() and torch.isfinite(y[:, [0, 2]]).all()
    state = snap[0]
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(rn.state_dict()[k], state[k]), k
    assert int(rn.renorm_step) == 1  # the batch was seen: the schedule counts it
    rn.nonfinite = "raise"
    snap = snapshot(rn)
    with pytest.raises(NonFiniteBatchError):
        rn(x)
    assert_same_state(rn, snap)


def _trained(cls, dim, **kwargs):
    m = randomize(cls[dim](3, **kwargs))
    shape = {1: (4, 3, 5), 2: (4, 3, 3, 3), 3: (2, 3, 2, 2, 3)}[dim]
    m(make_input(shape)).sum().backward()
    return m


@pytest.mark.parametrize(
    "shape,exc,pattern",
    [
        ((4, 3, 2, 2), ValueError, r"expected 2D or 3D input.*got 4D input of shape \(4, 3, 2, 2\)"),
        ((4, 5), ValueError, "expected input with 3 channels along dim 1, got 5"),
        ((1, 3), ValueError, "expected more than 1 value per channel when training"),
        ("int", TypeError, "expected a floating-point input"),
        ("f64", TypeError, "expected weight of the input's dtype torch.float64"),
    ],
    ids=["ndim", "channels", "one_value", "int", "dtype"],
)
def test_batch_renorm_bad_input_errors_leave_state(shape, exc, pattern):
    m = _trained(RENORM, 1, warmup_steps=0)
    snap = snapshot(m)
    x = {"int": torch.ones(4, 3, dtype=torch.int64), "f64": make_input((4, 3), torch.float64)}.get(shape)
    with pytest.raises(exc, match=pattern):
        m(x if x is not None else torch.randn(shape))
    assert_same_state(m, snap)


def test_batch_renorm_bad_arguments():
    for kwargs, pattern in [
        (dict(rmax=0.5), r"rmax >= 1 and dmax >= 0, got rmax=0.5"),
        (dict(dmax=-1.0), r"got rmax=3.0, dmax=-1.0"),
        (dict(rmax=float("inf")), "finite rmax"),
        (dict(warmup_steps=-1), "warmup_steps=-1"),
        (dict(relax_steps=(1, 2, 3)), r"relax_steps=\(1, 2, 3\)"),
        (dict(relax_steps=2.5), "relax_steps=2.5"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            BatchRenorm2d(3, **kwargs)
    rm, rv = torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError, match="expected running_mean and running_var when training"):
        batch_renorm(torch.randn(4, 3), None, None, training=True)
    with pytest.raises(ValueError, match="rmax=0.9"):
        batch_renorm(torch.randn(4, 3), rm, rv, training=True, rmax=0.9)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))
    m = _trained(RENORM, 2)
    m.track_running_stats = False
    snap = snapshot(m)
    with pytest.raises(ValueError, match="expected track_running_stats=True"):
        m(make_input((4, 3, 2, 2)))
    assert_same_state(m, snap)
    assert "rmax=3.0, dmax=5.0, warmup_steps=5000, relax_steps=0" in repr(m)


# =========================================================================== GhostBatchNorm


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
@pytest.mark.parametrize("extra", [0, 3], ids=["v=N", "v>N"])
def test_ghost_large_virtual_batch_is_batchnorm(extra, momentum, shape, fmt, dtype):
    dim, C = bn_dim(shape), shape[1]
    bn = randomize(TORCH_BN[dim](C, momentum=momentum, dtype=dtype))
    gb = GHOST[dim](C, shape[0] + extra, momentum=momentum, dtype=dtype)
    gb.load_state_dict(bn.state_dict())
    for step in range(3):
        x = make_input(shape, dtype, fmt, seed=step, offset=0.3 * step)
        dy = make_input(shape, dtype, seed=200 + step)
        a, b = run(gb, x, dy), run(bn, x, dy)
        compare_runs(a, b, dtype, f"step {step}")
        if fmt is not torch.contiguous_format:
            assert a[0].is_contiguous(memory_format=fmt)
        compare_buffers(gb, bn, dtype)
    gb.eval()
    bn.eval()
    compare_runs(run(gb, x, dy), run(bn, x, dy), dtype, "eval")


def torch_ghost(x, dy, v, rm, rv, count, w, b, momentum, eps=1e-5):
    """torch's own batch_norm applied per virtual batch: the independent reference."""
    xl = leaf(x)
    wl, bl = leaf(w), leaf(b)
    pieces = []
    for chunk in xl.split(v, 0):
        count += 1
        factor = momentum if momentum is not None else 1.0 / count
        pieces.append(torch.nn.functional.batch_norm(chunk, rm, rv, wl, bl, True, factor, eps))
    y = torch.cat(pieces, 0)
    y.backward(dy)
    return (y.detach(), xl.grad, wl.grad, bl.grad), count


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize(
    "shape,fmt,v",
    [((10, 3), torch.contiguous_format, 4), ((7, 3, 5), torch.contiguous_format, 2),
     ((9, 3, 3, 2), torch.channels_last, 4), ((5, 2, 2, 2, 3), torch.channels_last_3d, 2),
     ((9, 3, 4), torch.contiguous_format, 4), ((6, 3, 2, 2), torch.contiguous_format, 1)],
    ids=["NC_4_4_2", "NCL_2x3_1", "NHWC_4_4_1", "NDHWC_2_2_1", "NCL_last1", "NCHW_v1"],
)
@pytest.mark.parametrize("momentum", [0.2, None], ids=["m0.2", "mNone"])
def test_ghost_virtual_batches_match_torch_per_chunk(momentum, shape, fmt, v, dtype):
    dim, C = bn_dim(shape), shape[1]
    gb = randomize(GHOST[dim](C, v, momentum=momentum, dtype=dtype))
    rm, rv = gb.running_mean.clone(), gb.running_var.clone()
    count = int(gb.num_batches_tracked)
    for step in range(2):
        x = make_input(shape, dtype, fmt, seed=10 + step, offset=step)
        dy = make_input(shape, dtype, fmt, seed=20 + step)
        mine = run(gb, x, dy)
        expect, count = torch_ghost(x, dy, v, rm, rv, count, gb.weight.detach(), gb.bias.detach(), momentum)
        compare_runs(mine, expect, dtype, f"step {step}")
        if fmt is not torch.contiguous_format:
            assert mine[0].is_contiguous(memory_format=fmt)
        close(gb.running_mean, rm, dtype, "running_mean")
        close(gb.running_var, rv, dtype, "running_var")
        assert int(gb.num_batches_tracked) == count
    # and the float64 reference agrees on the output of the last step
    ey = ref.ghost_batch_norm(x.double().numpy(), v, gb.weight.detach().double().numpy(),
                              gb.bias.detach().double().numpy())[0]
    close(mine[0], torch.from_numpy(ey).to(dtype), dtype, "output vs reference", scale=10)
    # eval: BatchNorm on the whole batch with the running statistics
    bn = TORCH_BN[dim](C, momentum=momentum, dtype=dtype).eval()
    bn.load_state_dict(gb.state_dict())
    gb.eval()
    compare_runs(run(gb, x, dy), run(bn, x, dy), dtype, "eval")


@pytest.mark.parametrize("cls", ["ghost", "renorm"])
def test_bias_false_is_torch_batchnorm_bias_false(cls):
    """torch's keyword bias=False (a weight, no bias): same state_dict keys and results."""
    bn = randomize(nn.BatchNorm2d(3, bias=False))
    m = GhostBatchNorm2d(3, 8, bias=False) if cls == "ghost" else BatchRenorm2d(3, rmax=1, dmax=0, bias=False)
    assert m.bias is None and list(m.state_dict())[:4] == list(bn.state_dict())
    m.load_state_dict(bn.state_dict(), strict=True)
    x, dy = make_input((6, 3, 2, 2), seed=1), make_input((6, 3, 2, 2), seed=2)
    compare_runs(run(m, x, dy), run(bn, x, dy), torch.float32, "bias=False")
    compare_buffers(m, bn, torch.float32)


def test_ghost_gradcheck_and_gradgradcheck():
    dtype = torch.float64
    x = make_input((7, 3, 2, 2), dtype, torch.channels_last, seed=3).requires_grad_(True)
    gen = torch.Generator().manual_seed(4)
    w = (torch.rand(3, generator=gen, dtype=dtype) + 0.5).requires_grad_(True)
    b = torch.randn(3, generator=gen, dtype=dtype).requires_grad_(True)
    rm, rv = torch.zeros(3, dtype=dtype), torch.ones(3, dtype=dtype)

    def fn(x, w, b):
        return ghost_batch_norm(x, 3, rm.clone(), rv.clone(), w, b, True)

    assert torch.autograd.gradcheck(fn, (x, w, b), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "shape,v,pattern",
    [((9, 3), 4, "the last of which holds 1 sample"), ((6, 3, 1), 1, "virtual batches of 1 sample"),
     ((5, 3, 1, 1), 2, "the last of which holds 1 sample")],
)
def test_ghost_one_value_virtual_batch_is_an_error_not_nan(shape, v, pattern):
    dim = bn_dim(shape)
    gb = _trained(GHOST, dim, virtual_batch_size=v, momentum=None)
    snap = snapshot(gb)
    with pytest.raises(ValueError, match=rf"expected more than 1 value per channel in every virtual batch.*"
                                         rf"{re.escape(str(shape))}.*{pattern}"):
        gb(make_input(shape))
    assert_same_state(gb, snap)
    gb.eval()  # inference never cuts the batch
    assert torch.isfinite(gb(make_input(shape))).all()


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_ghost_nonfinite_in_a_later_virtual_batch(policy):
    gb = randomize(GhostBatchNorm1d(3, 4, nonfinite=policy))
    x = make_input((10, 3), seed=1)
    x[6, 2] = float("inf")  # in the second virtual batch
    snap = snapshot(gb)
    if policy == "raise":
        with pytest.raises(NonFiniteBatchError):
            gb(x)
        assert_same_state(gb, snap)  # the first virtual batch's update was rolled back
        return
    with pytest.warns(NonFiniteBatchWarning):
        gb(x)
    # the first and third virtual batches were folded in, the second skipped: as torch on those two
    rm, rv = snap[0]["running_mean"].clone(), snap[0]["running_var"].clone()
    for lo, hi in ((0, 4), (8, 10)):
        torch.nn.functional.batch_norm(x[lo:hi], rm, rv, None, None, True, 0.1)
    close(gb.running_mean, rm, torch.float32, "running_mean")
    close(gb.running_var, rv, torch.float32, "running_var")
    assert int(gb.num_batches_tracked) == int(snap[0]["num_batches_tracked"]) + 2


def test_ghost_state_dict_is_batchnorm_and_arguments():
    bn = randomize(nn.BatchNorm3d(3))
    gb = GhostBatchNorm3d(3, 2)
    assert list(gb.state_dict()) == list(bn.state_dict())
    gb.load_state_dict(bn.state_dict(), strict=True)
    nn.BatchNorm3d(3).load_state_dict(gb.state_dict(), strict=True)
    assert isinstance(gb, nn.BatchNorm3d) and "virtual_batch_size=2" in repr(gb)
    for bad in (0, -3, 2.5, True, "4", None):
        with pytest.raises(ValueError, match=rf"expected virtual_batch_size to be an integer >= 1, got {re.escape(repr(bad))}"):
            GhostBatchNorm2d(3, bad)
    # errors from the whole batch's validation leave the state alone
    gb = _trained(GHOST, 2, virtual_batch_size=2)
    snap = snapshot(gb)
    with pytest.raises(ValueError, match="expected input with 3 channels along dim 1, got 4"):
        gb(torch.randn(5, 4, 2, 2))
    with pytest.raises(TypeError, match="expected weight"):
        gb(torch.randn(5, 3, 2, 2, dtype=torch.float64))
    assert_same_state(gb, snap)


def test_ghost_without_running_statistics():
    gb = GhostBatchNorm1d(3, 2, track_running_stats=False)
    x = make_input((6, 3, 2))
    y = gb(x)
    expect = torch.cat([torch.nn.functional.batch_norm(c, None, None, gb.weight, gb.bias, True) for c in x.split(2)])
    close(y.detach(), expect.detach(), torch.float32, "training")
    gb.eval()  # no running statistics: batch statistics of the whole batch, as BatchNorm
    close(gb(x).detach(), torch.nn.functional.batch_norm(x, None, None, gb.weight, gb.bias, True).detach(),
          torch.float32, "eval")


# =========================================================================== FrozenBatchNorm


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("trainable", [False, True], ids=["buffers", "trainable"])
def test_frozen_is_batchnorm_eval_in_both_modes(trainable, shape, fmt, dtype):
    dim, C = bn_dim(shape), shape[1]
    bn = randomize(TORCH_BN[dim](C, dtype=dtype)).eval()
    fz = FROZEN[dim](C, trainable_affine=trainable, dtype=dtype)
    fz.load_state_dict(bn.state_dict(), strict=True)
    assert [n for n, _ in fz.named_parameters()] == (["weight", "bias"] if trainable else [])
    before = {k: v.clone() for k, v in fz.state_dict().items()}
    x = make_input(shape, dtype, fmt, seed=3)
    dy = make_input(shape, dtype, fmt, seed=4)
    expect = run(bn, x, dy)
    for mode in (True, False, True):
        fz.train(mode)
        got = run(fz, x, dy)
        compare_runs(got[:2], expect[:2], dtype, f"training={mode}")
        if trainable:
            compare_runs(got[2:], expect[2:], dtype, f"training={mode} affine")
        if fmt is not torch.contiguous_format:
            assert got[0].is_contiguous(memory_format=fmt)
        for k, v in fz.state_dict().items():
            assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("trainable", [False, True], ids=["buffers", "trainable"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contig", "cl"])
def test_frozen_gradcheck_and_gradgradcheck(fmt, trainable):
    dtype = torch.float64
    x = make_input((3, 3, 2, 3), dtype, fmt).requires_grad_(True)
    gen = torch.Generator().manual_seed(5)
    w = (torch.rand(3, generator=gen, dtype=dtype) + 0.5).requires_grad_(trainable)
    b = torch.randn(3, generator=gen, dtype=dtype).requires_grad_(trainable)
    rm, rv = torch.randn(3, generator=gen, dtype=dtype), torch.rand(3, generator=gen, dtype=dtype) + 0.5
    inputs = (x, w, b) if trainable else (x,)

    def fn(x, *p):
        return frozen_batch_norm(x, rm, rv, *(p if p else (w, b)), 1e-3)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)
    assert_differentiable_backward_agrees(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_frozen_low_precision_is_torch_eval(dtype):
    bn = randomize(nn.BatchNorm2d(3)).eval()
    fz = FrozenBatchNorm2d(3, trainable_affine=True)
    fz.load_state_dict(bn.state_dict())
    x = make_input((4, 3, 3, 3), dtype, torch.channels_last)
    dy = make_input((4, 3, 3, 3), dtype, seed=1)
    for got, expect in zip(run(fz, x, dy), run(bn, x, dy)):
        assert got.dtype == expect.dtype
        torch.testing.assert_close(got, expect, rtol=3e-2, atol=3e-2)


def test_frozen_state_dict_both_ways_and_errors():
    for affine in (True, False):
        bn = randomize(nn.BatchNorm1d(4, affine=affine))
        fz = FrozenBatchNorm1d(4, affine=affine)
        assert list(fz.state_dict()) == list(bn.state_dict())
        fz.load_state_dict(bn.state_dict(), strict=True)
        back = nn.BatchNorm1d(4, affine=affine)
        back.load_state_dict(fz.state_dict(), strict=True)
        for k, v in bn.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
    assert repr(FrozenBatchNorm2d(3)) == "FrozenBatchNorm2d(3, eps=1e-05, affine=True)"
    assert repr(FrozenBatchNorm2d(3, eps=1e-3, bias=False, trainable_affine=True)) == (
        "FrozenBatchNorm2d(3, eps=0.001, affine=True, bias=False, trainable_affine=True)")
    with pytest.raises(ValueError, match="expected affine=True for trainable_affine=True"):
        FrozenBatchNorm2d(3, affine=False, trainable_affine=True)
    fz = randomize(FrozenBatchNorm2d(3, trainable_affine=True))
    fz(make_input((2, 3, 2, 2))).sum().backward()
    snap = snapshot(fz)
    for x, exc, pattern in [
        (torch.randn(2, 3, 4), ValueError, r"expected 4D input \(N, C, H, W\), got 3D input of shape \(2, 3, 4\)"),
        (torch.randn(2, 5, 2, 2), ValueError, "expected input with 3 channels along dim 1, got 5"),
        (torch.ones(2, 3, 2, 2, dtype=torch.int32), TypeError, "expected a floating-point input"),
        (torch.randn(2, 3, 2, 2, dtype=torch.float64), TypeError, "expected weight of the input's dtype"),
    ]:
        with pytest.raises(exc, match=pattern):
            fz(x)
    assert_same_state(fz, snap)
    # one sample is fine: nothing is estimated from the batch
    bn = randomize(nn.BatchNorm1d(3)).eval()
    fz = FrozenBatchNorm1d(3)
    fz.load_state_dict(bn.state_dict())
    x = torch.randn(1, 3)
    close(fz(x), bn(x).detach(), torch.float32, "one sample")


# =========================================================================== freeze / unfreeze


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.bn_torch = nn.BatchNorm2d(4, momentum=0.3, eps=1e-3)
        self.bn_nk = nkn.BatchNorm2d(4, momentum=None, nonfinite="skip")
        self.bn_nobias = nn.BatchNorm2d(4, bias=False)
        self.renorm = BatchRenorm2d(4, rmax=2.0, dmax=1.0, warmup_steps=1, relax_steps=(3, 2))
        self.ghost = GhostBatchNorm2d(4, 2)
        self.shared = nn.BatchNorm1d(4)
        self.head = nn.Sequential(self.shared, nn.ReLU(), nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), self.shared)
        self.bn3 = nn.BatchNorm3d(4)

    def forward(self, x):
        h = self.ghost(self.renorm(self.bn_nk(self.bn_nobias(self.bn_torch(self.conv(x))))))
        v = self.head(h.mean((2, 3)))
        return v.sum() + self.bn3(h.unsqueeze(2)).sum()


def trained_net():
    torch.manual_seed(0)
    net = Net()
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            randomize(m, seed=len(str(m)))
    for step in range(3):
        net(make_input((6, 3, 3, 3), seed=step, offset=step)).backward()
    return net


def test_freeze_carries_values_and_unfreeze_round_trips():
    net = trained_net()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    reprs = {name: repr(m) for name, m in net.named_modules()}
    types = {name: type(m) for name, m in net.named_modules()}
    net.eval()
    x = make_input((5, 3, 3, 3), seed=42)
    expect = net(x).detach()
    net.train()

    frozen = freeze(net)
    assert frozen is net
    kinds = {name: type(m) for name, m in net.named_modules() if isinstance(m, FrozenBatchNorm)}
    assert kinds == {"bn_torch": FrozenBatchNorm2d, "bn_nk": FrozenBatchNorm2d, "bn_nobias": FrozenBatchNorm2d,
                     "renorm": FrozenBatchNorm2d,
                     "ghost": FrozenBatchNorm2d, "shared": FrozenBatchNorm1d, "head.3": FrozenBatchNorm1d,
                     "bn3": FrozenBatchNorm3d}
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    assert net.head[0] is net.head[4] is net.shared  # still one shared layer
    # a training-mode forward of the frozen model is the eval-mode forward of the original, twice
    assert net.training
    for _ in range(2):
        close(net(x).detach(), expect, torch.float32, "frozen model")
    for k, v in net.state_dict().items():
        if "renorm_step" not in k:
            assert torch.equal(v, state[k]), k
    # only the conv and the linear layer are trainable
    assert {n for n, _ in net.named_parameters()} == {"conv.weight", "conv.bias", "head.2.weight", "head.2.bias"}

    back = unfreeze(net)
    assert back is net
    assert {name: type(m) for name, m in net.named_modules()} == types
    assert {name: repr(m) for name, m in net.named_modules()} == reprs  # eps, momentum, rmax, virtual batch ...
    assert net.state_dict().keys() == state.keys()
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert net.bn_nk.nonfinite == "skip" and net.renorm.current_limits() == renorm_limits(3, 2.0, 1.0, 1, (3, 2))
    assert net.head[0] is net.head[4]
    net(make_input((6, 3, 3, 3))).backward()  # trainable again
    assert net.bn_torch.weight.grad is not None and int(net.bn_torch.num_batches_tracked) == int(state["bn_torch.num_batches_tracked"]) + 1


def test_freeze_trainable_affine_keeps_the_parameters():
    net = trained_net()
    params = {n: p for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    freeze(net, trainable_affine=True)
    assert all(p is params[n] for n, p in net.named_parameters())
    before = net.bn_torch.weight.detach().clone()
    stats = net.bn_torch.running_mean.clone()
    opt.zero_grad()
    net(make_input((6, 3, 3, 3))).backward()
    opt.step()
    assert not torch.equal(net.bn_torch.weight.detach(), before)  # the optimizer still reaches it
    assert torch.equal(net.bn_torch.running_mean, stats)
    unfreeze(net)
    assert all(p is params[n] for n, p in net.named_parameters())


def test_freeze_refuses_what_it_cannot_freeze_and_changes_nothing():
    net = nn.Sequential(nn.BatchNorm2d(3), nn.Sequential(nn.BatchNorm2d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match=r"BatchNorm2d at '1.0' expected running statistics to freeze"):
        freeze(net)
    assert type(net[0]) is nn.BatchNorm2d
    lazy = nn.Sequential(nn.LazyBatchNorm1d())
    with pytest.raises(ValueError, match="lazy module"):
        freeze(lazy)
    # a frozen layer of no fixed rank, not made by freeze, has no class to go back to
    with pytest.raises(ValueError, match="class to restore is unknown"):
        unfreeze(nn.Sequential(FrozenBatchNorm2d(3), FrozenBatchNorm(3)))


def test_freeze_sync_batchnorm_and_unfreeze_plain_frozen():
    sync = randomize(nn.SyncBatchNorm(3, momentum=0.2))
    frozen = freeze(sync)
    assert type(frozen) is FrozenBatchNorm
    x = make_input((2, 3, 2, 2, 2))
    bn = nn.BatchNorm3d(3).eval()
    bn.load_state_dict(sync.state_dict())
    close(frozen(x).detach(), bn(x).detach(), torch.float32, "frozen SyncBatchNorm")
    again = unfreeze(frozen)
    assert type(again) is nn.SyncBatchNorm and again.momentum == 0.2
    again.bn_dim = 3  # the rank normkit's convert_sync_batchnorm remembers
    assert type(freeze(again)) is FrozenBatchNorm3d
    # a FrozenBatchNorm2d loaded from a checkpoint becomes normkit's BatchNorm2d
    fz = FrozenBatchNorm2d(3)
    fz.load_state_dict(randomize(nn.BatchNorm2d(3)).state_dict())
    bn2 = unfreeze(fz)
    assert type(bn2) is nkn.BatchNorm2d
    for k, v in fz.state_dict().items():
        assert torch.equal(bn2.state_dict()[k], v), k
    assert isinstance(bn2.weight, nn.Parameter) and bn2.weight.requires_grad


def test_functional_forms_leave_buffers_on_error():
    rm, rv, nbt = torch.randn(3), torch.rand(3) + 0.5, torch.tensor(7)
    keep = [t.clone() for t in (rm, rv, nbt)]
    with pytest.raises(ValueError, match=r"expected running_mean of shape \(3,\), got \(2,\)"):
        ghost_batch_norm(torch.randn(8, 3), 3, torch.zeros(2), rv, training=True)
    with pytest.raises(ValueError, match="needs num_batches_tracked"):
        ghost_batch_norm(torch.randn(8, 3), 3, rm, rv, training=True, momentum=None)
    with pytest.raises(ValueError, match="needs num_batches_tracked"):
        batch_renorm(torch.randn(8, 3), rm, rv, training=True, momentum=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="nonfinite"):
            batch_renorm(torch.randn(8, 3), rm, rv, training=True, num_batches_tracked=nbt, nonfinite="ignore")
    for t, k in zip((rm, rv, nbt), keep):
        assert torch.equal(t, k)
    with pytest.raises(ValueError, match="expected running_mean and running_var tensors"):
        frozen_batch_norm(torch.randn(4, 3), None, rv)
    # eval forms are BatchNorm's inference
    x = make_input((4, 3, 5))
    for f in (lambda: batch_renorm(x, rm, rv), lambda: ghost_batch_norm(x, 2, rm, rv), lambda: frozen_batch_norm(x, rm, rv)):
        close(f(), torch.nn.functional.batch_norm(x, rm, rv), torch.float32, "inference")
    assert copy.deepcopy(BatchRenorm1d(3)).renorm_step is not None


@pytest.mark.parametrize("kind", ["renorm", "ghost", "frozen"])
def test_zero_size_batch_as_torch_batchnorm(kind):
    """An empty batch: an empty output that keeps the graph; counted as torch counts it
    (training BatchNorm counts it, frozen layers never count)."""
    bn = randomize(nn.BatchNorm2d(3))
    m = {"renorm": lambda: BatchRenorm2d(3, warmup_steps=0), "ghost": lambda: GhostBatchNorm2d(3, 2),
         "frozen": lambda: FrozenBatchNorm2d(3, trainable_affine=True)}[kind]()
    m.load_state_dict(bn.state_dict(), strict=True)
    if kind == "frozen":
        bn.eval()
    x = torch.empty(0, 3, 2, 2).to(memory_format=torch.channels_last)
    xl = leaf(x)
    y = m(xl)
    y.sum().backward()
    assert y.shape == x.shape and xl.grad.shape == x.shape
    bn(x)
    for k, v in bn.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["kernels", "torch_path"])
def test_batch_renorm_warmup_ignores_broken_running_statistics(dtype):
    """r = 1, d = 0 in warm-up whatever the running statistics hold (here NaN and Inf): plain BatchNorm."""
    rn = randomize(BatchRenorm1d(3, warmup_steps=5))
    with torch.no_grad():
        rn.running_mean[0] = float("nan")
        rn.running_var[1] = float("inf")
    x = make_input((6, 3, 4), dtype, seed=3)
    y = rn(x)
    expect = torch.nn.functional.batch_norm(x.float(), None, None, rn.weight, rn.bias, True).to(dtype)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, expect, **({} if dtype is torch.float32 else dict(rtol=2e-2, atol=2e-2)))
