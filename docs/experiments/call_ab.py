"""A BatchNorm module's whole call in this tree and in another tree's copy of the package,
in one process, alternating rounds, with torch's module beside them: training forward
(autograd on), forward+backward, eval forward. The other tree is imported as
`normkit_ab` (as kernel_ab.py does). Medians of rounds of N calls, in us; the order of the
three rotates from round to round (a fixed order favoured the last: 0.87-0.95 against itself).
Usage: call_ab.py OTHER_TREE SHAPE [SHAPE ...]   (ROUNDS=n, default 40)"""
import importlib
import os
import sys
import tempfile
import time

import torch

import normkit.nn as this

torch.set_num_threads(2)
link_dir = tempfile.mkdtemp()
os.symlink(os.path.abspath(sys.argv[1]) + "/normkit", link_dir + "/normkit_ab")
sys.path.insert(0, link_dir)
other = importlib.import_module("normkit_ab.nn")
ROUNDS = int(os.environ.get("ROUNDS", "40"))


def modules(shape):
    C = shape[1]
    name = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[len(shape)]
    return {"torch": getattr(torch.nn, name)(C), sys.argv[1]: getattr(other, name)(C), "this tree": getattr(this, name)(C)}


def directions(m, x, dy):
    def fwd():
        m.train()
        m(x)

    def fwd_bwd():
        m.train()
        m(x).backward(dy)

    def ev():
        m.eval()
        m(x)
    return {"forward": fwd, "forward+backward": fwd_bwd, "eval": ev}


for spec in sys.argv[2:]:
    shape = tuple(int(v) for v in spec.split("x"))
    x = torch.randn(*shape).requires_grad_()
    dy = torch.randn(*shape)
    mods = modules(shape)
    n = max(5, int(2e6 // x.numel()))
    for dname in ("forward", "forward+backward", "eval"):
        fs = {k: directions(m, x, dy)[dname] for k, m in mods.items()}
        res = {k: [] for k in fs}
        for f in fs.values():
            for _ in range(n):
                f()
        keys = list(fs)
        for r in range(ROUNDS):  # the order rotates: the peer after another runs faster (null test: 0.87-0.95)
            for k in keys[r % 3:] + keys[:r % 3]:
                f = fs[k]
                t0 = time.perf_counter()
                for _ in range(n):
                    f()
                res[k].append((time.perf_counter() - t0) / n * 1e6)
        med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
        print(f"{spec:12s} {dname:17s} " + "  ".join(f"{k} {v:8.1f}" for k, v in med.items())
              + f"  this/other {med['this tree'] / med[sys.argv[1]]:.3f}  torch/this {med['torch'] / med['this tree']:.2f}x")
