"""normkit.nn._bridge.KernelFunction: the short ``apply`` behaves as torch's ``Function.apply``."""

import pytest
import torch

import normkit.nn as nkn
from normkit.nn._autograd import KernelBatchNorm
from normkit.nn._bridge import KernelFunction


def _pair(C=256):
    torch.manual_seed(0)
    ours, theirs = nkn.BatchNorm1d(C), torch.nn.BatchNorm1d(C)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-1, 1)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_gradients_through_the_short_apply_match_torch():
    ours, theirs = _pair()
    x = torch.randn(512, 256, dtype=torch.float32) * 3 + 1
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    dy = torch.randn_like(x)
    ya, yb = ours(xa), theirs(xb)
    assert type(ya.grad_fn).__name__ == "KernelBatchNormBackward"
    ya.backward(dy)
    yb.backward(dy)
    torch.testing.assert_close(ya, yb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, theirs.weight.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.bias.grad, theirs.bias.grad, rtol=1e-4, atol=1e-4)


def test_a_dead_functorch_wrapper_gives_torchs_result():
    """A tensor that outlived the transform that wrapped it (which the short apply unwraps,
    as torch's does) normalizes as torch's layer normalizes it."""
    leaked = []

    def f(x):
        leaked.append(x * 1.0)
        return x.sum()

    torch.func.grad(f)(torch.randn(512, 256))
    dead = leaked[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(dead)
    ours, theirs = _pair()
    assert ours.weight.requires_grad  # so the call goes through the kernel function
    torch.testing.assert_close(ours(dead), theirs(dead), rtol=1e-5, atol=1e-5)


def test_functorch_transforms_refuse_as_torch_does():
    ours, _ = _pair()
    with pytest.raises(RuntimeError, match="setup_context"):
        torch.func.grad(lambda x: ours(x).sum())(torch.randn(512, 256))


def test_a_subclass_with_setup_context_is_refused():
    with pytest.raises(TypeError, match="setup_context"):
        class WithSetup(KernelFunction):  # noqa: F841
            @staticmethod
            def forward(x):
                return x

            @staticmethod
            def setup_context(ctx, inputs, output):
                pass


def test_the_kernel_functions_take_the_short_apply():
    assert issubclass(KernelBatchNorm, KernelFunction)
    assert KernelBatchNorm.apply.__func__ is KernelFunction.apply.__func__
