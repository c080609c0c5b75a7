import sys, numpy as np, torch, normkit.nn as nkn
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
shape = tuple(int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "8x16x8x8").split("x"))
C = shape[1]
x = torch.randn(*shape); xg = x.clone().requires_grad_()
BN = nkn.BatchNorm1d if len(shape) == 2 else nkn.BatchNorm2d
TB = torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d
tb = TB(C); nb = BN(C)
dy = torch.randn(*shape)
def fb(m):
    def f():
        y = m(xg); y.backward(dy)
    return f
for name, fns in [("train_fwd(grad)", {"torch": lambda: tb(xg), "normkit": lambda: nb(xg)}),
                  ("train_fwd(nograd)", {"torch": lambda: tb(x), "normkit": lambda: nb(x)}),
                  ("fwd_bwd", {"torch": fb(tb), "normkit": fb(nb)})]:
    r = measure_interleaved(fns, budget=1.0)
    print(f"{name:18s} torch {r['torch'].ms*1e3:7.1f} us  normkit {r['normkit'].ms*1e3:7.1f} us  ratio {r['normkit'].median/r['torch'].median:.2f}")
tb.eval(); nb.eval()
r = measure_interleaved({"torch": lambda: tb(x), "normkit": lambda: nb(x)}, budget=1.0)
print(f"{'eval':18s} torch {r['torch'].ms*1e3:7.1f} us  normkit {r['normkit'].ms*1e3:7.1f} us  ratio {r['normkit'].median/r['torch'].median:.2f}")
