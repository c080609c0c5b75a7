"""BatchNorm2d forward+backward, normkit vs torch, on the small ResNet step's shapes.
Usage: step_shapes.py"""
import torch, normkit.nn as nkn
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
for shape in [(32,32,32,32),(32,64,16,16),(32,128,8,8)]:
    a, b = nkn.BatchNorm2d(shape[1]), torch.nn.BatchNorm2d(shape[1])
    x = torch.randn(*shape, requires_grad=True); g = torch.randn(*shape)
    def fb(m):
        def f():
            x.grad = None
            m(x).backward(g)
        return f
    r = measure_interleaved({"normkit": fb(a), "torch": fb(b)}, budget=0.5)
    print(shape, " ".join(f"{k} {v.median*1e3:.3f}" for k, v in r.items()), "x %.2f" % (r["torch"].median / r["normkit"].median))
