"""normkit.nn LayerNorm, RMSNorm, GroupNorm, InstanceNorm1d/2d/3d (and their functionals) against torch.nn.

torch.nn is the independent reference: no expected number is written down here;
every expectation is what torch computes for the same input and state, or an
identity between two normkit layers that run on different kernels (GroupNorm(1, C)
= LayerNorm, GroupNorm(C, C) = InstanceNorm), or finite differences (gradcheck).
"""

from __future__ import annotations

import inspect
import itertools
import warnings

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import normkit.kernels.grouped as grouped_kernels  # noqa: E402
import normkit.kernels.rowwise as rowwise_kernels  # noqa: E402
import normkit.nn as nkn  # noqa: E402
import normkit.nn.functional as nk_functional  # noqa: E402
from normkit.nn import functional_family as FF  # noqa: E402
from normkit.nn.convert import convert  # noqa: E402
from normkit.nn.groupnorm import GroupNorm  # noqa: E402
from normkit.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d  # noqa: E402
from normkit.nn.layernorm import LayerNorm, RMSNorm  # noqa: E402


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

# --------------------------------------------------------------------------- helpers

PAIRS = {
    "LayerNorm": (nn.LayerNorm, LayerNorm),
    "RMSNorm": (nn.RMSNorm, RMSNorm),
    "GroupNorm": (nn.GroupNorm, GroupNorm),
    "InstanceNorm1d": (nn.InstanceNorm1d, InstanceNorm1d),
    "InstanceNorm2d": (nn.InstanceNorm2d, InstanceNorm2d),
    "InstanceNorm3d": (nn.InstanceNorm3d, InstanceNorm3d),
}

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
KERNEL_DTYPES = [F32, F64]
HALF_DTYPES = [F16, BF16]
DT_IDS = {F32: "f32", F64: "f64", F16: "f16", BF16: "bf16"}

TOL = {
    F32: dict(rtol=1e-4, atol=2e-5),
    F64: dict(rtol=1e-9, atol=1e-10),
    F16: dict(rtol=1e-2, atol=1e-2),
    BF16: dict(rtol=4e-2, atol=4e-2),
}
CL = torch.channels_last
CL3 = torch.channels_last_3d
CONTIG = torch.contiguous_format


