"""BatchNorm2d 32x64x112x112 (103 MB) in a process of its own: the module's training
forward, its backward (torch.autograd.grad on a kept graph) and forward+backward, as
`normkit bench` times them but with no other peer between the calls, normkit's and
torch's modules one after the other, two threads; median ms of 15 calls after 3.
Usage: fwd_bwd_alone.py cl|nchw"""
import os
import sys

import torch

import normkit.nn as nkn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

torch.set_num_threads(2)


def tm(f):
    return median_time(f, 15, 3) * 1e3


cl = sys.argv[1] == "cl"
for name, mod in (("normkit", nkn.BatchNorm2d(64)), ("torch", torch.nn.BatchNorm2d(64))):
    x = torch.randn(32, 64, 112, 112)
    if cl:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    g = torch.randn_like(x)
    params = list(mod.parameters())
    y = mod(x)
    r = {
        "fwd": tm(lambda: mod(x)),
        "bwd": tm(lambda: torch.autograd.grad(y, [x] + params, g, retain_graph=True)),
        "fwd_bwd": tm(lambda: torch.autograd.grad(mod(x), [x] + params, g)),
    }
    print(name, "CL" if cl else "NCHW", "  ".join(f"{k} {v:.1f} ms" for k, v in r.items()), flush=True)
