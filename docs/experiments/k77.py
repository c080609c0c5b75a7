import time, numpy as np, torch, normkit.kernels as K
from normkit.kernels import norm
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
P,C,L = 32,2048,49
x = torch.randn(P,C,7,7); x3 = x.numpy().reshape(P,C,L)
dy = torch.randn(P,C,7,7); dy3=dy.numpy().reshape(P,C,L)
out = np.empty_like(x3); dx=np.empty_like(x3)
w = np.random.rand(C).astype(np.float32); b=np.random.rand(C).astype(np.float32)
mean, var, rstd = K.forward_batch(x3, w, b, 1e-5, out)
bn = torch.nn.BatchNorm2d(C).eval()
xt = x.clone().requires_grad_()
bnt = torch.nn.BatchNorm2d(C).train()
yt = bnt(xt)
fns = {
 "torch_eval": lambda: bn(x),
 "nk_fixed_kernel": lambda: K.forward_fixed(x3, mean, var, w, b, 1e-5, out),
 "nk_fwd_kernel": lambda: K.forward_batch(x3, w, b, 1e-5, out),
 "torch_train_fwd": lambda: bnt(x),
 "nk_bwd_kernel": lambda: K.backward(dy3, x3, mean, rstd, w, True, dx),
 "torch_bwd": lambda: torch.autograd.grad(yt, [xt, bnt.weight, bnt.bias], dy, retain_graph=True),
 "copy_into": lambda: np.copyto(out, x3),
}
for k,t in measure_interleaved(fns, budget=0.5).items(): print(f"{k:20s} {t.ms:8.3f}  {t.min*1e3:8.3f}")
