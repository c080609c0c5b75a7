"""GroupNorm (32 groups) module against torch.nn.GroupNorm on three ResNet maps:
torch time / normkit time for the no-grad forward and forward+backward, medians of
25 calls, three rounds averaged. Run at two commits with run_at.py for before -> after."""
import time

import numpy as np
import torch

import normkit
import normkit.nn as nnk

torch.set_num_threads(2)
res = []
for shape in ((32, 2048, 7, 7), (32, 1024, 14, 14), (32, 256, 28, 28)):
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn(shape)
    ours, theirs = nnk.GroupNorm(32, shape[1]), torch.nn.GroupNorm(32, shape[1])

    def fwd_bwd(mod):
        mod(x).backward(g)

    def fwd(mod):
        with torch.no_grad():
            mod(x)

    def med(f, n=25):
        f()
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return np.median(ts) * 1e3

    r = np.array([(med(lambda: fwd(ours)) / med(lambda: fwd(theirs)),
                   med(lambda: fwd_bwd(ours)) / med(lambda: fwd_bwd(theirs))) for _ in range(3)])
    res.append(f"{shape[1]}x{shape[2]}: fwd {1 / r[:, 0].mean():.2f}x fwd+bwd {1 / r[:, 1].mean():.2f}x")
print(normkit.__file__, " | ".join(res))
