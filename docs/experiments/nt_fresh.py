"""Outputs above 32 MiB, fresh from the operating system on every call: a BatchNorm
layer's training forward, forward+backward (autograd.grad) and eval with ordinary
stores (stream.STREAM_MAX_BYTES = 32 MiB, the default) and with streaming stores
(no upper bound), the two settings interleaved (normkit.bench.timing.measure_interleaved),
two rounds, median ms. Usage: nt_fresh.py SHAPE [cl] (e.g. 32x64x112x112 cl, 65536x1024)"""
import sys

import torch

import normkit.nn as nkn
from normkit.bench.timing import measure_interleaved
from normkit.kernels import stream

torch.set_num_threads(2)
shape = tuple(int(v) for v in sys.argv[1].split("x"))
fmt = torch.channels_last if "cl" in sys.argv[2:] else torch.contiguous_format
x = torch.randn(*shape).contiguous(memory_format=fmt).requires_grad_(True)
g = torch.randn(*shape).contiguous(memory_format=fmt)
m = (nkn.BatchNorm2d if len(shape) == 4 else nkn.BatchNorm1d)(shape[1])
params = [x] + list(m.parameters())


def with_max(limit, f):
    def run():
        stream.STREAM_MAX_BYTES = limit
        return f()
    return run


def fwd():
    return m(x)


def fwd_bwd():
    return torch.autograd.grad(m(x), params, g)


def eval_fwd():
    m.eval()
    with torch.no_grad():
        y = m(x)
    m.train()
    return y


fns = {}
for name, f in (("fwd", fwd), ("fwd_bwd", fwd_bwd), ("eval", eval_fwd)):
    fns[f"{name} ordinary"] = with_max(32 << 20, f)
    fns[f"{name} streamed"] = with_max(1 << 62, f)
for _ in range(2):
    res = measure_interleaved(fns, budget=1.5, rounds=10)
    print("  ".join(f"{k} {v.ms:.2f}" for k, v in res.items()), flush=True)
