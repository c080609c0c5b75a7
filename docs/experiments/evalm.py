import sys, numpy as np, torch, normkit.nn as nkn, normkit.kernels as K
from normkit.nn._autograd import forward as kf
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
shape = tuple(int(s) for s in sys.argv[1].split("x")); cl = len(sys.argv) > 2
x = torch.randn(*shape)
if cl: x = x.contiguous(memory_format=torch.channels_last)
C = shape[1]
tb = torch.nn.BatchNorm2d(C).eval(); nb = nkn.BatchNorm2d(C).eval()
with torch.no_grad():
  for m in (tb, nb):
    m.running_var.uniform_(0.5, 2); m.weight.uniform_(0.5, 2)
w = nb.weight; b = nb.bias
out = torch.empty_like(x)
x3 = x.numpy().reshape(shape[0], C, -1) if not cl else None
def alloc(): return torch.empty_like(x)
fns = {"torch": lambda: tb(x), "normkit": lambda: nb(x),
       "kforward": lambda: kf(x, w, b, nb.running_mean, nb.running_var, False, 1e-5),
       "empty_like": alloc}
with torch.no_grad():
    for k, t in measure_interleaved(fns, budget=0.5).items(): print(f"{k:12s} {t.ms:.3f} {t.min*1e3:.3f}")
print("--- keep_freed_memory")
import normkit.allocator as A
A.keep_freed_memory()
with torch.no_grad():
    for k, t in measure_interleaved(fns, budget=0.5).items(): print(f"{k:12s} {t.ms:.3f} {t.min*1e3:.3f}")