def randomize(module, seed=0):
    """Random parameters and running statistics, so no test passes by the grace of 1 and 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in itertools.chain(module.named_parameters(), module.named_buffers()):
            if name == "num_batches_tracked":
                t.fill_(3)
            elif name == "running_var" or name == "weight":
                t.copy_(torch.rand(t.shape, generator=gen, dtype=torch.float64) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64))
    return module


def make_pair(name, *args, dtype=F32, seed=0, **kwargs):
    """A torch layer and the normkit one with the same (random) state."""
    torch_cls, nk_cls = PAIRS[name]
    ref = randomize(torch_cls(*args, dtype=dtype, **kwargs), seed)
    mine = nk_cls(*args, dtype=dtype, **kwargs)
    mine.load_state_dict(ref.state_dict())
    return ref, mine


def make_input(shape, dtype, fmt=CONTIG, seed=0, offset=0.5, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale + offset
    return x.to(dtype).contiguous(memory_format=fmt)


def leaf(x):
    return x.detach().clone().requires_grad_(True)


def assert_close(actual, expected, dtype, what="", **override):
    if expected is None or actual is None:
        assert actual is None and expected is None, f"{what}: {actual} vs {expected}"
        return
    tol = dict(TOL[dtype])
    tol.update(override)
    if dtype in HALF_DTYPES:  # half-precision sums: tolerance relative to the magnitude
        tol["atol"] = tol["atol"] * max(1.0, float(expected.detach().abs().max()))
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} vs {expected.dtype}"
    torch.testing.assert_close(actual, expected, msg=lambda m: f"{what}: {m}", **tol)


def assert_same_state(ref, mine, dtype):
    rs, ms = ref.state_dict(), mine.state_dict()
    assert list(rs.keys()) == list(ms.keys())
    for k in rs:
        if k == "num_batches_tracked":
            assert torch.equal(rs[k], ms[k]), k
        else:
            assert_close(ms[k], rs[k], dtype, k)


def step_and_compare(ref, mine, x, dtype, seed=0, fmt=None):
    """Forward (+ backward with a random upstream gradient) through both; compares the
    output, its memory format, the input and parameter gradients, and the state."""
    xr, xm = leaf(x), leaf(x)
    yr, ym = ref(xr), mine(xm)
    assert_close(ym, yr, dtype, "output")
    if fmt is not None and fmt is not CONTIG:
        assert ym.is_contiguous(memory_format=fmt), f"output lost {fmt}: strides {ym.stride()}"
    gen = torch.Generator().manual_seed(1000 + seed)
    dy = torch.randn(yr.shape, generator=gen, dtype=torch.float64).to(yr.dtype)
    ref.zero_grad()
    mine.zero_grad()
    yr.backward(dy)
    ym.backward(dy)
    assert_close(xm.grad, xr.grad, dtype, "input grad")
    for (n, pr), (_, pm) in zip(ref.named_parameters(), mine.named_parameters()):
        assert_close(pm.grad, pr.grad, pr.dtype if pr.dtype != F32 else dtype, f"{n} grad")
    assert_same_state(ref, mine, dtype)
    return yr, ym


def snapshot(module):
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in module.named_parameters()}
    return state, grads


def assert_unchanged(module, snap):
    state, grads = snap
    now = module.state_dict()
    assert now.keys() == state.keys()
    for k, v in state.items():
        assert torch.equal(now[k], v), f"{k} changed"
    for n, p in module.named_parameters():
        assert (p.grad is None) if grads[n] is None else torch.equal(p.grad, grads[n]), n


# --------------------------------------------------------------------------- 1. drop-in: signatures, state_dict


@pytest.mark.parametrize("name", list(PAIRS))
def test_signature_and_subclass(name):
    torch_cls, nk_cls = PAIRS[name]
    assert issubclass(nk_cls, torch_cls)
    want = inspect.signature(torch_cls.__init__).parameters
    got = inspect.signature(nk_cls.__init__).parameters
    assert list(got) == list(want)
    for p in want:
        assert (got[p].default, got[p].kind) == (want[p].default, want[p].kind), p


STATE_CASES = [
    ("LayerNorm", ((3, 4),), {}),
    ("LayerNorm", (5,), {"bias": False}),
    ("LayerNorm", (5,), {"elementwise_affine": False}),
    ("RMSNorm", ((2, 3),), {}),
    ("RMSNorm", (4,), {"elementwise_affine": False, "eps": 1e-3}),
    ("GroupNorm", (2, 6), {}),
    ("GroupNorm", (3, 6), {"affine": False}),
    ("GroupNorm", (3, 6), {"bias": False}),
    ("InstanceNorm1d", (4,), {}),
    ("InstanceNorm2d", (4,), {"affine": True}),
    ("InstanceNorm3d", (4,), {"affine": True, "track_running_stats": True}),
    ("InstanceNorm2d", (4,), {"track_running_stats": True, "momentum": None}),
]


@pytest.mark.parametrize("name,args,kwargs", STATE_CASES, ids=[f"{n}{a}{k}" for n, a, k in STATE_CASES])
def test_state_dict_both_ways(name, args, kwargs):
    torch_cls, nk_cls = PAIRS[name]
    ref = randomize(torch_cls(*args, **kwargs), seed=3)
    mine = nk_cls(*args, **kwargs)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in ref.named_parameters()]
    assert [n for n, _ in mine.named_buffers()] == [n for n, _ in ref.named_buffers()]
    mine.load_state_dict(ref.state_dict())  # strict, torch -> normkit
    back = torch_cls(*args, **kwargs)
    back.load_state_dict(mine.state_dict())  # strict, normkit -> torch
    for k, v in ref.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    assert repr(mine).split("(", 1)[1] == repr(ref).split("(", 1)[1]


# --------------------------------------------------------------------------- 2. parity with torch.nn

ALL_DTYPES = KERNEL_DTYPES + HALF_DTYPES

LN_CASES = [  # (input shape, normalized_shape, memory format)
    ((6, 10), 10, CONTIG),
    ((3, 4, 7), (4, 7), CONTIG),
    ((2, 3, 5, 4), (3, 5, 4), CL),  # channels-last rows: copied, as torch
    ((2, 3, 5, 4), (4,), CL),
    ((9,), (9,), CONTIG),  # no leading dims
    ((3, 40), [40], CONTIG),
]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape,ns,fmt", LN_CASES, ids=[str(c[0]) + str(c[1]) for c in LN_CASES])
def test_parity_layer_norm(shape, ns, fmt, affine, dtype):
    kwargs = {"elementwise_affine": affine != "none", "bias": affine == "both"}
    ref, mine = make_pair("LayerNorm", ns, dtype=dtype, **kwargs)
    for step in range(2):
        step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=step, offset=step), dtype, seed=step)
    ref.eval()
    mine.eval()
    step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=9), dtype, seed=9)


RMS_CASES = [((6, 10), 10, CONTIG), ((3, 4, 7), (4, 7), CONTIG), ((2, 3, 5, 4), (5, 4), CL), ((8,), 8, CONTIG)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("eps", [None, 1e-3], ids=["epsNone", "eps1e-3"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("shape,ns,fmt", RMS_CASES, ids=[str(c[0]) + str(c[1]) for c in RMS_CASES])
def test_parity_rms_norm(shape, ns, fmt, affine, eps, dtype):
    ref, mine = make_pair("RMSNorm", ns, dtype=dtype, eps=eps, elementwise_affine=affine)
    # eps=None: values ~1e-3 so that the default eps (float32's 1.2e-7 for every dtype but
    # float64) is a visible part of the mean square (~1e-6); a wrong default would show
    scale = 1e-3 if eps is None else 2.0
    for step in range(2):
        x = make_input(shape, dtype, fmt, seed=step, offset=0.0, scale=scale)
        step_and_compare(ref, mine, x, dtype, seed=step)


GN_CASES = [  # (shape, groups, memory format)
    ((4, 6, 5, 5), 3, CONTIG),
    ((4, 6, 5, 5), 3, CL),
    ((3, 4, 2, 3, 3), 2, CL3),
    ((2, 4, 3, 3), 4, CL),  # G = C
    ((5, 6), 2, CONTIG),  # no spatial dims
    ((3, 6, 7), 6, CONTIG),
    ((2, 8, 20), 1, CONTIG),  # G = 1, long runs
    ((1, 6, 4, 4), 2, CL),  # one sample
]


GN_IDS = [f"{c[0]}G{c[1]}{'cl' if c[2] is not CONTIG else ''}" for c in GN_CASES]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("affine", ["both", "weight", "none"])
@pytest.mark.parametrize("shape,G,fmt", GN_CASES, ids=GN_IDS)
def test_parity_group_norm(shape, G, fmt, affine, dtype):
    kwargs = {"affine": affine != "none", "bias": affine == "both"}
    ref, mine = make_pair("GroupNorm", G, shape[1], dtype=dtype, **kwargs)
    for step in range(2):
        x = make_input(shape, dtype, fmt, seed=step, offset=-step)
        step_and_compare(ref, mine, x, dtype, seed=step, fmt=fmt)


IN_CASES = [  # (class, shape, memory format)
    ("InstanceNorm1d", (4, 3, 20), CONTIG),
    ("InstanceNorm1d", (4, 3, 7), CONTIG),
    ("InstanceNorm1d", (3, 9), CONTIG),  # unbatched (C, L)
    ("InstanceNorm2d", (3, 4, 5, 5), CONTIG),
    ("InstanceNorm2d", (3, 4, 5, 5), CL),
    ("InstanceNorm2d", (4, 3, 2), CONTIG),  # unbatched (C, H, W)
    ("InstanceNorm3d", (2, 3, 3, 4, 2), CONTIG),
    ("InstanceNorm3d", (2, 3, 3, 4, 2), CL3),
]
IN_IDS = [f"{c[0][-2:]}{c[1]}{'cl' if c[2] is not CONTIG else ''}" for c in IN_CASES]


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("momentum", [0.1, None], ids=["m0.1", "mNone"])
@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "noaffine"])
@pytest.mark.parametrize("name,shape,fmt", IN_CASES, ids=IN_IDS)
def test_parity_instance_norm_train_then_eval(name, shape, fmt, affine, track, momentum, dtype):
    C = shape[1] if len(shape) == int(name[-2]) + 2 else shape[0]
    ref, mine = make_pair(name, C, dtype=dtype, affine=affine, track_running_stats=track, momentum=momentum)
    for step in range(3):
        step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=step, offset=0.3 * step), dtype, step, fmt)
    ref.eval()
    mine.eval()
    step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=7, offset=1.0), dtype, 7, fmt)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("name,shape,fmt", [IN_CASES[i] for i in (0, 4, 5)], ids=[IN_IDS[i] for i in (0, 4, 5)])
def test_parity_instance_norm_half(name, shape, fmt, dtype):
    C = shape[1] if len(shape) == int(name[-2]) + 2 else shape[0]
    ref, mine = make_pair(name, C, dtype=dtype, affine=True, track_running_stats=True)
    for step in range(2):
        step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=step), dtype, step, fmt)
    ref.eval()
    mine.eval()
    step_and_compare(ref, mine, make_input(shape, dtype, fmt, seed=5), dtype, 5, fmt)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS.get)
def test_parity_instance_norm_tracking_switched_off_after_construction(dtype):
    """Built with track_running_stats=True, then switched off: torch then uses instance
    statistics in both modes and (since the buffers still exist) updates them even in eval."""
    ref, mine = make_pair("InstanceNorm2d", 3, dtype=dtype, affine=True, track_running_stats=True)
    ref.track_running_stats = mine.track_running_stats = False
    for train in (True, False):
        ref.train(train)
        mine.train(train)
        step_and_compare(ref, mine, make_input((2, 3, 4, 4), dtype, seed=int(train)), dtype)


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # torch's own, for rms_norm
@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm", "GroupNorm", "InstanceNorm2d"])
def test_parity_half_input_float32_parameters(name):
    """bfloat16 input with float32 parameters (mixed precision), as torch accepts it."""
    args = {"LayerNorm": ((4, 4),), "RMSNorm": ((4, 4),), "GroupNorm": (2, 6), "InstanceNorm2d": (6,)}[name]
    kwargs = {"affine": True} if name == "InstanceNorm2d" else {}
    ref, mine = make_pair(name, *args, dtype=F32, **kwargs)
    x = make_input((3, 6, 4, 4), BF16)
    xr, xm = leaf(x), leaf(x)
    yr, ym = ref(xr), mine(xm)
    assert_close(ym, yr, BF16, "output")
    yr.float().sum().backward()
    ym.float().sum().backward()
    assert_close(xm.grad, xr.grad, BF16, "input grad")
    for (n, pr), (_, pm) in zip(ref.named_parameters(), mine.named_parameters()):
        assert_close(pm.grad, pr.grad, BF16, n)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize(
    "name,args,shape,view",
    [
        ("LayerNorm", (6,), (4, 8, 12), lambda t: t[:, ::2, ::2]),
        ("GroupNorm", (2, 4), (4, 8, 6), lambda t: t[:, ::2]),
        ("GroupNorm", (2, 4), (3, 4, 6, 8), lambda t: t.transpose(2, 3)),
        ("InstanceNorm1d", (4,), (3, 4, 20), lambda t: t[..., ::3]),
    ],
    ids=["LN_sliced", "GN_C_step2", "GN_transposed", "IN_L_step3"],
)
def test_parity_non_dense_input(name, args, shape, view, dtype):
    kwargs = {"affine": True} if name.startswith("Instance") else {}
    ref, mine = make_pair(name, *args, dtype=dtype, **kwargs)
    base = make_input(shape, dtype)
    xr, xm = view(leaf(base)), view(leaf(base))
    assert not xm.is_contiguous()
    yr, ym = ref(xr), mine(xm)
    assert_close(ym, yr, dtype, "output")
    dy = torch.randn_like(yr)
    yr.backward(dy)
    ym.backward(dy)
    assert_close(xm._base.grad, xr._base.grad, dtype, "input grad")
    for (n, pr), (_, pm) in zip(ref.named_parameters(), mine.named_parameters()):
        assert_close(pm.grad, pr.grad, dtype, n)


@pytest.mark.parametrize(
    "name,args,shape",
    [("LayerNorm", (3,), (0, 3)), ("RMSNorm", (3,), (0, 3)), ("GroupNorm", (2, 4), (0, 4, 3, 3)),
     ("GroupNorm", (2, 4), (2, 4, 0)), ("InstanceNorm1d", (4,), (2, 4, 0))],
    ids=["LN_rows0", "RMS_rows0", "GN_N0", "GN_L0", "IN_L0"],
)
def test_empty_input(name, args, shape):
    kwargs = {"affine": True, "track_running_stats": True} if name.startswith("Instance") else {}
    ref, mine = make_pair(name, *args, **kwargs)
    before = snapshot(mine)
    x = leaf(torch.randn(shape))
    y = mine(x)
    assert y.shape == x.shape == ref(x).shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for _, p in mine.named_parameters():
        assert torch.equal(p.grad, torch.zeros_like(p))
    assert all(torch.equal(v, before[0][k]) for k, v in mine.state_dict().items())


@pytest.mark.parametrize(
    "name,args,shape",
    [("LayerNorm", ((3, 5, 5),), (4, 3, 5, 5)), ("RMSNorm", (5,), (4, 3, 5)), ("GroupNorm", (1, 3), (4, 3, 5, 5)),
     ("GroupNorm", (3, 6), (2, 6, 7, 7))],
    ids=["LN", "RMS", "GN", "GN_7x7"],
)
def test_zero_eps_on_constant_groups(name, args, shape):
    """eps=0 (accepted by torch and by normkit) and groups of equal values: 1/sqrt(0) is
    infinite, and the kernels give what torch gives there (NaN), forward and backward,
    instead of raising ZeroDivisionError from compiled code."""
    ref, mine = make_pair(name, *args, eps=0.0)
    x = torch.zeros(shape)  # zero variance (and zero mean square, for RMSNorm)
    x[0] = torch.randn(shape[1:])  # one sample with a spread: finite there
    xr, xm = leaf(x), leaf(x)
    yr, ym = ref(xr), mine(xm)
    assert _kernel_node(ym).startswith("Kernel")
    assert torch.isnan(yr).any() and torch.isfinite(yr[0]).all()  # the case is what it claims
    torch.testing.assert_close(ym, yr, equal_nan=True, rtol=1e-4, atol=1e-5)
    g = torch.randn(shape)
    yr.backward(g)
    ym.backward(g)
    torch.testing.assert_close(xm.grad, xr.grad, equal_nan=True, rtol=1e-4, atol=1e-4)


def test_no_grad_path_equals_autograd_path():
    """Without autograd the functionals call the kernels directly; same numbers."""
    cases = [
        (LayerNorm((5, 6)), (3, 5, 6), CONTIG),
        (RMSNorm(6), (4, 6), CONTIG),
        (GroupNorm(2, 4), (3, 4, 5, 5), CL),
        (InstanceNorm2d(4, affine=True, track_running_stats=True), (3, 4, 5, 5), CL),
    ]
    for module, shape, fmt in cases:
        randomize(module)
        twin = randomize(type(module)(*_ctor_args(module)), 0)
        x = make_input(shape, F32, fmt)
        y_grad = module(leaf(x))
        with torch.no_grad():
            y_plain = twin(x)
        assert torch.equal(y_grad.detach(), y_plain)
        assert y_plain.stride() == y_grad.stride()
        assert all(torch.equal(a, b) for a, b in zip(module.buffers(), twin.buffers()))


def _ctor_args(m):
    if isinstance(m, nn.GroupNorm):
        return (m.num_groups, m.num_channels)
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        return (m.normalized_shape,)
    return (m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)


def test_input_is_not_modified():
    for module, fmt in ((LayerNorm([5, 5]), CL), (GroupNorm(3, 6), CL), (InstanceNorm2d(6, affine=True), CONTIG)):
        x = make_input((4, 6, 5, 5), F32, fmt)
        keep = x.clone()
        y = module(leaf(x))
        y.backward(torch.randn_like(y))
        assert torch.equal(x, keep) and x.stride() == keep.stride()


# --------------------------------------------------------------------------- 3. kernels used; torch path when tracing


def _kernel_node(y):
    return type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS.get)
def test_kernel_path_is_taken_for_cpu_float(dtype):
    x = leaf(make_input((3, 4, 5), dtype))
    assert _kernel_node(LayerNorm(5, dtype=dtype)(x)).startswith("KernelRowNorm")
    assert _kernel_node(RMSNorm(5, dtype=dtype)(x)).startswith("KernelRowNorm")
    assert _kernel_node(GroupNorm(2, 4, dtype=dtype)(x)).startswith("KernelGroupedNorm")
    assert _kernel_node(InstanceNorm1d(4, dtype=dtype)(x)).startswith("KernelGroupedNorm")
    for half in HALF_DTYPES:
        assert not _kernel_node(LayerNorm(5)(leaf(x.to(half)))).startswith("Kernel")


def test_tracing_takes_the_torch_path(monkeypatch):
    """Under torch.compile tracing the functionals must not call the NumPy kernels."""

    def boom(*args, **kwargs):
        raise AssertionError("kernel called while tracing")

    monkeypatch.setattr(nk_functional, "_tracing", lambda: True)
    for mod, fn in ((rowwise_kernels, "row_forward"), (grouped_kernels, "group_forward"),
                    (grouped_kernels, "instance_forward")):
        monkeypatch.setattr(mod, fn, boom)
    x = leaf(make_input((3, 4, 5), F32))
    pairs = [make_pair("LayerNorm", 5), make_pair("RMSNorm", 5), make_pair("GroupNorm", 2, 4),
             make_pair("InstanceNorm1d", 4, affine=True, track_running_stats=True)]
    for ref, mine in pairs:
        step_and_compare(ref, mine, x, F32)


def test_torch_compile_fullgraph():
    model = nn.Sequential(GroupNorm(2, 4), InstanceNorm2d(4, affine=True), LayerNorm([4, 5, 5]), RMSNorm(5))
    randomize(model)
    x = make_input((2, 4, 5, 5), F32)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    xc, xe = leaf(x), leaf(x)
    yc, ye = compiled(xc), model(xe)
    assert_close(yc, ye, F32, "compiled output")
    yc.sum().backward()
    ye.sum().backward()
    assert_close(xc.grad, xe.grad, F32, "compiled input grad")


# --------------------------------------------------------------------------- 4. gradcheck / gradgradcheck (float64)


def _gradchecks(fn, *inputs):
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)
    assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def _p(*shape, seed=0, offset=0.0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=gen, dtype=F64) * 0.5 + 1.0 + offset).requires_grad_(True)


@pytest.mark.parametrize("fmt", [CONTIG, CL], ids=["contig", "cl"])
def test_gradcheck_group_norm(fmt):
    x = _p(2, 4, 3, 2, offset=-1.0).detach().contiguous(memory_format=fmt).requires_grad_(True)
    w, b = _p(4, seed=1), _p(4, seed=2)
    assert _kernel_node(FF.group_norm(x, 2, w, b)).startswith("Kernel")
    _gradchecks(lambda x, w, b: FF.group_norm(x, 2, w, b), x, w, b)


@pytest.mark.parametrize("mode", ["train", "eval_running", "cl"])
def test_gradcheck_instance_norm(mode):
    x = _p(2, 3, 4, 3, offset=2.0)
    if mode == "cl":
        x = x.detach().contiguous(memory_format=CL).requires_grad_(True)
    w, b = _p(3, seed=1), _p(3, seed=2)
    rm, rv = torch.randn(3, dtype=F64), torch.rand(3, dtype=F64) + 0.5
    use_input = mode != "eval_running"

    def fn(x, w, b):  # running statistics cloned per call: gradcheck evaluates many times
        return FF.instance_norm(x, rm.clone(), rv.clone(), w, b, use_input, 0.1, 1e-5)

    assert _kernel_node(fn(x, w, b)).startswith("Kernel")
    _gradchecks(fn, x, w, b)


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_layer_norm(bias):
    x, w = _p(3, 2, 4, offset=3.0), _p(2, 4, seed=1)
    b = _p(2, 4, seed=2) if bias else None
    assert _kernel_node(FF.layer_norm(x, (2, 4), w, b)).startswith("Kernel")
    if bias:
        _gradchecks(lambda x, w, b: FF.layer_norm(x, (2, 4), w, b), x, w, b)
    else:
        _gradchecks(lambda x, w: FF.layer_norm(x, (2, 4), w), x, w)


def test_gradcheck_rms_norm():
    x, w = _p(3, 5), _p(5, seed=1)
    assert _kernel_node(FF.rms_norm(x, 5, w, 1e-3)).startswith("Kernel")
    _gradchecks(lambda x, w: FF.rms_norm(x, 5, w, 1e-3), x, w)


# --------------------------------------------------------------------------- 5. equivalences between layers


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("fmt", [CONTIG, CL], ids=["contig", "cl"])
def test_group_norm_one_group_is_layer_norm(fmt, dtype):
    """GroupNorm(1, C) on (N, C, H, W) = LayerNorm((C, H, W)) with the per-channel affine
    spread over (H, W): different kernels (grouped vs rowwise), same numbers."""
    N, C, H, W = 3, 4, 5, 6
    gn = randomize(GroupNorm(1, C, dtype=dtype))
    ln = LayerNorm((C, H, W), dtype=dtype)
    with torch.no_grad():
        ln.weight.copy_(gn.weight[:, None, None].expand(C, H, W))
        ln.bias.copy_(gn.bias[:, None, None].expand(C, H, W))
    x = make_input((N, C, H, W), dtype, fmt, offset=3.0)
    xg, xl = leaf(x), leaf(x)
    yg, yl = gn(xg), ln(xl)
    assert_close(yg, yl, dtype, "output")
    dy = make_input((N, C, H, W), dtype, seed=5)
    yg.backward(dy)
    yl.backward(dy)
    assert_close(xg.grad, xl.grad, dtype, "input grad")
    assert_close(gn.weight.grad, ln.weight.grad.sum((1, 2)), dtype, "weight grad")
    assert_close(gn.bias.grad, ln.bias.grad.sum((1, 2)), dtype, "bias grad")


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=DT_IDS.get)
@pytest.mark.parametrize("fmt", [CONTIG, CL], ids=["contig", "cl"])
def test_group_norm_c_groups_is_instance_norm(fmt, dtype):
    """GroupNorm(C, C) = InstanceNorm2d(C, affine=True): the GroupNorm path (moments +
    coefficients) against the InstanceNorm path (fused forward_batch), same numbers."""
    C = 5
    gn = randomize(GroupNorm(C, C, dtype=dtype))
    inn = InstanceNorm2d(C, affine=True, dtype=dtype)
    inn.load_state_dict(gn.state_dict())
    x = make_input((3, C, 4, 6), dtype, fmt, offset=-2.0)
    xg, xi = leaf(x), leaf(x)
    yg, yi = gn(xg), inn(xi)
    assert_close(yg, yi, dtype, "output")
    dy = make_input(x.shape, dtype, seed=4)
    yg.backward(dy)
    yi.backward(dy)
    assert_close(xg.grad, xi.grad, dtype, "input grad")
    assert_close(gn.weight.grad, inn.weight.grad, dtype, "weight grad")
    assert_close(gn.bias.grad, inn.bias.grad, dtype, "bias grad")


# --------------------------------------------------------------------------- 6. numerics with large offsets


@pytest.mark.parametrize("name", ["LayerNorm", "GroupNorm", "InstanceNorm2d"])
def test_float32_large_offset_matches_float64_torch(name):
    """float32 data with mean 1e4 and std 1: normkit's float32 output and input gradient
    must be as good as float64 torch on the same float32 numbers, up to float32 rounding
    of the result (losing the offset's cancellation would cost ~1e4 * 2^-24 ~ 6e-4)."""
    args = {"LayerNorm": ((6, 8, 8),), "GroupNorm": (3, 6), "InstanceNorm2d": (6,)}[name]
    kwargs = {"affine": True, "track_running_stats": True} if name == "InstanceNorm2d" else {}
    ref, mine = make_pair(name, *args, dtype=F32, **kwargs)
    ref = ref.double()
    x32 = make_input((4, 6, 8, 8), F32, offset=1e4, scale=1.0)
    x64 = leaf(x32.double())
    xm = leaf(x32)
    y64, y32 = ref(x64), mine(xm)
    torch.testing.assert_close(y32.double(), y64, rtol=0, atol=1e-5)
    dy = make_input(x32.shape, F32, seed=3, offset=0.0, scale=1.0)
    y64.backward(dy.double())
    y32.backward(dy)
    torch.testing.assert_close(xm.grad.double(), x64.grad, rtol=0, atol=2e-5)
    if kwargs:
        torch.testing.assert_close(mine.running_mean.double(), ref.running_mean, rtol=1e-7, atol=0)
        torch.testing.assert_close(mine.running_var.double(), ref.running_var, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- 7. errors, and the state after them


def _raises_and_untouched(module, x, exc, match):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        x = x.requires_grad_(False)
    for p in module.parameters():
        p.grad = torch.full_like(p, 7.0)
    snap = snapshot(module)
    with pytest.raises(exc, match=match):
        module(x)
    assert_unchanged(module, snap)


def test_construction_errors():
    with pytest.raises(ValueError, match=r"num_channels \(6\).*num_groups \(4\)"):
        GroupNorm(4, 6)
    with pytest.raises(ValueError, match="num_groups to be a positive integer, got 0"):
        GroupNorm(0, 4)
    with pytest.raises(ValueError, match=r"num_channels \(7\).*num_groups \(2\)"):
        FF.group_norm(torch.randn(2, 7, 3), 2)


@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm"])
def test_row_layer_errors(name):
    cls = PAIRS[name][1]
    m = randomize(cls((4, 5)))
    _raises_and_untouched(
        m, torch.randn(3, 5, 4), ValueError, r"last 2 dims are normalized_shape \(4, 5\).*\(3, 5, 4\)"
    )
    _raises_and_untouched(m, torch.randn(5), ValueError, r"normalized_shape \(4, 5\)")
    _raises_and_untouched(m, torch.ones(3, 4, 5, dtype=torch.int64), TypeError, "floating-point.*int64")
    _raises_and_untouched(m, torch.randn(3, 4, 5, dtype=F64), TypeError, "weight of the input's dtype torch.float64")
    empty = cls(())
    with pytest.raises(ValueError, match="at least one dimension"):
        empty(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"weight of shape \(5,\), got \(4,\)"):
        getattr(FF, {"LayerNorm": "layer_norm", "RMSNorm": "rms_norm"}[name])(torch.randn(2, 5), 5, torch.ones(4))


def test_group_norm_errors():
    m = randomize(GroupNorm(2, 4))
    _raises_and_untouched(m, torch.randn(2, 6, 3), ValueError, r"expected input with 4 channels along dim 1, got 6")
    _raises_and_untouched(m, torch.randn(4), ValueError, r"at least 2 dims, got 1D")
    _raises_and_untouched(m, torch.ones(2, 4, 3, dtype=torch.int32), TypeError, "floating-point")
    _raises_and_untouched(m, torch.randn(2, 4, 3, dtype=F64), TypeError, "dtype torch.float64")
    with pytest.raises(ValueError, match=r"bias of shape \(4,\), got \(3,\)"):
        FF.group_norm(torch.randn(2, 4, 3), 2, torch.ones(4), torch.ones(3))


@pytest.mark.parametrize("track", [True, False], ids=["track", "notrack"])
def test_instance_norm_errors(track):
    m = randomize(InstanceNorm2d(3, affine=True, track_running_stats=track))
    _raises_and_untouched(m, torch.randn(2, 3, 4, 4, 4), ValueError, r"3D \(C, H, W\) or 4D \(N, C, H, W\).*got 5D")
    _raises_and_untouched(m, torch.randn(2, 3, 1, 1), ValueError, "more than 1 spatial element")
    _raises_and_untouched(m, torch.randn(3, 1, 1), ValueError, "more than 1 spatial element")  # unbatched
    _raises_and_untouched(m, torch.randn(2, 4, 3, 3), ValueError, "expected input with 3 channels along dim 1, got 4")
    _raises_and_untouched(m, torch.ones(2, 3, 3, 3, dtype=torch.int64), TypeError, "floating-point")
    _raises_and_untouched(m, torch.randn(2, 3, 3, 3, dtype=F64), TypeError, "dtype torch.float64")
    m.eval()
    if track:  # eval with running statistics: one spatial element is fine, as torch
        ref = randomize(nn.InstanceNorm2d(3, affine=True, track_running_stats=True))
        ref.eval()
        x = torch.randn(2, 3, 1, 1)
        assert_close(m(x), ref(x), F32, "eval output, 1 spatial element")
    else:
        _raises_and_untouched(m, torch.randn(2, 3, 1, 1), ValueError, "more than 1 spatial element")


def test_instance_norm_torch_raises_too_for_one_spatial_element():
    """The error normkit raises is one torch raises as well (a parity check on the rule)."""
    with pytest.raises(ValueError):
        nn.InstanceNorm2d(3)(torch.randn(2, 3, 1, 1))
    with pytest.raises(ValueError):
        nn.InstanceNorm2d(3).eval()(torch.randn(2, 3, 1, 1))


def test_instance_norm_channel_mismatch_without_parameters_warns_like_torch():
    ref, mine = nn.InstanceNorm1d(4), InstanceNorm1d(4)
    x = make_input((2, 3, 6), F32)
    with pytest.warns(UserWarning, match="num_features"):
        y = mine(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(y, ref(x), F32, "output")
    m = randomize(InstanceNorm1d(4, track_running_stats=True))
    _raises_and_untouched(m, x, ValueError, "running statistics have 4")


def test_instance_norm_functional_errors():
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="use_input_stats=False"):
        FF.instance_norm(x, use_input_stats=False)
    rm = torch.zeros(3)
    with pytest.raises(ValueError, match="both running_mean and running_var"):
        FF.instance_norm(x, rm, None)
    assert torch.equal(rm, torch.zeros(3))
    rv = torch.ones(3)
    with pytest.raises(ValueError, match=r"running_var of shape \(3,\), got \(4,\)"):
        FF.instance_norm(x, rm, torch.ones(4))
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        FF.instance_norm(torch.randn(2, 3), rm, rv)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


# --------------------------------------------------------------------------- 8. convert


def _family_model():
    return nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.GroupNorm(3, 6),
        nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
        nn.BatchNorm2d(6),
        nn.Sequential(nn.LayerNorm([6, 4, 4]), nn.RMSNorm(4)),
        nn.Flatten(2),
        nn.InstanceNorm1d(6),
        nn.Unflatten(2, (1, 4, 4)),
        nn.InstanceNorm3d(6, affine=True),
    )


def test_convert_family_both_ways():
    torch.manual_seed(0)
    model = _family_model()
    for m in model.modules():
        if not isinstance(m, nn.Conv2d):
            randomize(m, seed=1)
    x = make_input((2, 3, 6, 6), F32)
    ref = _family_model()
    ref.load_state_dict(model.state_dict())
    params = {n: p for n, p in model.named_parameters()}
    converted = convert(model)
    expected = [None, GroupNorm, InstanceNorm2d, nkn.BatchNorm2d, None, None, InstanceNorm1d, None, InstanceNorm3d]
    for child, cls in zip(converted, expected):
        if cls is not None:
            assert type(child) is cls
    assert type(converted[4][0]) is LayerNorm and type(converted[4][1]) is RMSNorm
    assert all(p is params[n] for n, p in converted.named_parameters())  # the very same Parameters
    assert not hasattr(converted[1], "nonfinite") and converted[3].nonfinite == "propagate"
    yr, ym = ref(leaf(x)), converted(leaf(x))
    assert_close(ym, yr, F32, "output")
    assert_same_state(ref, converted, F32)
    back = convert(converted, to="torch")
    assert [type(m) for m in back.modules()] == [type(m) for m in _family_model().modules()]
    assert not hasattr(back[3], "nonfinite")
    assert all(p is params[n] for n, p in back.named_parameters())


def test_convert_single_layer_returns_counterpart():
    for torch_cls, nk_cls, args in ((nn.LayerNorm, LayerNorm, (4,)), (nn.RMSNorm, RMSNorm, (4,)),
                                    (nn.GroupNorm, GroupNorm, (2, 4)), (nn.InstanceNorm2d, InstanceNorm2d, (4,))):
        layer = torch_cls(*args)
        layer.eval()
        new = convert(layer)
        assert type(new) is nk_cls and not new.training
        assert type(convert(new, to="torch")) is torch_cls
