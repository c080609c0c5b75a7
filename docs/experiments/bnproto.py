import torch, numpy as np
from numba import njit, prange
from normkit.bench.timing import measure_interleaved
import normkit.kernels as K
torch.set_num_threads(2)
N,C,L = 32,256,784
x = torch.randn(N,C,L); x3 = x.numpy(); out = np.empty_like(x3)
@njit(parallel=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def bn_chan(x, o):
    P, C, L = x.shape
    for c in prange(C):
        s = 0.0; s2 = 0.0
        k = np.float64(x[0, c, 0])
        for p in range(P):
            for i in range(L):
                d = x[p, c, i] - k
                s += d; s2 += d*d
        n = P * L
        mu = s / n
        a = np.float32(1/np.sqrt(s2/n - mu*mu + 1e-5)); m = np.float32(mu + k)
        for p in range(P):
            for i in range(L):
                o[p, c, i] = (x[p, c, i] - m) * a
@njit(parallel=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def bn_chan_p2(x, o):
    # channel pairs: stats over a pair's p-runs interleaved
    P, C, L = x.shape
    for c in prange(C):
        s = 0.0; s2 = 0.0
        k = np.float64(x[0, c, 0])
        for p in range(P):
            xr = x[p, c]
            a1 = 0.0; a2 = 0.0
            for i in range(L):
                d = xr[i] - k
                a1 += d; a2 += d*d
            s += a1; s2 += a2
        n = P * L
        mu = s / n
        a = np.float32(1/np.sqrt(s2/n - mu*mu + 1e-5)); m = np.float32(mu + k)
        for p in range(P):
            xr = x[p, c]; orow = o[p, c]
            for i in range(L):
                orow[i] = (xr[i] - m) * a
bn_chan(x3, out); bn_chan_p2(x3, out)
w = np.ones(C, np.float32); b = np.zeros(C, np.float32)
fns = {"proto_chan": lambda: bn_chan(x3, out), "proto_chan_runs": lambda: bn_chan_p2(x3, out), "bn_kernel": lambda: K.forward_batch(x3, w, b, 1e-5, out)}
for k, t in measure_interleaved(fns, budget=1.0).items(): print(f"{k:20s} {t.ms:.3f} {t.min*1e3:.3f}")
@njit(parallel=True, fastmath={"nsz", "arcp", "contract", "afn", "reassoc"})
def bn_block(x, o, cb):
    P, C, L = x.shape
    nb = (C + cb - 1) // cb
    for t in prange(nb):
        c0 = t * cb; c1 = min(C, c0 + cb)
        s1 = np.zeros(c1 - c0); s2 = np.zeros(c1 - c0); ks = np.empty(c1 - c0)
        for c in range(c0, c1):
            ks[c - c0] = np.float64(x[0, c, 0])
        for p in range(P):
            for c in range(c0, c1):
                xr = x[p, c]; k = ks[c - c0]
                a1 = 0.0; a2 = 0.0
                for i in range(L):
                    d = xr[i] - k
                    a1 += d; a2 += d*d
                s1[c - c0] += a1; s2[c - c0] += a2
        n = P * L
        ms = np.empty(c1 - c0, np.float32); as_ = np.empty(c1 - c0, np.float32)
        for c in range(c0, c1):
            mu = s1[c - c0] / n
            as_[c - c0] = 1/np.sqrt(s2[c - c0]/n - mu*mu + 1e-5); ms[c - c0] = mu + ks[c - c0]
        for p in range(P):
            for c in range(c0, c1):
                xr = x[p, c]; orow = o[p, c]; m = ms[c - c0]; a = as_[c - c0]
                for i in range(L):
                    orow[i] = (xr[i] - m) * a
for cb in (2, 4, 8, 16):
    bn_block(x3, out, cb)
    fns = {"proto_chan": lambda: bn_chan(x3, out), f"block{cb}": lambda: bn_block(x3, out, cb), "bn_kernel": lambda: K.forward_batch(x3, w, b, 1e-5, out)}
    for k, t in measure_interleaved(fns, budget=0.6).items(): print(f"{k:20s} {t.ms:.3f} {t.min*1e3:.3f}")
