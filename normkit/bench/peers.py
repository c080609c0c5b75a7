"""The implementations ``normkit bench`` puts side by side, as zero-argument callables."""

from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np
import torch
from torch import nn

import normkit.nn as nkn
from normkit import reference

from .cases import Case

#: Peer name -> how it is built. "normkit" first: it is the row being judged.
PEERS = ("normkit", "torch", "torch.compile", "numpy-ref")

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


def make_callables(case: Case, peers=PEERS) -> Dict[str, Callable[[], object]]:
    """One zero-argument callable per available peer for ``case``."""
    out: Dict[str, Callable[[], object]] = {}
    for peer in peers:
        if peer == "numpy-ref":
            fn = _reference_callable(case)
            if fn is not None:
                out[peer] = fn
        elif peer == "torch.compile":
            module = torch.compile(_module("torch", case), backend="inductor", dynamic=False)
            out[peer] = _torch_callable(module, case)
        else:
            out[peer] = _torch_callable(_module(peer, case), case)
    return out
