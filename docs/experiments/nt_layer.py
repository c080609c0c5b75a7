"""BatchNorm2d layer calls with the streaming-store threshold at 4 MiB and at 8 MiB, and
with streaming stores for the backward's dx only (threshold 8 MiB during the forward,
4 MiB during the backward), in one process, the settings interleaved in rounds. Each
direction as `normkit bench` times it (training forward, autograd.grad of a kept graph,
forward+backward through autograd.grad, eval under no_grad), and forward+backward
with torch's ReLU after the layer (its output consumed at once, as in a network);
medians in ms, torch's layer beside. Usage: nt_layer.py SHAPE [cl] [ROUNDS] (e.g. 8x64x56x56 cl 5)"""
import os
import sys

import torch

import normkit.nn as nkn
from normkit.kernels import stream

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from median_time import median_time  # noqa: E402

torch.set_num_threads(2)
shape = tuple(int(v) for v in sys.argv[1].split("x"))
cl = "cl" in sys.argv[2:]
rounds = int(sys.argv[-1]) if sys.argv[-1].isdigit() else 3
fmt = torch.channels_last if cl else torch.contiguous_format
x = torch.randn(*shape).contiguous(memory_format=fmt).requires_grad_(True)
g = torch.randn(*shape).contiguous(memory_format=fmt)
MIB = 1 << 20
SETTINGS = {"4 MiB": (4 * MIB, 4 * MIB), "8 MiB": (8 * MIB, 8 * MIB), "dx only": (8 * MIB, 4 * MIB)}


def directions(m, fwd_min, bwd_min):
    params = list(m.parameters())

    def train_fwd():
        stream.STREAM_MIN_BYTES = fwd_min
        return m(x)

    y = train_fwd()

    def bwd():
        stream.STREAM_MIN_BYTES = bwd_min
        return torch.autograd.grad(y, [x] + params, g, retain_graph=True)

    def fwd_bwd():
        out = train_fwd()
        stream.STREAM_MIN_BYTES = bwd_min
        return torch.autograd.grad(out, [x] + params, g)

    def eval_fwd():
        stream.STREAM_MIN_BYTES = fwd_min
        m.eval()
        with torch.no_grad():
            out = m(x)
        m.train()
        return out

    def relu_fwd_bwd():  # the output consumed at once, as in a network: ReLU after BN
        out = torch.relu(train_fwd())
        stream.STREAM_MIN_BYTES = bwd_min
        return torch.autograd.grad(out, [x] + params, g)

    return {"train_fwd": train_fwd, "bwd": bwd, "fwd_bwd": fwd_bwd, "eval_fwd": eval_fwd,
            "relu_fwd_bwd": relu_fwd_bwd}


nk = nkn.BatchNorm2d(shape[1])
tm = torch.nn.BatchNorm2d(shape[1])
runs = {name: directions(nk, *lim) for name, lim in SETTINGS.items()}
runs["torch"] = directions(tm, 0, 0)
for r in range(rounds):
    for d in ("train_fwd", "bwd", "fwd_bwd", "eval_fwd", "relu_fwd_bwd"):
        line = "  ".join(f"{name} {median_time(fs[d], 200, 20) * 1e3:.3f}" for name, fs in runs.items())
        print(f"round {r} {d:12s} {line}", flush=True)
