"""Tests of normkit.nn (BatchNorm1d/2d/3d, functional.batch_norm, convert) against torch.nn.

torch.nn is the independent reference everywhere: no expected number is written
down here, every expectation is what torch computes for the same input and state.
"""

from __future__ import annotations

import copy
import itertools
import re
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import normkit.nn as nkn  # noqa: E402
from normkit.nn import functional as nkF  # noqa: E402
from normkit.running import NonFiniteBatchError, NonFiniteBatchWarning  # noqa: E402

# --------------------------------------------------------------------------- helpers

TORCH_CLS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
NK_CLS = {1: nkn.BatchNorm1d, 2: nkn.BatchNorm2d, 3: nkn.BatchNorm3d}

TOL = {
    torch.float32: dict(rtol=1e-4, atol=2e-5),
    torch.float64: dict(rtol=1e-9, atol=1e-10),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=4e-2, atol=4e-2),
}

# (name, shape, memory format): every dimensionality, both patterns of the
# kernels (long contiguous runs: L >= 16; short runs: L < 16 and channels-last).
LAYOUTS = [
    ("NC", (8, 3), torch.contiguous_format),
    ("NCL", (4, 3, 20), torch.contiguous_format),
    ("NCL_short", (5, 3, 7), torch.contiguous_format),
    ("NCHW", (4, 3, 5, 4), torch.contiguous_format),
    ("NCHW_short", (4, 3, 3, 3), torch.contiguous_format),
    ("NHWC", (4, 3, 5, 4), torch.channels_last),
    ("NCDHW", (3, 2, 3, 4, 2), torch.contiguous_format),
    ("NDHWC", (3, 2, 3, 4, 2), torch.channels_last_3d),
]
LAYOUT_IDS = [name for name, _, _ in LAYOUTS]


def bn_dim(shape) -> int:
    return {2: 1, 3: 1, 4: 2, 5: 3}[len(shape)]


