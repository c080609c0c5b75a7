"""Small inputs: PyTorch's own CPU kernel behind normkit's validation and bookkeeping.

Every other test file sends all sizes to normkit's kernels (conftest.py); these
tests keep the default threshold and check that the small-input path gives what
the kernel path gives -- outputs, gradients, running statistics, counters --
that it is really taken (and only where it should be), and that errors and the
non-finite policies behave as on the kernel path.
"""

import copy

import pytest
import torch

import normkit.nn as nkn
import normkit.nn.functional as F
from normkit.nn import _autograd

pytestmark = pytest.mark.small_input_path

CASES = [
    (nkn.BatchNorm2d, (4, 3, 5, 5), {}),
    (nkn.BatchNorm2d, (4, 3, 5, 5), {"momentum": None}),
    (nkn.BatchNorm2d, (4, 3, 5, 5), {"affine": False}),
    (nkn.BatchNorm2d, (4, 3, 5, 5), {"track_running_stats": False}),
    (nkn.BatchNorm1d, (16, 6), {"eps": 1e-3, "momentum": 0.3}),
    (nkn.BatchNorm1d, (8, 6, 7), {"bias": False}),
    (nkn.BatchNorm3d, (2, 4, 3, 3, 3), {}),
    (nkn.BatchNorm1d, (1024, 160), {}),  # above SMALL_INPUT: channels innermost, SMALL_ROWS_INPUT applies
    (nkn.BatchNorm2d, (4, 24, 32, 32), {"momentum": None}),  # above SMALL_INPUT: small only channels-last
]


def _run(layer, x, dy, steps=3):
    """Outputs and gradients of a few training steps, then an eval step."""
    outs = []
    for _ in range(steps):
        xg = x.clone().requires_grad_()
        y = layer(xg)
        y.backward(dy)
        outs += [y.detach(), xg.grad]
    layer.eval()
    outs.append(layer(x).detach())
    layer.train()
    return outs


def _small_in(shape, layout):
    """Whether the defaults send this shape and layout to PyTorch's kernel."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    return F.small_input(torch.empty(shape, memory_format=fmt))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls,shape,kwargs,layout", [
    (*case, layout) for case in CASES for layout in ("contiguous", "channels_last")
    if (layout == "contiguous" or len(case[1]) == 4) and _small_in(case[1], layout)  # channels_last: 4D
])
def test_small_path_matches_kernel_path(monkeypatch, cls, shape, kwargs, dtype, layout):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=dtype) * 3 + 2)
    dy = torch.randn(shape, generator=g, dtype=dtype)
    if layout == "channels_last":
        x, dy = x.contiguous(memory_format=torch.channels_last), dy.contiguous(memory_format=torch.channels_last)
    assert F.small_input(x)
    small = cls(shape[1], dtype=dtype, **kwargs)
    if small.weight is not None:
        with torch.no_grad():
            small.weight.uniform_(0.5, 2.0, generator=g)
    kernel = copy.deepcopy(small)
    got = _run(small, x, dy)
    monkeypatch.setattr(F, "SMALL_INPUT", 0)
    monkeypatch.setattr(F, "SMALL_ROWS_INPUT", 0)
    want = _run(kernel, x, dy)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)
    if layout == "channels_last":
        assert got[0].is_contiguous(memory_format=torch.channels_last)
    # torch's kernel sums the parameter gradients in float32, the kernels in float64: over
    # thousands of values per channel float32 sums differ by more than the outputs do
    ptol = tol if dtype == torch.float64 or x.numel() // shape[1] <= 512 else dict(rtol=1e-4, atol=3e-4)
    for name, p in small.named_parameters():
        torch.testing.assert_close(p.grad, dict(kernel.named_parameters())[name].grad, **ptol)
    for name, b in small.named_buffers():
        torch.testing.assert_close(b, dict(kernel.named_buffers())[name], **tol)


def test_the_path_taken_depends_on_the_size(monkeypatch):
    calls = []
    real = _autograd.KernelBatchNorm.apply
    monkeypatch.setattr(_autograd.KernelBatchNorm, "apply", lambda *a: calls.append(1) or real(*a))
    bn = nkn.BatchNorm2d(4)
    bn(torch.randn(2, 4, 8, 8, requires_grad=True))  # 512 elements: PyTorch's kernel
    assert calls == []
    bn(torch.randn(2, 4, 96, 96, requires_grad=True))  # 73,728 elements: normkit's kernels
    assert calls == [1]
    # channels innermost: PyTorch's kernel up to SMALL_ROWS_INPUT elements
    cl = torch.randn(2, 4, 96, 96).contiguous(memory_format=torch.channels_last).requires_grad_()
    bn(cl)
    assert calls == [1]
    bn1 = nkn.BatchNorm1d(256)
    bn1(torch.randn(1024, 256, requires_grad=True))  # 2**18 elements
    assert calls == [1]
    bn1(torch.randn(1025, 256, requires_grad=True))
    assert calls == [1, 1]
    big_cl = torch.randn(4, 4, 150, 150).contiguous(memory_format=torch.channels_last).requires_grad_()
    bn(big_cl)  # 360,000 elements, above SMALL_ROWS_INPUT
    assert calls == [1, 1, 1]
    monkeypatch.setattr(F, "SMALL_INPUT", 0)
    monkeypatch.setattr(F, "SMALL_ROWS_INPUT", 0)
    bn(torch.randn(2, 4, 8, 8, requires_grad=True))
    bn1(torch.randn(16, 256, requires_grad=True))
    assert calls == [1, 1, 1, 1, 1]


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_nonfinite_policies_still_protect_small_inputs(policy):
    bn = nkn.BatchNorm2d(3, nonfinite=policy)
    bn(torch.randn(4, 3, 2, 2))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(4, 3, 2, 2)
    x[0, 1, 0, 0] = float("nan")
    if policy == "skip":
        with pytest.warns(Warning, match="non-finite"):
            bn(x)
    else:
        with pytest.raises(Exception, match="non-finite"):
            bn(x)
    for k, v in bn.state_dict().items():
        torch.testing.assert_close(v, before[k], equal_nan=True)


def test_errors_on_small_inputs_leave_the_state_untouched():
    bn = nkn.BatchNorm2d(3)
    bn(torch.randn(4, 3, 2, 2))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with pytest.raises(ValueError, match="expected 3 channels|3 channels"):
        bn(torch.randn(4, 5, 2, 2))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(torch.randn(1, 3, 1, 1))
    with pytest.raises(TypeError, match="dtype"):
        F.batch_norm(torch.randn(4, 3, 2, 2), bn.running_mean, bn.running_var, bn.weight.double(), None, True)
    for k, v in bn.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_small_path_under_compile_and_export():
    """Traced small inputs go through torch.batch_norm: torch.compile and torch.export
    see one native op and match eager, buffers and counter included."""
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5)
    eager = nkn.BatchNorm2d(3)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="eager", fullgraph=True)
    for _ in range(2):
        torch.testing.assert_close(compiled(x), eager(x))
    for name, b in eager.named_buffers():
        torch.testing.assert_close(dict(compiled_module.named_buffers())[name], b)
    eager.eval()
    exported = torch.export.export(eager, (x,))
    torch.testing.assert_close(exported.module()(x), eager(x))
