import torch, numpy as np
from normkit.kernels import grouped
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
N,C,L = 32,256,784
x3 = torch.randn(N,C,L).numpy(); out = torch.empty(N,C,L).numpy(); dy3 = torch.randn(N,C,L).numpy(); dx = torch.empty(N,C,L).numpy()
w = np.random.rand(C).astype(np.float32); b = np.zeros(C, np.float32)
real = grouped._fused_groups
mean, var, rstd = grouped.group_forward(x3, 32, w, b, 1e-5, out)
def run(fused, what):
    def f():
        grouped._fused_groups = real if fused else (lambda *a: False)
        if what == "fwd":
            grouped.group_forward(x3, 32, w, b, 1e-5, out)
        else:
            grouped.group_backward(dy3, x3, 32, mean, rstd, w, dx)
        grouped._fused_groups = real
    return f
r = measure_interleaved({"fwd_fused": run(True, "fwd"), "fwd_2pass": run(False, "fwd"), "bwd_fused": run(True, "bwd"), "bwd_2pass": run(False, "bwd")}, budget=1.0)
for k, v in r.items(): print(f"{k:10s} {v.ms:.3f} {v.min*1e3:.3f}")