def make_pair(dim, num_features, dtype=torch.float32, seed=0, param_dtype=None, **kwargs):
    """A torch BatchNorm and a normkit one with identical random state (weight, bias,
    running statistics), so that tests do not pass by the grace of weight=1, bias=0."""
    param_dtype = param_dtype or dtype
    nonfinite = kwargs.pop("nonfinite", None)
    ref = TORCH_CLS[dim](num_features, dtype=param_dtype, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if ref.weight is not None:
            ref.weight.copy_(torch.rand(num_features, generator=gen, dtype=torch.float64) + 0.5)
            ref.bias.copy_(torch.randn(num_features, generator=gen, dtype=torch.float64))
        if ref.running_mean is not None:
            ref.running_mean.copy_(torch.randn(num_features, generator=gen, dtype=torch.float64))
            ref.running_var.copy_(torch.rand(num_features, generator=gen, dtype=torch.float64) + 0.5)
            ref.num_batches_tracked.fill_(3)
    extra = {} if nonfinite is None else {"nonfinite": nonfinite}
    mine = NK_CLS[dim](num_features, dtype=param_dtype, **kwargs, **extra)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def make_input(shape, dtype, fmt=torch.contiguous_format, seed=0, offset=0.5, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset
    return x.to(dtype).contiguous(memory_format=fmt)


def leaf(x):
    """A requires-grad leaf copy keeping ``x``'s strides."""
    return x.detach().clone().requires_grad_(True)


def snapshot(module):
    """Clones of everything an error must leave untouched."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads = {n: (None if p.grad is None else p.grad.clone()) for n, p in module.named_parameters()}
    return state, grads


def assert_same_state(module, snap):
    state, grads = snap
    now = module.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert now[k].dtype == v.dtype, k
        assert torch.equal(now[k], v) or (torch.isnan(now[k]) == torch.isnan(v)).all() and torch.equal(
            torch.nan_to_num(now[k]), torch.nan_to_num(v)
        ), f"{k} changed: {v} -> {now[k]}"
    for n, p in module.named_parameters():
        if grads[n] is None:
            assert p.grad is None, n
        else:
            assert torch.equal(p.grad, grads[n]), n


def assert_close(actual, expected, dtype, what="", equal_nan=False, **override):
    tol = dict(TOL[dtype])
    tol.update(override)
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: {actual} vs {expected}"
        return
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
    torch.testing.assert_close(actual, expected, equal_nan=equal_nan, msg=lambda m: f"{what}: {m}", **tol)


def assert_buffers_equal(mine, ref, dtype, equal_nan=False):
    assert_close(mine.running_mean, ref.running_mean, dtype, "running_mean", equal_nan=equal_nan)
    assert_close(mine.running_var, ref.running_var, dtype, "running_var", equal_nan=equal_nan)
    if ref.num_batches_tracked is None:
        assert mine.num_batches_tracked is None
    else:
        assert mine.num_batches_tracked.dtype == ref.num_batches_tracked.dtype
        assert int(mine.num_batches_tracked) == int(ref.num_batches_tracked)


def step_and_compare(ref, mine, x, dtype, fmt=None, seed=0, check_grads=True, tol=None):
    """One forward (+ backward with a random upstream gradient) through both modules;
    compares output, input gradient and parameter gradients. Returns the outputs."""
    tol = tol or {}
    xr, xm = leaf(x), leaf(x)
    yr, ym = ref(xr), mine(xm)
    assert_close(ym, yr, dtype, "output", **tol)
    if fmt is not None and fmt is not torch.contiguous_format:
        assert ym.is_contiguous(memory_format=fmt), f"output lost {fmt}: strides {ym.stride()}"
    if check_grads:
        gen = torch.Generator().manual_seed(1000 + seed)
        dy = torch.randn(yr.shape, generator=gen, dtype=torch.float64).to(yr.dtype)
        for p in itertools.chain(ref.parameters(), mine.parameters()):
            p.grad = None
        yr.backward(dy)
        ym.backward(dy)
        assert_close(xm.grad, xr.grad, dtype, "input grad", **tol)
        if ref.affine:
            pdt = ref.weight.dtype
            assert_close(mine.weight.grad, ref.weight.grad, pdt if pdt != torch.float32 else dtype,
                         "weight grad", **tol)
            assert_close(mine.bias.grad, ref.bias.grad, pdt if pdt != torch.float32 else dtype,
                         "bias grad", **tol)
    return yr, ym


# --------------------------------------------------------------------------- 1. parity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,shape,fmt", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("momentum", [0.1, None, 1.0], ids=["m0.1", "mNone", "m1"])
@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
def test_parity_train_then_eval(affine, track, momentum, name, shape, fmt, dtype):
    dim, C = bn_dim(shape), shape[1]
    ref, mine = make_pair(dim, C, dtype, affine=affine, track_running_stats=track, momentum=momentum)
    assert mine.training and ref.training
    for step in range(3):
        x = make_input(shape, dtype, fmt, seed=step, offset=0.3 * step)
        step_and_compare(ref, mine, x, dtype, fmt, seed=step)
        assert_buffers_equal(mine, ref, dtype)
    ref.eval()
    mine.eval()
    x = make_input(shape, dtype, fmt, seed=10, offset=1.0)
    step_and_compare(ref, mine, x, dtype, fmt, seed=10)
    assert_buffers_equal(mine, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,shape,fmt", [LAYOUTS[i] for i in (0, 1, 5, 7)], ids=[LAYOUT_IDS[i] for i in (0, 1, 5, 7)])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
def test_parity_track_running_stats_switched_off_after_construction(momentum, name, shape, fmt, dtype):
    """Built with track_running_stats=True, then ``m.track_running_stats = False``:
    torch uses batch statistics in training without touching the buffers or the
    counter, and the (stale) running statistics in eval."""
    dim, C = bn_dim(shape), shape[1]
    ref, mine = make_pair(dim, C, dtype, momentum=momentum)
    x0 = make_input(shape, dtype, fmt, seed=42)
    step_and_compare(ref, mine, x0, dtype, fmt)  # one ordinary tracked step first
    ref.track_running_stats = False
    mine.track_running_stats = False
    before = {k: v.clone() for k, v in ref.state_dict().items()}
    for step in range(2):
        step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=step), dtype, fmt, seed=step)
        assert_buffers_equal(mine, ref, dtype)
    # the reference really did leave its buffers alone: this mode is what is being tested
    assert all(torch.equal(ref.state_dict()[k], v) for k, v in before.items())
    ref.eval()
    mine.eval()
    step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=7, offset=2.0), dtype, fmt, seed=7)
    assert_buffers_equal(mine, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "shape,fmt",
    [((4, 3, 6), torch.contiguous_format), ((3, 4, 5, 6), torch.channels_last),
     ((2, 3, 4, 5, 6), torch.contiguous_format)],
    ids=["3d", "4d_cl", "5d"],
)
def test_parity_input_without_grad(shape, fmt, train, dtype):
    """Only the parameters need gradients (e.g. a first layer): weight/bias grads still match."""
    dim, C = bn_dim(shape), shape[1]
    ref, mine = make_pair(dim, C, dtype)
    ref.train(train)
    mine.train(train)
    x = make_input(shape, dtype, fmt)
    yr, ym = ref(x), mine(x)
    assert_close(ym, yr, dtype, "output")
    dy = torch.randn_like(yr)
    yr.backward(dy)
    ym.backward(dy)
    assert_close(mine.weight.grad, ref.weight.grad, dtype, "weight grad")
    assert_close(mine.bias.grad, ref.bias.grad, dtype, "bias grad")
    assert_buffers_equal(mine, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "shape,fmt",
    [
        ((3, 2, 15), torch.contiguous_format),  # just below the long-run threshold
        ((3, 2, 16), torch.contiguous_format),  # at it
        ((3, 2, 17), torch.contiguous_format),
        ((2, 2, 2 * 16384 + 5), torch.contiguous_format),  # runs split in several chunks
        ((6, 1100), torch.contiguous_format),  # more columns than one column block
        ((2000, 70), torch.contiguous_format),  # several row tasks
        ((40, 70, 3, 4), torch.channels_last),  # channels-last, several row tasks
        ((2, 1, 9, 9), torch.contiguous_format),  # one channel
        ((7, 5, 1, 1), torch.contiguous_format),  # H = W = 1
    ],
    ids=["L15", "L16", "L17", "L_chunks", "wide", "tall", "cl_big", "C1", "HW1"],
)
def test_parity_kernel_partition_boundaries(shape, fmt, dtype):
    dim, C = bn_dim(shape), shape[1]
    ref, mine = make_pair(dim, C, dtype)
    for step in range(2):
        step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=step), dtype, fmt, seed=step)
        assert_buffers_equal(mine, ref, dtype)
    ref.eval()
    mine.eval()
    step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=5), dtype, fmt, seed=5)


@pytest.mark.parametrize("offset", [1e3, -3e4], ids=["1e3", "-3e4"])
def test_float32_large_offset_close_to_float64_torch(offset):
    """Data whose mean dwarfs its spread: normkit's float32 result must be as good as
    float64 torch on the same float32 numbers (up to float32 output rounding)."""
    shape = (8, 3, 6, 6)
    x32 = make_input(shape, torch.float32, offset=offset, scale=1.0)
    ref64, mine32 = make_pair(2, 3, torch.float32)
    ref64 = ref64.double()
    y64 = ref64(x32.double())
    y32 = mine32(x32)
    # |y| ~ a few units; float32 output rounding is ~1e-6; an error of order
    # offset * 2^-24 (~1e-3 .. 2e-3) would mean cancellation was lost.
    torch.testing.assert_close(y32.double(), y64, rtol=0, atol=5e-5)
    torch.testing.assert_close(mine32.running_mean.double(), ref64.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mine32.running_var.double(), ref64.running_var, rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------- 2. non-dense inputs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(
    "base_shape,make_view",
    [
        ((4, 3, 20), lambda t: t[:, :, ::2]),
        ((4, 6, 10), lambda t: t[:, ::2]),
        ((4, 3, 6, 8), lambda t: t[..., ::2]),
        ((4, 3, 6, 8), lambda t: t.transpose(2, 3)),
        ((3, 2, 4, 4, 6), lambda t: t[:, :, 1:, :, ::3]),
        ((8, 3), lambda t: t[::2]),
        ((3, 8), lambda t: t.t()),  # (8, 3) with the channel dim fastest-varying
    ],
    ids=["L_step2", "C_step2", "W_step2", "HW_transposed", "5d_sliced", "N_step2", "2d_transposed"],
)
def test_parity_non_dense_input(base_shape, make_view, dtype):
    base = make_input(base_shape, dtype)
    x = make_view(base)
    assert not x.is_contiguous()
    dim, C = bn_dim(x.shape), x.shape[1]
    ref, mine = make_pair(dim, C, dtype)
    for step in range(2):
        xr = make_view(leaf(make_input(base_shape, dtype, seed=step)))
        xm = make_view(leaf(make_input(base_shape, dtype, seed=step)))
        yr, ym = ref(xr), mine(xm)
        assert_close(ym, yr, dtype, "output")
        dy = torch.randn_like(yr)
        yr.backward(dy)
        ym.backward(dy)
        # the gradient reaches the base tensor through the view
        rbase = xr._base if xr._base is not None else xr
        mbase = xm._base if xm._base is not None else xm
        assert_close(mbase.grad, rbase.grad, dtype, "input grad")
        assert_close(mine.weight.grad, ref.weight.grad, dtype, "weight grad")
        assert_close(mine.bias.grad, ref.bias.grad, dtype, "bias grad")
        ref.zero_grad()
        mine.zero_grad()
        assert_buffers_equal(mine, ref, dtype)
    ref.eval()
    mine.eval()
    assert_close(mine(x), ref(x), dtype, "eval output")


def test_input_is_not_modified():
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = make_input((4, 3, 5, 5), torch.float32, fmt)
        keep = x.clone()
        _, mine = make_pair(2, 3)
        y = mine(leaf(x))
        y.backward(torch.randn_like(y))
        assert torch.equal(x, keep)
        assert x.stride() == keep.stride()


# --------------------------------------------------------------------------- 3. zero-size batches


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize(
    "shape,fmt",
    [((0, 3), torch.contiguous_format), ((0, 3, 5), torch.contiguous_format),
     ((0, 3, 4, 4), torch.contiguous_format), ((0, 3, 4, 4), torch.channels_last),
     ((0, 3, 2, 2, 2), torch.contiguous_format), ((2, 3, 0), torch.contiguous_format)],
    ids=["NC", "NCL", "NCHW", "NHWC", "NCDHW", "L0"],
)
def test_zero_size_batch(shape, fmt, affine, momentum, train):
    dtype = torch.float32
    dim, C = bn_dim(shape), shape[1]
    ref, mine = make_pair(dim, C, dtype, affine=affine, momentum=momentum)
    ref.train(train)
    mine.train(train)
    rm, rv = mine.running_mean.clone(), mine.running_var.clone()
    x = torch.empty(shape, dtype=dtype).contiguous(memory_format=fmt)
    xr, xm = leaf(x), leaf(x)
    yr, ym = ref(xr), mine(xm)
    assert ym.shape == yr.shape == x.shape
    assert ym.dtype == dtype
    assert ym.requires_grad
    assert torch.equal(mine.running_mean, rm) and torch.equal(mine.running_var, rv)
    # torch counts an empty training batch; normkit must do exactly the same
    assert int(mine.num_batches_tracked) == int(ref.num_batches_tracked)
    yr.sum().backward()
    ym.sum().backward()
    assert xm.grad is not None and xm.grad.shape == x.shape
    if affine:
        assert mine.weight.grad is not None and mine.bias.grad is not None
        assert torch.equal(mine.weight.grad, ref.weight.grad)
        assert torch.equal(mine.bias.grad, ref.bias.grad)
    # the next non-empty batch is as torch's (momentum=None depends on the count)
    if train:
        step_and_compare(ref, mine, make_input((4,) + tuple(shape[1:2]) + (3,) * (len(shape) - 2), dtype), dtype)
        assert_buffers_equal(mine, ref, dtype)


# --------------------------------------------------------------------------- 4. gradcheck


def _bn_fn(training, running):
    """A pure function of (x, weight, bias) for gradcheck; running stats cloned on each call
    so the in-place update in training does not leak between evaluations."""

    def fn(x, *params):
        w, b = params if params else (None, None)
        rm = None if running is None else running[0].clone()
        rv = None if running is None else running[1].clone()
        return nkF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)

    return fn


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contig", "cl"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("mode", ["train", "train_no_running", "eval"])
def test_gradcheck_and_gradgradcheck(mode, affine, fmt):
    dtype = torch.float64
    gen = torch.Generator().manual_seed(3)
    x = make_input((4, 3, 3, 3), dtype, fmt).requires_grad_(True)
    params = ()
    if affine:
        params = (
            (torch.rand(3, generator=gen, dtype=dtype) + 0.5).requires_grad_(True),
            torch.randn(3, generator=gen, dtype=dtype).requires_grad_(True),
        )
    running = None
    if mode != "train_no_running":
        running = (torch.randn(3, generator=gen, dtype=dtype), torch.rand(3, generator=gen, dtype=dtype) + 0.5)
    fn = _bn_fn(mode != "eval", running)
    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradgradcheck(fn, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["contig", "cl"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_double_backward_matches_torch(dtype, train, fmt):
    ref, mine = make_pair(2, 3, dtype)
    ref.train(train)
    mine.train(train)
    x = make_input((4, 3, 5, 4), dtype, fmt)
    dy = make_input((4, 3, 5, 4), dtype, fmt, seed=9)
    c = make_input((4, 3, 5, 4), dtype, seed=11)
    results = []
    for m in (ref, mine):
        xl = leaf(x)
        y = m(xl)
        (gx,) = torch.autograd.grad((y * dy).sum(), xl, create_graph=True)
        # some scalar function of the gradient
        s = (gx * gx).sum() + (gx * c).sum() + gx.pow(3).mean()
        s.backward()
        results.append((gx.detach(), xl.grad, m.weight.grad, m.bias.grad))
    for what, r, n in zip(("first-order grad", "x grad", "weight grad", "bias grad"), *results):
        if r is None or n is None:
            # a gradient that does not depend on the parameter may be None or zeros
            other = n if r is None else r
            assert other is None or torch.count_nonzero(other) == 0, what
        else:
            assert_close(n, r, dtype, what, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


# --------------------------------------------------------------------------- 5. half precision


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize(
    "shape,fmt",
    [((8, 3), torch.contiguous_format), ((4, 3, 20), torch.contiguous_format),
     ((4, 3, 5, 4), torch.contiguous_format), ((4, 3, 5, 4), torch.channels_last),
     ((3, 2, 3, 4, 2), torch.channels_last_3d)],
    ids=["NC", "NCL", "NCHW", "NHWC", "NDHWC"],
)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
def test_low_precision_input_float32_params(momentum, shape, fmt, dtype):
    dim, C = bn_dim(shape), shape[1]
    ref, mine = make_pair(dim, C, dtype, param_dtype=torch.float32, momentum=momentum)
    assert mine.weight.dtype == torch.float32
    for step in range(3):
        x = make_input(shape, dtype, fmt, seed=step)
        xr, xm = leaf(x), leaf(x)
        yr, ym = ref(xr), mine(xm)
        assert ym.dtype == dtype
        if fmt is not torch.contiguous_format:
            assert ym.is_contiguous(memory_format=fmt)
        assert_close(ym, yr, dtype, "output")
        dy = make_input(shape, dtype, seed=100 + step)
        ref.zero_grad()
        mine.zero_grad()
        yr.backward(dy)
        ym.backward(dy)
        assert xm.grad.dtype == dtype
        assert_close(xm.grad, xr.grad, dtype, "input grad")
        # parameter grads are float32 sums over a low-precision upstream gradient
        assert_close(mine.weight.grad, ref.weight.grad, torch.float32, "weight grad", rtol=3e-2, atol=3e-2)
        assert_close(mine.bias.grad, ref.bias.grad, torch.float32, "bias grad", rtol=3e-2, atol=3e-2)
        assert_close(mine.running_mean, ref.running_mean, torch.float32, "running_mean", rtol=1e-2, atol=1e-2)
        assert_close(mine.running_var, ref.running_var, torch.float32, "running_var", rtol=1e-2, atol=1e-2)
        assert int(mine.num_batches_tracked) == int(ref.num_batches_tracked)
    ref.eval()
    mine.eval()
    x = make_input(shape, dtype, fmt, seed=50)
    ym = mine(x)
    assert ym.dtype == dtype
    assert_close(ym, ref(x), dtype, "eval output")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_low_precision_module_and_input(dtype):
    """Module and input both in the low-precision dtype (module.to(dtype))."""
    ref, mine = make_pair(2, 3, torch.float32)
    ref, mine = ref.to(dtype), mine.to(dtype)
    x = make_input((4, 3, 6, 6), dtype)
    xr, xm = leaf(x), leaf(x)
    yr, ym = ref(xr), mine(xm)
    assert ym.dtype == dtype
    assert_close(ym, yr, dtype, "output")
    assert_close(mine.running_mean, ref.running_mean, dtype, "running_mean")
    assert_close(mine.running_var, ref.running_var, dtype, "running_var")


# --------------------------------------------------------------------------- 6. state_dict, isinstance


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_isinstance_of_torch_class(dim):
    m = NK_CLS[dim](3)
    assert isinstance(m, TORCH_CLS[dim])
    assert isinstance(m, nn.modules.batchnorm._BatchNorm)


@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_state_dict_round_trip(dim, affine, track):
    shape = {1: (6, 4, 5), 2: (6, 4, 3, 3), 3: (3, 4, 2, 3, 2)}[dim]
    src = TORCH_CLS[dim](4, affine=affine, track_running_stats=track)
    src.train()
    for s in range(3):  # give it non-default state
        src(make_input(shape, torch.float32, seed=s))
    if affine:
        with torch.no_grad():
            src.weight.uniform_(0.5, 1.5)
            src.bias.normal_()
    # torch -> normkit
    mine = NK_CLS[dim](4, affine=affine, track_running_stats=track)
    mine.load_state_dict(src.state_dict(), strict=True)
    assert list(mine.state_dict().keys()) == list(src.state_dict().keys())
    for k, v in src.state_dict().items():
        assert torch.equal(mine.state_dict()[k], v), k
        assert mine.state_dict()[k].dtype == v.dtype, k
    src.eval()
    mine.eval()
    x = make_input(shape, torch.float32, seed=99)
    assert_close(mine(x), src(x), torch.float32, "eval output after load")
    # normkit -> torch
    mine.train()
    mine(make_input(shape, torch.float32, seed=7))
    back = TORCH_CLS[dim](4, affine=affine, track_running_stats=track)
    back.load_state_dict(mine.state_dict(), strict=True)
    for k, v in mine.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # the extra constructor keyword is not part of the state
    other = NK_CLS[dim](4, affine=affine, track_running_stats=track, nonfinite="skip")
    assert list(other.state_dict().keys()) == list(src.state_dict().keys())


# --------------------------------------------------------------------------- 7. convert


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.inner = nn.ModuleList([nn.ReLU(), nn.BatchNorm2d(4, affine=False)])

    def forward(self, x):
        x = self.bn(self.conv(x))
        for m in self.inner:
            x = m(x)
        return x


class _MyBN(nn.BatchNorm2d):
    """A user subclass: not an exact torch class, so convert must leave it alone."""


def _model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4, momentum=None),
        nn.ReLU(),
        _Block(),
        _MyBN(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 6),
        nn.BatchNorm1d(6),
        nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5, track_running_stats=False)),
    )
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
    return model


def _bn_types(model):
    return [type(m) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_convert_to_normkit_and_back():
    model = _model()
    ref = copy.deepcopy(model)
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    torch_types = _bn_types(model)
    model[3].bn.eval()  # a mixed training mode must survive conversion
    ref[3].bn.eval()
    out = nkn.convert(model)
    assert out is model
    types = _bn_types(model)
    expected = [
        nkn.BatchNorm2d, nkn.BatchNorm2d, nkn.BatchNorm2d, _MyBN, nkn.BatchNorm1d, nkn.BatchNorm1d,
    ]
    assert types == expected
    # the very same Parameter and buffer objects
    assert dict(model.named_parameters()).keys() == params.keys()
    for k, p in model.named_parameters():
        assert p is params[k], k
    for k, b in model.named_buffers():
        assert b is buffers[k], k
    assert model.training and not model[3].bn.training and model[1].training
    assert model[1].momentum is None and model[9][1].track_running_stats is False
    # outputs, train (updating both models' statistics) then eval
    for step in range(2):
        x = make_input((4, 3, 5, 5), torch.float32, seed=step)
        assert_close(model(x), ref(x), torch.float32, f"train output {step}")
    for (k, a), (k2, b) in zip(model.state_dict().items(), ref.state_dict().items()):
        assert k == k2
        if a.is_floating_point():
            assert_close(a, b, a.dtype, k)
        else:
            assert torch.equal(a, b), k
    model.eval()
    ref.eval()
    x = make_input((4, 3, 5, 5), torch.float32, seed=9)
    assert_close(model(x), ref(x), torch.float32, "eval output")
    # back to torch
    model.train()
    back = nkn.convert(model, to="torch")
    assert back is model
    assert _bn_types(model) == torch_types
    for k, p in model.named_parameters():
        assert p is params[k], k
    ref.train()
    x = make_input((4, 3, 5, 5), torch.float32, seed=3)
    assert_close(model(x), ref(x), torch.float32, "train output after converting back")


def test_convert_preserves_training_mode_of_each_layer():
    model = _model()
    model[1].eval()
    model[8].eval()
    nkn.convert(model)
    modes = {n: m.training for n, m in model.named_modules()}
    assert modes["1"] is False and modes["8"] is False and modes["3.bn"] is True
    nkn.convert(model, to="torch")
    assert {n: m.training for n, m in model.named_modules()} == modes


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_convert_bare_module(dim):
    bn = TORCH_CLS[dim](5, eps=1e-3, momentum=0.3, affine=True)
    bn.eval()
    new = nkn.convert(bn)
    assert type(new) is NK_CLS[dim]
    assert new.weight is bn.weight and new.bias is bn.bias
    assert new.running_mean is bn.running_mean and new.running_var is bn.running_var
    assert new.num_batches_tracked is bn.num_batches_tracked
    assert new.eps == 1e-3 and new.momentum == 0.3 and not new.training
    back = nkn.convert(new, to="torch")
    assert type(back) is TORCH_CLS[dim]
    assert back.weight is bn.weight
    # converting what is already there is a no-op
    assert nkn.convert(new, to="normkit") is new
    assert nkn.convert(bn, to="torch") is bn


@pytest.mark.parametrize("to", ["numba", "Torch", "", None])
def test_convert_bad_target(to):
    model = _model()
    types = _bn_types(model)
    with pytest.raises(ValueError, match=r"to="):
        nkn.convert(model, to=to)
    assert _bn_types(model) == types


def test_optimizer_built_before_convert_still_trains_model():
    model = _model()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt_ref = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    nkn.convert(model)
    bn_weight = model[1].weight
    start = bn_weight.detach().clone()
    for step in range(3):
        x = make_input((4, 3, 5, 5), torch.float32, seed=step)
        target = torch.randn(4, 5, generator=torch.Generator().manual_seed(step))
        for m, o in ((model, opt), (ref, opt_ref)):
            o.zero_grad()
            loss = ((m(x) - target) ** 2).mean()
            loss.backward()
            o.step()
    assert model[1].weight is bn_weight
    assert not torch.equal(bn_weight.detach(), start), "the optimizer did not update the converted BN"
    for (k, a), (_, b) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


# --------------------------------------------------------------------------- 8. errors leave state unchanged


def _trained_module(dim, C=3, **kwargs):
    _, mine = make_pair(dim, C, **kwargs)
    shape = {1: (4, C, 5), 2: (4, C, 3, 3), 3: (2, C, 2, 2, 3)}[dim]
    y = mine(make_input(shape, mine.weight.dtype if mine.weight is not None else torch.float32))
    y.sum().backward()  # give the parameters a .grad, which must not be touched either
    return mine


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "dim,shape",
    [(1, (4, 3, 2, 2)), (1, (3,)), (2, (4, 3, 5)), (2, (2, 3, 2, 2, 2)), (3, (2, 3, 4, 4)), (3, (2, 3))],
)
def test_error_wrong_ndim(dim, shape, train):
    m = _trained_module(dim)
    m.train(train)
    snap = snapshot(m)
    want = {1: r"2D or 3D", 2: r"4D", 3: r"5D"}[dim]
    pattern = rf"expected {want} input.*got {len(shape)}D input of shape {re.escape(str(tuple(shape)))}"
    with pytest.raises(ValueError, match=pattern):
        m(torch.randn(shape))
    assert_same_state(m, snap)


CHANNEL_MISMATCH = [(1, (4, 5)), (1, (4, 2, 6)), (2, (4, 4, 3, 3)), (3, (2, 1, 2, 2, 2))]


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dim,shape", CHANNEL_MISMATCH)
def test_error_channel_mismatch_leaves_state_unchanged(dim, shape, train):
    m = _trained_module(dim)
    m.train(train)
    snap = snapshot(m)
    with pytest.raises(ValueError):
        m(torch.randn(shape))
    assert_same_state(m, snap)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dim,shape", CHANNEL_MISMATCH + [(0, (4, 5, 2))])
def test_error_channel_mismatch_message(dim, shape, train):
    pattern = rf"expected input with 3 channels along dim 1, got {shape[1]}"
    if dim == 0:  # the functional form, with 3-channel running statistics and parameters
        with pytest.raises(ValueError, match=pattern):
            nkF.batch_norm(torch.randn(shape), torch.zeros(3), torch.ones(3), torch.ones(3), torch.zeros(3), train)
        return
    m = _trained_module(dim)
    m.train(train)
    with pytest.raises(ValueError, match=pattern):
        m(torch.randn(shape))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_error_non_floating_input(dtype, train):
    m = _trained_module(2)
    m.train(train)
    snap = snapshot(m)
    x = torch.ones((4, 3, 3, 3)).to(dtype)
    with pytest.raises(TypeError, match="expected a floating-point input"):
        m(x)
    assert_same_state(m, snap)


@pytest.mark.parametrize("dim,shape", [(1, (1, 3)), (1, (1, 3, 1)), (2, (1, 3, 1, 1)), (3, (1, 3, 1, 1, 1))])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
def test_error_one_value_per_channel_in_training(dim, shape, momentum):
    m = _trained_module(dim, momentum=momentum)
    snap = snapshot(m)
    with pytest.raises(ValueError, match="expected more than 1 value per channel when training"):
        m(torch.randn(shape))
    assert_same_state(m, snap)  # torch would have counted the batch; normkit must not
    # not an error in eval mode, and the same result as torch there
    ref = TORCH_CLS[dim](3, momentum=momentum)
    ref.load_state_dict(m.state_dict())
    m.eval()
    ref.eval()
    x = torch.randn(shape)
    assert_close(m(x), ref(x), torch.float32, "eval output")


def test_one_value_per_channel_without_running_stats_in_eval_like_torch():
    """track_running_stats=False uses batch statistics in eval too: torch refuses a
    single value per channel there as well."""
    ref = nn.BatchNorm1d(3, track_running_stats=False).eval()
    mine = nkn.BatchNorm1d(3, track_running_stats=False).eval()
    x = torch.randn(1, 3)
    with pytest.raises(ValueError):
        ref(x)
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        mine(x)


@pytest.mark.parametrize("which", ["running_mean", "running_var", "weight", "bias"])
@pytest.mark.parametrize("bad", [(4,), (2,), (3, 1)], ids=["4", "2", "3x1"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_error_wrong_parameter_or_buffer_shape(which, bad, train):
    m = _trained_module(2)
    m.train(train)
    if which.startswith("running"):
        setattr(m, which, torch.ones(bad))
    else:
        setattr(m, which, nn.Parameter(torch.ones(bad)))
    snap = snapshot(m)
    with pytest.raises(ValueError, match=rf"expected {which} of shape \(3,\), got {re.escape(str(bad))}"):
        m(make_input((4, 3, 3, 3), torch.float32))
    assert_same_state(m, snap)


@pytest.mark.parametrize(
    "module_dtype,input_dtype",
    [(torch.float64, torch.float32), (torch.float32, torch.float64), (torch.float16, torch.float32),
     (torch.bfloat16, torch.float64)],
)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_error_weight_dtype_differs_from_float_input(module_dtype, input_dtype, train):
    m = _trained_module(2).to(module_dtype)
    m.train(train)
    snap = snapshot(m)
    with pytest.raises(TypeError, match="expected weight"):
        m(make_input((4, 3, 3, 3), input_dtype))
    assert_same_state(m, snap)


def test_error_invalid_nonfinite_policy():
    with pytest.raises(ValueError, match="nonfinite"):
        nkn.BatchNorm2d(3, nonfinite="ignore")
    rm, rv = torch.zeros(3), torch.ones(3)
    nbt = torch.tensor(5)
    with pytest.raises(ValueError, match="nonfinite"):
        nkF.batch_norm(torch.randn(4, 3), rm, rv, training=True, num_batches_tracked=nbt, nonfinite="nope")
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3)) and int(nbt) == 5


@pytest.mark.parametrize(
    "kwargs,exc,pattern",
    [
        (dict(x_shape=(4, 5)), ValueError, None),  # message: see test_error_channel_mismatch_message
        (dict(x_shape=(1, 3)), ValueError, "expected more than 1 value per channel when training"),
        (dict(rm_shape=(4,)), ValueError, r"expected running_mean of shape \(3,\), got \(4,\)"),
        (dict(rv_shape=(2,)), ValueError, r"expected running_var of shape \(3,\), got \(2,\)"),
        (dict(x_dtype=torch.int32), TypeError, "expected a floating-point input"),
        (dict(w_dtype=torch.float64), TypeError, "expected weight"),
        (dict(momentum=None, nbt=False), ValueError, "num_batches_tracked"),
    ],
    ids=["channels", "one_value", "rm_shape", "rv_shape", "int_input", "weight_dtype", "cma_without_count"],
)
def test_functional_errors_leave_buffers_unchanged(kwargs, exc, pattern):
    x = torch.randn(kwargs.get("x_shape", (4, 3, 5))).to(kwargs.get("x_dtype", torch.float32))
    rm = torch.randn(kwargs.get("rm_shape", (3,)))
    rv = torch.rand(kwargs.get("rv_shape", (3,))) + 0.5
    w = torch.rand(3, dtype=kwargs.get("w_dtype", torch.float32))
    b = torch.randn(3)
    nbt = torch.tensor(4) if kwargs.get("nbt", True) else None
    keep = [t.clone() for t in (rm, rv, w, b)] + ([nbt.clone()] if nbt is not None else [])
    with pytest.raises(exc, match=pattern):
        nkF.batch_norm(x, rm, rv, w, b, True, kwargs.get("momentum", 0.1), 1e-5, num_batches_tracked=nbt)
    after = [rm, rv, w, b] + ([nbt] if nbt is not None else [])
    for a, k in zip(after, keep):
        assert torch.equal(a, k)


# --------------------------------------------------------------------------- functional parity


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("with_w,with_b", [(True, True), (True, False), (False, True), (False, False)],
                         ids=["wb", "w", "b", "none"])
def test_functional_matches_torch_functional(with_w, with_b, training, dtype):
    gen = torch.Generator().manual_seed(0)
    x = make_input((5, 3, 4, 3), dtype, torch.channels_last)
    w = (torch.rand(3, generator=gen, dtype=dtype) + 0.5) if with_w else None
    b = torch.randn(3, generator=gen, dtype=dtype) if with_b else None
    rm0 = torch.randn(3, generator=gen, dtype=dtype)
    rv0 = torch.rand(3, generator=gen, dtype=dtype) + 0.5
    outs = []
    for f in (torch.nn.functional.batch_norm, nkF.batch_norm):
        xl = leaf(x)
        wl = None if w is None else leaf(w)
        bl = None if b is None else leaf(b)
        rm, rv = rm0.clone(), rv0.clone()
        y = f(xl, rm, rv, wl, bl, training, 0.2, 1e-3)
        y.backward(make_input(y.shape, dtype, seed=3))
        outs.append((y, xl.grad, None if wl is None else wl.grad, None if bl is None else bl.grad, rm, rv))
    for what, r, n in zip(("y", "dx", "dw", "db", "running_mean", "running_var"), *outs):
        assert_close(n, r, dtype, what)


# --------------------------------------------------------------------------- 9. non-finite policies


def _bad_batch(shape, kind, dtype=torch.float32, fmt=torch.contiguous_format, pos=None):
    x = make_input(shape, torch.float64, seed=77)
    value = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}[kind]
    # a value inside channel 1, not the first one of the channel
    pos = pos if pos is not None else (1, 1) + (1,) * (len(shape) - 2)
    x[pos] = value
    return x.to(dtype).contiguous(memory_format=fmt)


NONFINITE_CASES = [
    ((6, 3), torch.contiguous_format, torch.float32),
    ((4, 3, 5, 4), torch.contiguous_format, torch.float32),
    ((4, 3, 5, 4), torch.channels_last, torch.float64),
    ((4, 3, 20), torch.contiguous_format, torch.float16),
]
NONFINITE_IDS = ["NC_f32", "NCHW_f32", "NHWC_f64", "NCL_f16"]


def _nonfinite_pair(shape, dtype, momentum, policy):
    pdt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    return make_pair(bn_dim(shape), shape[1], pdt, momentum=momentum, nonfinite=policy)


@pytest.mark.parametrize(
    "shape,fmt,dtype,kind",
    [
        pytest.param(*case, kind, id=f"{cid}-{kind}",
                     )
        for case, cid in zip(NONFINITE_CASES, NONFINITE_IDS)
        for kind in ("nan", "inf", "-inf")
    ],
)
def test_nonfinite_propagate_is_torch(shape, fmt, dtype, kind):
    ref, mine = _nonfinite_pair(shape, dtype, 0.1, "propagate")
    x = _bad_batch(shape, kind, dtype, fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteBatchWarning)  # propagate never warns
        ym = mine(x)
    yr = ref(x)
    assert_close(ym, yr, dtype, "output", equal_nan=True)
    assert torch.isnan(mine.running_var[1]), "the poisoned channel must be NaN, as in torch"
    assert_buffers_equal(mine, ref, ref.running_mean.dtype, equal_nan=True)
    # the other channels stay finite and equal torch's
    assert torch.isfinite(mine.running_mean[[0, 2]]).all()


@pytest.mark.parametrize("kind", ["inf", "-inf"])
def test_nonfinite_propagate_inf_as_first_value_of_channel_is_torch(kind):
    shape = (4, 3, 5)
    ref, mine = _nonfinite_pair(shape, torch.float32, 0.1, "propagate")
    x = _bad_batch(shape, kind, pos=(0, 1, 0))
    yr, ym = ref(x), mine(x)
    assert_close(ym, yr, torch.float32, "output", equal_nan=True)
    assert_buffers_equal(mine, ref, torch.float32, equal_nan=True)


@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("shape,fmt,dtype", NONFINITE_CASES, ids=NONFINITE_IDS)
def test_nonfinite_skip(shape, fmt, dtype, kind, momentum):
    ref, mine = _nonfinite_pair(shape, dtype, momentum, "skip")
    pdt = ref.running_mean.dtype
    clean = [make_input(shape, dtype, fmt, seed=s) for s in range(2)]
    # normkit sees clean, bad, clean; torch only the clean ones
    step_and_compare(ref, mine, clean[0], dtype, fmt, check_grads=False)
    snap = snapshot(mine)
    bad = _bad_batch(shape, kind, dtype, fmt)
    xm = leaf(bad)
    with pytest.warns(NonFiniteBatchWarning, match="non-finite"):
        ym = mine(xm)
    assert_same_state(mine, snap)
    # the output of the bad batch is still computed, as torch computes it
    with torch.no_grad():
        yr = copy.deepcopy(ref)(bad)
    assert_close(ym, yr, dtype, "output of the skipped batch", equal_nan=True)
    ym.sum().backward()  # and its backward runs
    step_and_compare(ref, mine, clean[1], dtype, fmt, check_grads=False)
    assert_buffers_equal(mine, ref, pdt)


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("shape,fmt,dtype", NONFINITE_CASES, ids=NONFINITE_IDS)
def test_nonfinite_raise(shape, fmt, dtype, kind):
    ref, mine = _nonfinite_pair(shape, dtype, None, "raise")
    step_and_compare(ref, mine, make_input(shape, dtype, fmt), dtype, fmt, check_grads=False)
    snap = snapshot(mine)
    with pytest.raises(NonFiniteBatchError):
        mine(_bad_batch(shape, kind, dtype, fmt))
    assert_same_state(mine, snap)
    # the module is still usable and still in step with torch
    step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=1), dtype, fmt)
    assert_buffers_equal(mine, ref, ref.running_mean.dtype)


@pytest.mark.parametrize("policy", ["skip", "raise"])
@pytest.mark.parametrize("setup", ["eval", "no_running_stats"])
def test_nonfinite_policy_only_concerns_running_stat_updates(policy, setup):
    """Nothing is folded into running statistics in eval mode or without them: the
    policies have nothing to refuse, and the NaN output is torch's."""
    track = setup != "no_running_stats"
    ref, mine = make_pair(2, 3, track_running_stats=track, nonfinite=policy)
    if setup == "eval":
        ref.eval()
        mine.eval()
    snap = snapshot(mine)
    x = _bad_batch((4, 3, 3, 3), "nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteBatchWarning)
        ym = mine(x)
    assert_close(ym, ref(x), torch.float32, "output", equal_nan=True)
    assert_same_state(mine, snap)


def test_nonfinite_policy_in_repr_and_functional():
    assert "nonfinite='skip'" in repr(nkn.BatchNorm1d(3, nonfinite="skip"))
    assert "nonfinite" not in repr(nkn.BatchNorm1d(3))
    rm, rv, nbt = torch.zeros(3), torch.ones(3), torch.tensor(2)
    x = _bad_batch((5, 3), "nan")
    with pytest.warns(NonFiniteBatchWarning):
        nkF.batch_norm(x, rm, rv, training=True, num_batches_tracked=nbt, nonfinite="skip")
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3)) and int(nbt) == 2
    with pytest.raises(NonFiniteBatchError):
        nkF.batch_norm(x, rm, rv, training=True, num_batches_tracked=nbt, nonfinite="raise")
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3)) and int(nbt) == 2


def test_convert_keeps_a_shared_layer_shared_and_finds_every_slot():
    shared = nn.BatchNorm2d(3)
    model = nn.Sequential(shared, nn.ReLU(), shared)  # one layer registered twice
    out = nkn.convert(model)
    assert type(out[0]) is nkn.BatchNorm2d and out[0] is out[2]
    assert out[0].weight is shared.weight
