"""Column-blocked fused training forward for the columns pattern (channels-last, BatchNorm1d),
against the current two-pass forward (kernels.forward_batch), in one process, alternating.

Each task owns a block of CB whole columns: register-tile sums down all rows, the block's
coefficients, then the element pass over the same block while it is in this core's L2
(one parallel region, no cross-task merge). Only where a block's data fits the per-channel
cache budget. Usage: col_fused.py PxC [PxC ...]   (THREADS=n, CB=n to force a block)

`col_fused.py parts PxC CB [CB ...]`: the two halves apart, best of 20 rounds: the sums
over column blocks of CB columns, and the element pass over the same blocks, beside the
current sums (row tasks) and element pass (rows split between the threads)."""
import os, sys, time
import numpy as np
import numba
from numba import njit, prange
from normkit import kernels
from normkit.kernels._jit import FASTMATH
from normkit.kernels.reduce import _col_rows, channel_shift
from normkit.kernels.coefs import finish_channels

OPT = dict(fastmath=FASTMATH, error_model="numpy", nogil=True)


@njit(parallel=True, **OPT)
def fused_cols(x, w, b, eps, out, cb):
    P, C, L = x.shape  # L == 1 here
    x2 = x.reshape(P, C)
    o2 = out.reshape(P, C)
    mean = np.empty(C)
    var = np.empty(C)
    rstd = np.empty(C)
    coefs = np.empty((3, C), x.dtype)
    shift = np.empty(C)
    nb = (C + cb - 1) // cb
    for t in prange(nb):
        j0 = t * cb
        nj = min(cb, C - j0)
        for j in range(nj):
            shift[j0 + j] = channel_shift(x, j0 + j)
        a1 = np.zeros(nj)
        a2 = np.zeros(nj)
        _col_rows(x2, None, shift[j0:j0 + nj], None, 0, P, j0, nj, a1, a2)
        finish_channels(a1, a2, shift, P, eps, w, b, j0, mean, var, rstd, coefs)
        m = coefs[0, j0:j0 + nj]
        a = coefs[1, j0:j0 + nj]
        s = coefs[2, j0:j0 + nj]
        for r in range(P):
            xr = x2[r, j0:j0 + nj]
            orow = o2[r, j0:j0 + nj]
            for j in range(nj):
                orow[j] = (xr[j] - m[j]) * a[j] + s[j]
    return mean, var, rstd


@njit(parallel=True, **OPT)
def sums_only(x, cb):
    P, C, L = x.shape
    x2 = x.reshape(P, C)
    shift = np.zeros(C)
    s1 = np.empty(C)
    nb = (C + cb - 1) // cb
    for t in prange(nb):
        j0 = t * cb
        nj = min(cb, C - j0)
        a1 = np.zeros(nj)
        a2 = np.zeros(nj)
        _col_rows(x2, None, shift[j0:j0 + nj], None, 0, P, j0, nj, a1, a2)
        s1[j0:j0 + nj] = a1
    return s1


@njit(parallel=True, **OPT)
def apply_only(x, out, cb, m, a, s):
    P, C, L = x.shape
    x2 = x.reshape(P, C)
    o2 = out.reshape(P, C)
    nb = (C + cb - 1) // cb
    for t in prange(nb):
        j0 = t * cb
        nj = min(cb, C - j0)
        mm = m[j0:j0 + nj]
        aa = a[j0:j0 + nj]
        ss = s[j0:j0 + nj]
        for r in range(P):
            xr = x2[r, j0:j0 + nj]
            orow = o2[r, j0:j0 + nj]
            for j in range(nj):
                orow[j] = (xr[j] - mm[j]) * aa[j] + ss[j]


def best(f, rounds=20, reps=50):
    f()
    b = 1e9
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            f()
        b = min(b, (time.perf_counter() - t0) / reps)
    return b * 1e6


def parts(spec, cbs):
    from normkit.kernels import elementwise, norm
    P, C = (int(v) for v in spec.split("x"))
    x = np.random.default_rng(0).standard_normal((P, C, 1)).astype(np.float32)
    o = np.empty_like(x)
    v = np.ones(C, np.float32)
    _, _, cfg = norm._config(x, out=o)
    from normkit.kernels import reduce
    sh = np.zeros(C)
    t1, t2 = np.empty(C), np.empty(C)
    print(f"{spec}: current sums (row tasks) {best(lambda: reduce.sums_par(x, x, sh, sh, t1, t2, *cfg[:4], True)):.1f} us, "
          f"current element pass (rows split) {best(lambda: elementwise.affine_par(x, v, v, v, o, cfg[0], cfg[4], cfg[5])):.1f} us")
    for cb in cbs:
        print(f"{spec} cb={cb}: sums {best(lambda: sums_only(x, cb)):.1f} us, element pass {best(lambda: apply_only(x, o, cb, v, v, v)):.1f} us")


def pick_cb(P, C, itemsize, threads):
    cap = (1 << 20) // (P * itemsize)  # a block within the per-channel cache budget
    cb = max(32, (cap // 32) * 32)
    want = -(-C // (2 * threads))  # two blocks per thread at least
    want = -(-want // 32) * 32
    return min(cb, want)


def main():
    if sys.argv[1] == "parts":
        parts(sys.argv[2], [int(v) for v in sys.argv[3:]])
        return
    threads = int(os.environ.get("THREADS", "2"))
    numba.set_num_threads(threads)
    for spec in sys.argv[1:]:
        P, C = (int(v) for v in spec.split("x"))
        rng = np.random.default_rng(0)
        x = (rng.standard_normal((P, C, 1)) * 3 + 5).astype(np.float32)
        w = rng.standard_normal(C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        o1 = np.empty_like(x)
        o2 = np.empty_like(x)
        cb = int(os.environ.get("CB", "0")) or pick_cb(P, C, 4, threads)
        r1 = kernels.forward_batch(x, w, b, 1e-5, o1)
        r2 = fused_cols(x, w, b, 1e-5, o2, cb)
        err = max(np.abs(o1 - o2).max(), max(np.abs(u - v).max() / (np.abs(u).max() + 1e-30) for u, v in zip(r1, r2)))
        fs = {"current": lambda: kernels.forward_batch(x, w, b, 1e-5, o1), "fused_cols": lambda: fused_cols(x, w, b, 1e-5, o2, cb)}
        res = {k: [] for k in fs}
        reps = max(3, int(2e7 // (P * C)))
        for _ in range(30):
            for k, f in fs.items():
                t0 = time.perf_counter()
                for _ in range(reps):
                    f()
                res[k].append((time.perf_counter() - t0) / reps * 1e6)
        med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
        print(f"{spec:12s} cb={cb:4d} threads={threads} current {med['current']:8.1f} us  fused_cols {med['fused_cols']:8.1f} us"
              f"  ratio {med['current'] / med['fused_cols']:.2f}x  maxdiff {err:.1e}")


if __name__ == "__main__":
    main()
