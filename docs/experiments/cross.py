import sys, torch, normkit.nn as nkn
import normkit.nn.functional as FF
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
for shape in [(8,16,8,8), (8,32,8,8), (16,32,8,8), (32,32,8,8), (32,32,16,16), (1024, 64), (1024,256)]:
    C = shape[1]
    x = torch.randn(*shape); xg = x.clone().requires_grad_(); dy = torch.randn(*shape)
    BN = nkn.BatchNorm1d if len(shape) == 2 else nkn.BatchNorm2d
    TB = torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d
    tb, nb = TB(C), BN(C)
    def fb(m, small):
        def f():
            FF.SMALL_INPUT = small
            m(xg).backward(dy)
        return f
    def fw(m, small):
        def f():
            FF.SMALL_INPUT = small
            m(xg)
        return f
    out = []
    for name, mk in (("fwd", fw), ("fwd_bwd", fb)):
        r = measure_interleaved({"torch": mk(tb, 0), "kernels": mk(nb, 0), "small": mk(nb, 1 << 40)}, budget=0.5)
        out.append(f"{name}: torch {r['torch'].ms*1e3:6.0f}us kernels x{r['kernels'].median/r['torch'].median:.2f} small x{r['small'].median/r['torch'].median:.2f}")
    print(shape, x.numel(), " | ".join(out))
