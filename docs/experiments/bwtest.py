import torch, numpy as np, numba
from numba import njit, prange
from normkit.bench.timing import measure_interleaved
torch.set_num_threads(2)
N,C,L = 32,256,784
x = torch.randn(N,C,L); x3 = x.numpy(); out = np.empty_like(x3)
@njit(parallel=True, fastmath=True)
def copy(x, o):
    P = x.shape[0]*x.shape[1]
    xf = x.reshape(P, x.shape[2]); of = o.reshape(P, x.shape[2])
    for t in prange(P):
        for i in range(xf.shape[1]):
            of[t, i] = xf[t, i] * 1.5
@njit(parallel=True, fastmath=True)
def sum32(x):
    P = x.shape[0]*x.shape[1]
    xf = x.reshape(P, x.shape[2]); acc = np.zeros(P)
    for t in prange(P):
        s = np.float32(0)
        for i in range(xf.shape[1]):
            s += xf[t, i]
        acc[t] = s
    return acc
@njit(parallel=True, fastmath=True)
def sum64(x):
    P = x.shape[0]*x.shape[1]
    xf = x.reshape(P, x.shape[2]); acc = np.zeros(P)
    for t in prange(P):
        s = 0.0; s2 = 0.0
        for i in range(xf.shape[1]):
            d = xf[t, i] - 1.0
            s += d; s2 += d*d
        acc[t] = s + s2
    return acc
@njit(parallel=True, fastmath=True)
def fused(x, o):
    P = x.shape[0]*x.shape[1]
    xf = x.reshape(P, x.shape[2]); of = o.reshape(P, x.shape[2])
    for t in prange(P):
        s = 0.0; s2 = 0.0
        for i in range(xf.shape[1]):
            d = xf[t, i] - 1.0
            s += d; s2 += d*d
        a = np.float32(1/np.sqrt(s2/784+1e-5)); m = np.float32(s/784)
        for i in range(xf.shape[1]):
            of[t, i] = (xf[t, i] - m) * a
copy(x3, out); sum32(x3); sum64(x3); fused(x3, out)
fns = {"nb_copy": lambda: copy(x3, out), "nb_sum32": lambda: sum32(x3), "nb_sum64_2": lambda: sum64(x3), "nb_fused": lambda: fused(x3, out),
       "torch_clone": lambda: x.clone(), "torch_sum": lambda: x.sum()}
for k, t in measure_interleaved(fns, budget=1.0).items(): print(f"{k:20s} {t.ms:.3f} {t.min*1e3:.3f}")
from normkit.kernels import fused as F
import normkit.kernels as K
w = np.ones(C, np.float32); b = np.zeros(C, np.float32)
fns = {"nb_fused": lambda: fused(x3, out), "gn_kernel": lambda: F.group_forward_par(x3, 32, w, b, 1e-5, out),
       "gn_kernel_256groups": lambda: F.group_forward_par(x3, 256, w, b, 1e-5, out),
       "bn_kernel": lambda: K.forward_batch(x3, w, b, 1e-5, out), "nb_copy": lambda: copy(x3, out)}
print("--")
for k, t in measure_interleaved(fns, budget=1.0).items(): print(f"{k:20s} {t.ms:.3f} {t.min*1e3:.3f}")
