"""BatchNormAct2d: act(BN(x) + residual) fused, against torch's separate operations."""

import pytest
import torch

import normkit.nn as nkn
from normkit.nn.batchnorm_act import BatchNormAct2d

ACTS = {"relu": torch.relu, "silu": torch.nn.functional.silu, "gelu": torch.nn.functional.gelu, None: lambda t: t}


def pair(act, dtype, train, C=16):
    torch.manual_seed(1)
    mine = BatchNormAct2d(C, act=act).to(dtype)
    ref = torch.nn.BatchNorm2d(C).to(dtype)
    with torch.no_grad():
        mine.weight.uniform_(0.5, 1.5)
        mine.bias.normal_()
        mine.running_mean.normal_()
        mine.running_var.uniform_(0.5, 2.0)
    ref.load_state_dict(mine.state_dict())
    return mine.train(train), ref.train(train)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("act", ["relu", "silu", "gelu", None])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_separate_operations(act, residual, train, layout, dtype):
    mine, ref = pair(act, dtype, train)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-11)
    for step in range(2):
        x = (torch.randn(6, 16, 5, 7, dtype=dtype) * 2 + 1).requires_grad_()
        z = torch.randn(6, 16, 5, 7, dtype=dtype).requires_grad_() if residual else None
        if layout == "channels_last":
            x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        y = mine(x, z)
        y_ref = ACTS[act](ref(x) + (z if residual else 0))
        if layout == "contiguous":  # the fused kernel ran, not the composed fallback
            assert type(y.grad_fn).__name__.startswith("_KernelBatchNormAct")
        g = torch.randn_like(y)
        inputs = [x, mine.weight, mine.bias] + ([z] if residual else [])
        ref_inputs = [x, ref.weight, ref.bias] + ([z] if residual else [])
        grads = torch.autograd.grad(y, inputs, g)
        grads_ref = torch.autograd.grad(y_ref, ref_inputs, g)
        torch.testing.assert_close(y, y_ref, **tol)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, **tol)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name), **tol)


def test_state_dict_is_batchnorm2d():
    a = BatchNormAct2d(8, act="silu")
    b = nkn.BatchNorm2d(8)
    assert list(a.state_dict()) == list(b.state_dict())
    torch.nn.BatchNorm2d(8).load_state_dict(a.state_dict())
    a.load_state_dict(torch.nn.BatchNorm2d(8).state_dict())
    assert isinstance(a, torch.nn.BatchNorm2d)


def test_gradcheck_float64():
    m, _ = pair("silu", torch.float64, True, C=4)
    x = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, z: m(x, z), (x, z))


def test_errors():
    with pytest.raises(ValueError, match="act to be one of"):
        BatchNormAct2d(4, act="tanh")
    m = BatchNormAct2d(4)
    with pytest.raises(ValueError, match="residual of the input's shape"):
        m(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 2))
    with pytest.raises(ValueError, match="expected input with 4 channels"):
        m(torch.randn(2, 5, 3, 3))


@pytest.mark.parametrize("cls", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
def test_bias_false_keyword_as_torch(cls):
    mine = getattr(nkn, cls)(3, bias=False)
    ref = getattr(torch.nn, cls)(3, bias=False)
    assert mine.bias is None and ref.bias is None
    assert list(mine.state_dict()) == list(ref.state_dict())
    x = torch.randn(4, 3, *([5] * (int(cls[-2]) if cls != "BatchNorm1d" else 1)))
    with torch.no_grad():
        mine.weight.uniform_(0.5, 1.5)
    ref.load_state_dict(mine.state_dict())
    torch.testing.assert_close(mine(x), ref(x))


def test_channels_larger_than_the_cache_still_take_the_fused_kernel(monkeypatch):
    """Above the per-channel cache budget the activation kernels still run (there is no
    two-pass alternative that beats BN, add and activation apart), and match."""
    import normkit.kernels.norm as norm_kernels

    monkeypatch.setattr(norm_kernels, "FUSE_MAX_CHANNEL_BYTES", 64)  # every channel here is larger
    mine, ref = pair("relu", torch.float64, True)
    x = torch.randn(6, 16, 5, 7, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 16, 5, 7, dtype=torch.float64, requires_grad=True)
    y = mine(x, z)
    assert type(y.grad_fn).__name__.startswith("_KernelBatchNormAct")
    y_ref = torch.relu(ref(x) + z)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-11)
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, [x, z, mine.weight, mine.bias], g)
    grads_ref = torch.autograd.grad(y_ref, [x, z, ref.weight, ref.bias], g)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)
