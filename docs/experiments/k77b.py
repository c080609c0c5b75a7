import sys, time, numpy as np, torch, normkit.kernels as K
import os; sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from blk import blk_forward, blk_backward, blk_affine
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
shape = tuple(int(s) for s in sys.argv[1].split("x")); cl = len(sys.argv) > 2 and sys.argv[2] == "cl"
x = torch.randn(*shape); dy = torch.randn(*shape)
if cl:
    x = x.contiguous(memory_format=torch.channels_last); dy = dy.contiguous(memory_format=torch.channels_last)
    P = x.numel() // shape[1]; C = shape[1]; L = 1
    x3 = x.permute(0,2,3,1).numpy().reshape(P,C,1); dy3 = dy.permute(0,2,3,1).numpy().reshape(P,C,1)
else:
    P, C = shape[0], shape[1]; L = x.numel() // (P*C)
    x3 = x.numpy().reshape(P,C,L); dy3 = dy.numpy().reshape(P,C,L)
out = np.empty_like(x3); dx=np.empty_like(x3); out2 = np.empty_like(x3); dx2 = np.empty_like(x3)
w = np.random.rand(C).astype(np.float32); b=np.random.rand(C).astype(np.float32)
mean, var, rstd = K.forward_batch(x3, w, b, 1e-5, out)
cb = max(1, min(-(-1024 // L), (1 << 20) // (P * L * 4)))
cb = max(cb, -(-16 // L))
print("P C L", P, C, L, "cb", cb, "blocks", -(-C // cb))
m2, v2, r2 = blk_forward(x3, w, b, 1e-5, out2, cb)
print("fwd maxdiff", np.abs(out2-out).max(), np.abs(m2-mean).max(), np.abs(v2-var).max())
dw, db = K.backward(dy3, x3, mean, rstd, w, True, dx)
dw2, db2 = blk_backward(dy3, x3, mean, rstd, w, dx2, cb)
print("bwd maxdiff", np.abs(dx2-dx).max(), np.abs(dw2-dw).max(), np.abs(db2-db).max())
mm = mean.astype(np.float32); aa = (rstd*w).astype(np.float32); ss = b
rows = max(1, (1<<16) // (cb*L))
BN = torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d; bn = BN(C).eval()
xt = x.clone().requires_grad_()
bnt = BN(C).train()
yt = bnt(xt)
fns = {
 "torch_eval": lambda: bn(x),
 "nk_fixed_kernel": lambda: K.forward_fixed(x3, mean, var, w, b, 1e-5, out),
 "blk_affine": lambda: blk_affine(x3, mm, aa, ss, out2, cb, rows),
 "torch_train_fwd": lambda: bnt(x),
 "nk_fwd_kernel": lambda: K.forward_batch(x3, w, b, 1e-5, out),
 "blk_fwd": lambda: blk_forward(x3, w, b, 1e-5, out2, cb),
 "torch_bwd": lambda: torch.autograd.grad(yt, [xt, bnt.weight, bnt.bias], dy, retain_graph=True),
 "nk_bwd_kernel": lambda: K.backward(dy3, x3, mean, rstd, w, True, dx),
 "blk_bwd": lambda: blk_backward(dy3, x3, mean, rstd, w, dx2, cb),
}
for k,t in measure_interleaved(fns, budget=0.5).items(): print(f"{k:20s} {t.ms:8.3f}  {t.min*1e3:8.3f}")
