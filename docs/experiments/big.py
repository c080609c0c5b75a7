import sys, numpy as np, torch, normkit.nn as nkn
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
shape = tuple(int(s) for s in sys.argv[1].split("x"))
x = torch.randn(*shape); C = shape[1]
tb = torch.nn.BatchNorm2d(C); nb = nkn.BatchNorm2d(C)
fns = {"torch": lambda: tb(x), "normkit": lambda: nb(x)}
with torch.no_grad():
    for k, t in measure_interleaved(fns, budget=1).items(): print(f"train {k:12s} {t.ms:.3f} {t.min*1e3:.3f}")
    tb.eval(); nb.eval()
    for k, t in measure_interleaved(fns, budget=1).items(): print(f"eval  {k:12s} {t.ms:.3f} {t.min*1e3:.3f}")
