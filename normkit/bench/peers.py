"""The implementations ``normkit bench`` puts side by side, as zero-argument callables."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

import normkit.nn as nkn
from normkit import kernels, reference
from normkit.kernels import grouped, rowwise
from normkit.nn._bridge import as_view

from .cases import Case

#: Peer name -> how it is built. "normkit" first: it is the row being judged.
#: "kernel" is normkit's compiled kernels alone, writing into outputs that already
#: exist (allocation aside, as the floor), called on the same data.
PEERS = ("normkit", "torch", "torch.compile", "numpy-ref", "kernel")

#: The NumPy reference is timed only below this many elements (it is float64 and unfused).
REFERENCE_MAX_NUMEL = 1 << 21

#: layer name -> (torch class, normkit class, constructor arguments from the input shape)
_LAYERS = {
    "BatchNorm1d": (nn.BatchNorm1d, nkn.BatchNorm1d, lambda s: (s[1],)),
    "BatchNorm2d": (nn.BatchNorm2d, nkn.BatchNorm2d, lambda s: (s[1],)),
    "BatchNorm3d": (nn.BatchNorm3d, nkn.BatchNorm3d, lambda s: (s[1],)),
    "LayerNorm": (nn.LayerNorm, nkn.LayerNorm, lambda s: (s[-1],)),
    "RMSNorm": (nn.RMSNorm, nkn.RMSNorm, lambda s: (s[-1],)),
    "GroupNorm": (nn.GroupNorm, nkn.GroupNorm, lambda s: (32, s[1])),
    "InstanceNorm2d": (nn.InstanceNorm2d, nkn.InstanceNorm2d, lambda s: (s[1], 1e-5, 0.1, True)),
}


def make_input(case: Case, requires_grad: bool = False, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, case.dtype)
    x = torch.randn(case.shape, generator=g, dtype=dtype) * 2.0 + 0.5
    if case.layout == "channels_last":
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x.requires_grad_(requires_grad)


class _WithResidual(nn.Module):
    """``relu(bn(x) + z)``: torch's separate operations, or normkit's fused layer, with ``z`` fixed."""

    def __init__(self, bn: nn.Module, z: torch.Tensor, fused: bool) -> None:
        super().__init__()
        self.bn, self.z, self.fused = bn, z, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x, self.z) if self.fused else torch.relu(self.bn(x) + self.z)


def _module(peer: str, case: Case) -> nn.Module:
    if case.layer == "BatchNormAct2d":
        bn = _module(peer, Case("BatchNorm2d", case.shape, case.layout, case.direction, case.dtype))
        if peer == "normkit":
            fused = nkn.BatchNormAct2d(case.shape[1], act="relu").to(getattr(torch, case.dtype))
            fused.load_state_dict(bn.state_dict())
            bn = fused
        return _WithResidual(bn, make_input(case, seed=2), fused=peer == "normkit")
    torch_cls, normkit_cls, args = _LAYERS[case.layer]
    m = (normkit_cls if peer == "normkit" else torch_cls)(*args(case.shape)).to(getattr(torch, case.dtype))
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        if getattr(m, "bias", None) is not None:
            m.bias.uniform_(-0.5, 0.5)
    return m


def _torch_callable(module: nn.Module, case: Case) -> Callable[[], object]:
    x = make_input(case, requires_grad=case.direction in ("bwd", "fwd_bwd"))
    params = [p for p in module.parameters()]
    if case.direction == "train_fwd":
        module.train()
        return lambda: module(x)
    if case.direction == "eval_fwd":
        module.eval()

        def run():
            with torch.no_grad():
                return module(x)

        return run
    module.train()
    g = torch.randn(case.shape, dtype=x.dtype)
    if case.layout == "channels_last":
        g = g.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    if case.direction == "bwd":
        y = module(x)
        return lambda: torch.autograd.grad(y, [x] + params, g, retain_graph=True)
    return lambda: torch.autograd.grad(module(x), [x] + params, g)


def _reference_callable(case: Case) -> Optional[Callable[[], object]]:
    if case.numel > REFERENCE_MAX_NUMEL or not case.layer.startswith("BatchNorm") or "Act" in case.layer:
        return None
    x = make_input(case).numpy()
    C = case.shape[1]
    w, b = np.ones(C, x.dtype), np.zeros(C, x.dtype)
    rm, rv = np.zeros(C), np.ones(C)
    dy = np.ones_like(x)
    if case.direction == "train_fwd":
        return lambda: reference.batch_norm(x, w, b)
    if case.direction == "eval_fwd":
        return lambda: reference.batch_norm(x, w, b, running_mean=rm, running_var=rv, training=False)
    _, mean, var = reference.batch_norm(x, w, b)
    if case.direction == "bwd":
        return lambda: reference.batch_norm_backward(dy, x, mean, var, w)

    def both():
        _, m, v = reference.batch_norm(x, w, b)
        return reference.batch_norm_backward(dy, x, m, v, w)

    return both


def _kernel_callable(case: Case) -> Optional[Callable[[], object]]:
    """normkit's kernel entry points on NumPy views of the case's tensors, into
    preallocated outputs (torch's allocation, as a user's existing tensor)."""
    if case.layer == "BatchNormAct2d" or case.direction == "eval_fwd" and not case.layer.startswith("BatchNorm"):
        return None
    x = make_input(case)
    g = make_input(case, seed=1)
    out = torch.empty_like(x)
    dx = torch.empty_like(x)
    if case.layer.startswith("BatchNorm"):
        xv, v = as_view(x, 1)  # the layers' own zero-copy (P, C, L) views
        gv, ov, dv = (as_view(t, 1, like=v)[0] for t in (g, out, dx))
        C = v.C
        w, b = np.ones(C, xv.dtype), np.zeros(C, xv.dtype)
        mean, var, rstd = kernels.forward_batch(xv, w, b, 1e-5, ov)
        fwd = {"train_fwd": lambda: kernels.forward_batch(xv, w, b, 1e-5, ov),
               "eval_fwd": lambda: kernels.forward_fixed(xv, mean, var, w, b, 1e-5, ov),
               "bwd": lambda: kernels.backward(gv, xv, mean, rstd, w, True, dv)}
        if case.direction in fwd:
            return fwd[case.direction]

        def both():
            m, _, r = kernels.forward_batch(xv, w, b, 1e-5, ov)
            return kernels.backward(gv, xv, m, r, w, True, dv)

        return both
    xn, gn, on, dn = (t.numpy() for t in (x, g, out, dx))
    if case.layer in ("LayerNorm", "RMSNorm"):
        center = case.layer == "LayerNorm"
        D = case.shape[-1]
        xn, gn, on, dn = (a.reshape(-1, D) for a in (xn, gn, on, dn))
        w = np.ones(D, xn.dtype)
        b = np.zeros(D, xn.dtype) if center else None

        def forward():
            return rowwise.row_forward(xn, w, b, 1e-5, on, center)

        def backward(stats):
            return rowwise.row_backward(gn, xn, stats[0], stats[2], w, dn, center)
    else:
        N, C = case.shape[:2]
        xn, gn, on, dn = (a.reshape(N, C, -1) for a in (xn, gn, on, dn))
        w, b = np.ones(C, xn.dtype), np.zeros(C, xn.dtype)
        if case.layer == "GroupNorm":
            def forward():
                return grouped.group_forward(xn, 32, w, b, 1e-5, on)

            def backward(stats):
                return grouped.group_backward(gn, xn, 32, stats[0], stats[2], w, dn)
        else:
            def forward():
                return grouped.instance_forward(xn, w, b, 1e-5, on)

            def backward(stats):
                return grouped.instance_backward(gn, xn, stats[0], stats[2], w, True, dn)
    if case.direction == "train_fwd":
        return forward
    stats = forward()
    if case.direction == "bwd":
        return lambda: backward(stats)
    return lambda: backward(forward())


def make_callables(case: Case, peers=PEERS) -> Dict[str, Callable[[], object]]:
    """One zero-argument callable per available peer for ``case``."""
    out: Dict[str, Callable[[], object]] = {}
    for peer in peers:
        if peer in ("numpy-ref", "kernel"):
            fn = (_reference_callable if peer == "numpy-ref" else _kernel_callable)(case)
            if fn is not None:
                out[peer] = fn
        elif peer == "torch.compile":
            module = torch.compile(_module("torch", case), backend="inductor", dynamic=False)
            out[peer] = _torch_callable(module, case)
        else:
            out[peer] = _torch_callable(_module(peer, case), case)
    return out
