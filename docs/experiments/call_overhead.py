"""Per-call cost of the BatchNorm module around its kernel: the module with a stub kernel
(returns fixed statistics), with and without autograd, the real module and torch.
Usage: call_overhead.py SHAPE (e.g. 1024x256, 32x64x16x16)"""
import torch, numpy as np, time, sys
import normkit.nn as nkn
import normkit.nn._autograd as AG
torch.set_num_threads(2)
shape = tuple(int(v) for v in sys.argv[1].split("x"))
C = shape[1]
a = nkn.BatchNorm2d(C) if len(shape) == 4 else nkn.BatchNorm1d(C); t = torch.nn.BatchNorm2d(C) if len(shape) == 4 else torch.nn.BatchNorm1d(C)
x = torch.randn(*shape)
st = (np.zeros(C), np.ones(C), np.ones(C))
real = AG.kernels.forward_batch
def loop(f, n=3000):
    for _ in range(100): f()
    ts=[]
    for _ in range(n):
        t0=time.perf_counter(); f(); ts.append(time.perf_counter()-t0)
    ts.sort(); return ts[n//2]*1e6
AG.kernels.forward_batch = lambda *a: st
print("module with stub kernel: %.1f us" % loop(lambda: a(x)))
with torch.no_grad():
    print("  ... under no_grad: %.1f us" % loop(lambda: a(x)))
AG.kernels.forward_batch = real
print("module real: %.1f us" % loop(lambda: a(x)))
print("torch: %.1f us" % loop(lambda: t(x)))
