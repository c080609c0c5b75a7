"""Per-call cost of an autograd.Function's apply with eight arguments (three tensors, two
None, a bool, a float, a list) and a forward that returns its input: torch's
Function.apply, a shorter apply tried at a9768d4 and dropped (`KernelFunction`: unwrap
the tensor arguments from dead functorch wrappers, then the C++ apply), and the bare C++
apply. Best of 10 rounds of 2,000 calls, in us; three rounds
of the three, interleaved. Usage: apply_cost.py"""
import time

import torch



class KernelFunction(torch.autograd.Function):
    """The short apply as it was at a9768d4."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        unwrapped = [torch._C._functorch.unwrap_if_dead(a) if isinstance(a, torch.Tensor) else a for a in args]
        return super(torch.autograd.Function, cls).apply(*unwrapped)


def _forward(ctx, x, w, b, rm, rv, bs, eps, stats):
    return x


def _backward(ctx, dy):
    return (dy,) + (None,) * 7


Plain = type("Plain", (torch.autograd.Function,), {"forward": staticmethod(_forward), "backward": staticmethod(_backward)})
Short = type("Short", (KernelFunction,), {"forward": staticmethod(_forward), "backward": staticmethod(_backward)})
bare = super(torch.autograd.Function, Plain).apply
x = torch.randn(4, 4)
w = torch.nn.Parameter(torch.ones(4))
b = torch.nn.Parameter(torch.ones(4))


def best(f, n=2000):
    out = 1e9
    for _ in range(10):
        t0 = time.perf_counter()
        for _ in range(n // 10):
            f()
        out = min(out, (time.perf_counter() - t0) / (n // 10))
    return out * 1e6


for _ in range(3):
    print("Function.apply %.2f us   KernelFunction.apply %.2f us   C++ apply %.2f us" % (
        best(lambda: Plain.apply(x, w, b, None, None, True, 1e-5, [])),
        best(lambda: Short.apply(x, w, b, None, None, True, 1e-5, [])),
        best(lambda: bare(x, w, b, None, None, True, 1e-5, []))))
