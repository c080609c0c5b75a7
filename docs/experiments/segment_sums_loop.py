"""stream.segment_sums on InstanceNorm's views (one run of N*C segments of L values), 14
tasks over the run, against the same sums as a per-channel loop (reduce.run_moments),
the forward's coefficient loop and stream.segment_map over the same run. Median ms, two
rounds. Run at two commits with run_at.py to compare forms of segment_sums."""
import time

import numpy as np
from numba import njit, prange

from normkit.kernels._jit import FASTMATH
from normkit.kernels.coefs import forward_coefs
from normkit.kernels.reduce import channel_shift, finish_moments, run_moments
from normkit.kernels.stream import segment_map, segment_sums


def tm(f, n=60):
    for _ in range(5):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return np.median(ts) * 1e3


@njit(parallel=True, fastmath=FASTMATH)
def sums(x2, shift, s1, s2, L, nb):
    C = shift.shape[0]
    for t in prange(nb):
        c0 = t * C // nb
        c1 = (t + 1) * C // nb
        segment_sums(x2[0, c0 * L:c1 * L], x2[0, c0 * L:c1 * L], shift[c0:c1], shift[c0:c1], L, s1[c0:c1], s2[c0:c1])


@njit(parallel=True, fastmath=FASTMATH)
def grad_sums(g2, x2, mean, s1, s2, L, nb):
    C = mean.shape[0]
    for t in prange(nb):
        c0 = t * C // nb
        c1 = (t + 1) * C // nb
        segment_sums(g2[0, c0 * L:c1 * L], x2[0, c0 * L:c1 * L], 0.0, mean[c0:c1], L, s1[c0:c1], s2[c0:c1])


@njit(parallel=True, fastmath=FASTMATH)
def per_channel(x2, shift, s1, s2, L, nb):
    C = shift.shape[0]
    for t in prange(nb):
        for c in range(t * C // nb, (t + 1) * C // nb):
            a, b = run_moments(x2[0, c * L:(c + 1) * L], shift[c])
            s1[c] = a
            s2[c] = b


@njit(parallel=True, fastmath=FASTMATH)
def coefs(x3, s1, s2, shift, w, b, co3, nb):
    C = shift.shape[0]
    L = x3.shape[2]
    for t in prange(nb):
        co = np.empty(3, np.float32)
        for c in range(t * C // nb, (t + 1) * C // nb):
            shift[c] = channel_shift(x3, c)
            mu, v = finish_moments(s1[c], s2[c], shift[c], L)
            forward_coefs(mu, 1.0 / np.sqrt(v + 1e-5), w, b, c, co)
            co3[0, c] = co[0]
            co3[1, c] = co[1]
            co3[2, c] = co[2]


@njit(parallel=True, fastmath=FASTMATH)
def apply(x2, o2, co3, L, nb):
    C = co3.shape[1]
    for t in prange(nb):
        c0 = t * C // nb
        c1 = (t + 1) * C // nb
        segment_map("0 1 - 2 * 3 +", o2[0, c0 * L:c1 * L], (x2[0, c0 * L:c1 * L],),
                    (co3[0, c0:c1], co3[1, c0:c1], co3[2, c0:c1]), L, False)


for C, L in [(65536, 49), (32768, 196)]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, C, L)).astype(np.float32)
    g = rng.standard_normal((1, C, L)).astype(np.float32)
    o = np.empty_like(x)
    x2, g2, o2 = x.reshape(1, C * L), g.reshape(1, C * L), o.reshape(1, C * L)
    shift = x[0, :, 0].astype(np.float64)
    s1, s2 = np.empty(C), np.empty(C)
    w = np.ones(C, np.float32)
    co3 = np.empty((3, C), np.float32)
    for _ in range(2):
        print("%dx%d: segment_sums %.2f, its backward form %.2f | per-channel run_moments %.2f | coefficients %.2f | "
              "segment_map %.2f" % (C, L, tm(lambda: sums(x2, shift, s1, s2, L, 14)),
                                    tm(lambda: grad_sums(g2, x2, shift, s1, s2, L, 14)),
                                    tm(lambda: per_channel(x2, shift, s1, s2, L, 14)),
                                    tm(lambda: coefs(x, s1, s2, shift, w, w, co3, 14)),
                                    tm(lambda: apply(x2, o2, co3, L, 14))), flush=True)
