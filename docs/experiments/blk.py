import numpy as np, numba
from numba import prange
from normkit.kernels._jit import twin, helper
from normkit.kernels.reduce import channel_shift, finish_moments
from normkit.kernels.coefs import forward_coefs, backward_coefs

def _blk_forward(x, w, b, eps, out, cb):
    P, C, L = x.shape
    W = C * L
    x2 = x.reshape(P, W); o2 = out.reshape(P, W)
    nb = (C + cb - 1) // cb
    mean = np.empty(C); var = np.empty(C); rstd = np.empty(C)
    for t in prange(nb):
        c0 = t * cb
        c1 = min(C, c0 + cb)
        j0 = c0 * L
        Wb = (c1 - c0) * L
        kw = np.empty(Wb)
        for c in range(c0, c1):
            k = channel_shift(x, c)
            for j in range((c - c0) * L, (c - c0 + 1) * L):
                kw[j] = k
        a1 = np.zeros(Wb); a2 = np.zeros(Wb)
        for p in range(P):
            xr = x2[p, j0:j0 + Wb]
            for j in range(Wb):
                d = xr[j] - kw[j]
                a1[j] += d
                a2[j] += d * d
        mw = np.empty(Wb, x.dtype); aw = np.empty(Wb, x.dtype); sw = np.empty(Wb, x.dtype)
        co = np.empty(3, x.dtype)
        for c in range(c0, c1):
            lo = (c - c0) * L
            s1 = 0.0; s2 = 0.0
            for j in range(lo, lo + L):
                s1 += a1[j]; s2 += a2[j]
            mu, v = finish_moments(s1, s2, kw[lo], P * L)
            r = 1.0 / np.sqrt(v + eps)
            mean[c] = mu; var[c] = v; rstd[c] = r
            forward_coefs(mu, r, w, b, c, co)
            for j in range(lo, lo + L):
                mw[j] = co[0]; aw[j] = co[1]; sw[j] = co[2]
        for p in range(P):
            xr = x2[p, j0:j0 + Wb]
            orow = o2[p, j0:j0 + Wb]
            for j in range(Wb):
                orow[j] = (xr[j] - mw[j]) * aw[j] + sw[j]
    return mean, var, rstd

def _blk_backward(dy, x, mean, rstd, w, dx, cb):
    P, C, L = x.shape
    W = C * L
    x2 = x.reshape(P, W); g2 = dy.reshape(P, W); o2 = dx.reshape(P, W)
    nb = (C + cb - 1) // cb
    dw = np.empty(C); db = np.empty(C)
    n = P * L
    for t in prange(nb):
        c0 = t * cb
        c1 = min(C, c0 + cb)
        j0 = c0 * L
        Wb = (c1 - c0) * L
        mw = np.empty(Wb)
        for c in range(c0, c1):
            for j in range((c - c0) * L, (c - c0 + 1) * L):
                mw[j] = mean[c]
        a1 = np.zeros(Wb); a2 = np.zeros(Wb)
        for p in range(P):
            xr = x2[p, j0:j0 + Wb]
            gr = g2[p, j0:j0 + Wb]
            for j in range(Wb):
                g = np.float64(gr[j])
                a1[j] += g
                a2[j] += g * (xr[j] - mw[j])
        aw = np.empty(Wb, x.dtype); qw = np.empty(Wb, x.dtype); m2 = np.empty(Wb, x.dtype); kw = np.empty(Wb, x.dtype)
        co = np.empty(4, x.dtype)
        for c in range(c0, c1):
            lo = (c - c0) * L
            s1 = 0.0; s2 = 0.0
            for j in range(lo, lo + L):
                s1 += a1[j]; s2 += a2[j]
            dw[c] = s2 * rstd[c]; db[c] = s1
            backward_coefs(mean[c], rstd[c], w, c, s1, s2, n, True, co)
            for j in range(lo, lo + L):
                aw[j] = co[0]; qw[j] = co[1]; m2[j] = co[2]; kw[j] = co[3]
        for p in range(P):
            xr = x2[p, j0:j0 + Wb]; gr = g2[p, j0:j0 + Wb]; orow = o2[p, j0:j0 + Wb]
            for j in range(Wb):
                orow[j] = gr[j] * aw[j] + (xr[j] - m2[j]) * qw[j] + kw[j]
    return dw, db

def _blk_affine(x, m, a, s, out, cb, rows):
    P, C, L = x.shape
    W = C * L
    x2 = x.reshape(P, W); o2 = out.reshape(P, W)
    nb = (C + cb - 1) // cb
    nr = (P + rows - 1) // rows
    for t in prange(nb * nr):
        tb = t % nb; tr = t // nb
        c0 = tb * cb; c1 = min(C, c0 + cb); j0 = c0 * L; Wb = (c1 - c0) * L
        mw = np.empty(Wb, x.dtype); aw = np.empty(Wb, x.dtype); sw = np.empty(Wb, x.dtype)
        for c in range(c0, c1):
            for j in range((c - c0) * L, (c - c0 + 1) * L):
                mw[j] = m[c]; aw[j] = a[c]; sw[j] = s[c]
        for p in range(tr * rows, min(P, (tr + 1) * rows)):
            xr = x2[p, j0:j0 + Wb]; orow = o2[p, j0:j0 + Wb]
            for j in range(Wb):
                orow[j] = (xr[j] - mw[j]) * aw[j] + sw[j]

blk_forward, blk_forward_s = twin(_blk_forward)
blk_backward, _ = twin(_blk_backward)
blk_affine, _ = twin(_blk_affine)
