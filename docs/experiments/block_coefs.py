"""The blocked training forward's per-channel step (moments -> mean, var, rstd and the
three element-pass coefficients), one thread, over C channels whose sums are given: as
fused._block_forward wrote it before 2026-11-22 (a loop through finish_moments and
forward_coefs writing a scratch row, copied here as scratch_coefs) against one loop with the formulas inline (no scratch
row, LLVM may vectorise it). InstanceNorm's 7x7 view runs this step for 65,536
instances. Median us per call; results checked equal. Usage: block_coefs.py"""
import time

import numba
import numpy as np
from numba import njit

from normkit.kernels._jit import FASTMATH
from normkit.kernels.reduce import finish_moments

try:  # the helper the kernels use since 2026-11-22 (error_model="numpy", unsigned indices)
    from normkit.kernels.coefs import finish_channels
except ImportError:
    finish_channels = None

numba.set_num_threads(1)


@njit(fastmath=FASTMATH)
def scratch_coefs(mean, rstd, w, b, c, out):  # coefs.forward_coefs as it was: a scratch row
    out[0] = mean
    scale = rstd if w is None else rstd * w[c]
    out[1] = scale
    shift = -(mean - np.float64(out[0])) * scale
    out[2] = shift if b is None else shift + b[c]


@njit(fastmath=FASTMATH)
def scratch_form(s1, s2, shift, n, eps, w, b, mean, var, rstd, coefs, co):
    for c in range(s1.shape[0]):
        mu, v = finish_moments(s1[c], s2[c], shift[c], n)
        r = 1.0 / np.sqrt(v + eps)
        mean[c] = mu
        var[c] = v
        rstd[c] = r
        scratch_coefs(mu, r, w, b, c, co)
        coefs[0, c] = co[0]
        coefs[1, c] = co[1]
        coefs[2, c] = co[2]


@njit(fastmath=FASTMATH)
def inline_form(s1, s2, shift, n, eps, w, b, mean, var, rstd, coefs, co):
    for c in range(s1.shape[0]):
        d = s1[c] / n
        v = s2[c] / n - d * d
        v = 0.0 if v < 0.0 else v
        mu = shift[c] + d
        r = 1.0 / np.sqrt(v + eps)
        mean[c] = mu
        var[c] = v
        rstd[c] = r
        coefs[0, c] = mu
        scale = r * w[c]
        coefs[1, c] = scale
        coefs[2, c] = b[c] - (mu - np.float64(coefs[0, c])) * scale


@njit(fastmath=FASTMATH)
def split_form(s1, s2, shift, n, eps, w, b, mean, var, rstd, coefs, co):
    inv = 1.0 / n
    for c in range(s1.shape[0]):  # the statistics: three inputs, three outputs
        d = s1[c] * inv
        v = s2[c] * inv - d * d
        v = 0.0 if v < 0.0 else v
        mean[c] = shift[c] + d
        var[c] = v
        rstd[c] = 1.0 / np.sqrt(v + eps)
    m = coefs[0]
    for c in range(s1.shape[0]):  # the coefficients
        m[c] = mean[c]
    a = coefs[1]
    for c in range(s1.shape[0]):
        a[c] = rstd[c] * w[c]
    s = coefs[2]
    for c in range(s1.shape[0]):
        s[c] = b[c] - (mean[c] - np.float64(m[c])) * a[c]


@njit(fastmath=FASTMATH)
def loops_form(s1, s2, shift, n, eps, w, b, mean, var, rstd, coefs, co):
    inv = 1.0 / n
    for c in range(s1.shape[0]):  # one output per loop: each loop vectorises
        d = s1[c] * inv
        v = s2[c] * inv - d * d
        var[c] = 0.0 if v < 0.0 else v
    for c in range(s1.shape[0]):
        rstd[c] = 1.0 / np.sqrt(var[c] + eps)
    for c in range(s1.shape[0]):
        mean[c] = shift[c] + s1[c] * inv
    m = coefs[0]
    for c in range(s1.shape[0]):
        m[c] = mean[c]
    a = coefs[1]
    for c in range(s1.shape[0]):
        a[c] = rstd[c] * w[c]
    s = coefs[2]
    for c in range(s1.shape[0]):
        s[c] = b[c] - (mean[c] - np.float64(m[c])) * a[c]


@njit(fastmath=FASTMATH)
def column_coefs(mean, rstd, w, b, c, out):  # forward_coefs writing column c of a (3, C) array
    out[0, c] = mean
    scale = rstd if w is None else rstd * w[c]
    out[1, c] = scale
    shift = -(mean - np.float64(out[0, c])) * scale
    out[2, c] = shift if b is None else shift + b[c]


@njit(fastmath=FASTMATH)
def column_form(s1, s2, shift, n, eps, w, b, mean, var, rstd, coefs, co):
    for c in range(s1.shape[0]):
        mu, v = finish_moments(s1[c], s2[c], shift[c], n)
        r = 1.0 / np.sqrt(v + eps)
        mean[c] = mu
        var[c] = v
        rstd[c] = r
        column_coefs(mu, r, w, b, c, coefs)


def committed_form(s1, s2, shift, n, eps, w, b, mean, var, rstd, coefs, co):  # as the kernels call it
    finish_channels(s1, s2, shift, n, eps, w, b, 0, mean, var, rstd, coefs)


# The same forms compiled with error_model="numpy": a float division by zero gives
# inf/NaN instead of raising ZeroDivisionError, so no test-and-raise branch per
# division (which keeps LLVM from vectorising the loops).
numpy_model = {name + " (numpy errors)": njit(fastmath=FASTMATH, error_model="numpy")(f.py_func)
               for name, f in (("scratch", scratch_form), ("inline", inline_form), ("split", split_form),
                               ("loops", loops_form), ("column", column_form))}
rng = np.random.default_rng(0)
for C in (2048, 65536):
    n = 49.0
    s1 = rng.standard_normal(C) * 7
    s2 = rng.random(C) * 49 + 50
    shift = rng.standard_normal(C)
    w = rng.random(C).astype(np.float32)
    b = rng.random(C).astype(np.float32)
    outs = {}
    for name, f in (("scratch", scratch_form), ("inline", inline_form), ("split", split_form), ("loops", loops_form),
                    ("column", column_form), *numpy_model.items(),
                    *((("finish_channels", njit(fastmath=FASTMATH, error_model="numpy")(committed_form)),)
                      if finish_channels else ())):
        o = (np.empty(C), np.empty(C), np.empty(C), np.empty((3, C), np.float32), np.empty(3, np.float32))
        f(s1, s2, shift, n, 1e-5, w, b, *o)
        outs[name] = o
        ts = []
        for _ in range(200):
            t0 = time.perf_counter()
            f(s1, s2, shift, n, 1e-5, w, b, *o)
            ts.append(time.perf_counter() - t0)
        print(f"C={C:6d} {name:24s} {np.median(ts) * 1e6:8.1f} us")
    for k in range(4):
        for other in ("inline", "split", "loops", "column", *numpy_model, *(("finish_channels",) if finish_channels else ())):
            print(f"   {other}: max abs difference from scratch, output {k}:",
                  float(np.max(np.abs(outs["scratch"][k] - outs[other][k]))))
