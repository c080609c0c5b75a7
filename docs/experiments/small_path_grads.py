"""Parameter gradients of a BatchNorm1d training step through normkit's kernels and through
its small-input path (torch's own kernel), each against torch.nn.BatchNorm1d in float64 on
the same data: the largest absolute error of the weight and bias gradients.
Usage: small_path_grads.py N C"""
import sys

import torch

import normkit.nn as nkn
import normkit.nn.functional as F

N, C = (int(v) for v in sys.argv[1:3])
g = torch.Generator().manual_seed(0)
x = torch.randn(N, C, generator=g) * 3 + 2
dy = torch.randn(N, C, generator=g)
ref = torch.nn.BatchNorm1d(C).double()
ref(x.double().requires_grad_()).backward(dy.double())
for name, bound in (("kernels", 0), ("torch's kernel", 1 << 40)):
    F.SMALL_INPUT = F.SMALL_ROWS_INPUT = bound
    bn = nkn.BatchNorm1d(C)
    bn(x.clone().requires_grad_()).backward(dy)
    err_w = (bn.weight.grad.double() - ref.weight.grad).abs().max().item()
    err_b = (bn.bias.grad.double() - ref.bias.grad).abs().max().item()
    print(f"{name:15s} weight grad error {err_w:.2e}, bias grad error {err_b:.2e}")
