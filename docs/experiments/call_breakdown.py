"""Where a BatchNorm module call spends its time (no_grad): validation, views, output,
kernel, running-statistics update. Run under OMP_WAIT_POLICY=PASSIVE or GOMP_SPINCOUNT=...
to see the thread-pool wait policy. Usage: call_breakdown.py SHAPE"""
import torch, numpy as np, sys, time, collections
import normkit.nn as nkn
import normkit.nn.functional as F
import normkit.nn._autograd as AG
import normkit.kernels as K
torch.set_num_threads(2)
acc = collections.defaultdict(float)
def wrap(mod, name, label):
    f = getattr(mod, name)
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); acc[label] += time.perf_counter() - t; return r
    setattr(mod, name, g)
wrap(AG.kernels, "forward_batch", "kernel")
wrap(AG, "new_like_view", "new_like_view")
wrap(AG, "as_view", "as_view")
wrap(F, "_update", "_update")
wrap(F, "check_input", "check_input")
wrap(F, "kernel_forward", "kernel_forward(all)")
shape = tuple(int(v) for v in sys.argv[1].split("x"))
a = (nkn.BatchNorm2d if len(shape) == 4 else nkn.BatchNorm1d)(shape[1]); x = torch.randn(*shape)
with torch.no_grad():
    for _ in range(50): a(x)
    acc.clear(); n = 500
    t0 = time.perf_counter()
    for _ in range(n): a(x)
    tot = time.perf_counter() - t0
print(shape, "total %.3f ms/call" % (tot / n * 1e3), "  ".join(f"{k} {v/n*1e3:.3f}" for k, v in acc.items()))
