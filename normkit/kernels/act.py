"""Batch normalization fused with an activation and an optional residual add.

``y = act(BN(x) + z)`` in one pass forward (per channel: statistics, then the
element pass ``act((x - m) * a + s + z)`` while the channel is in cache) and one
backward: with ``p = BN(x) + z`` recomputed from ``x`` (and ``z``), the
activation's derivative turns ``dy`` into ``g = dy * act'(p)`` on the fly; ``g``
then plays the role of ``dy`` in the batch-norm backward
(``s1 = sum(g)``, ``s2 = sum(g * (x - mean))``, ``dx = a*g + q*(x - m) + k``),
and ``dz = g``. Neither ``p`` nor ``BN(x)`` is ever stored: the passes and the
allocations that torch eager spends on the separate operations are saved.

Activations: 0 none, 1 ReLU, 2 SiLU, 3 GELU (exact, erf form -- torch's default).
Per-channel tasks (the rows pattern with channels that fit in cache, as
:mod:`.fused`); the front end composes the separate operations otherwise.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import helper, twin
from .coefs import backward_coefs, forward_coefs
from .reduce import channel_shift, finish_moments, run_moments

__all__ = ["ACTIVATIONS", "act_forward_par", "act_forward_ser", "act_backward_par", "act_backward_ser"]

ACTIVATIONS = {None: 0, "identity": 0, "relu": 1, "silu": 2, "gelu": 3}

_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


@helper
def act_value(p, act):
    if act == 1:
        return p if p > 0 else p * 0
    if act == 2:
        return p / (1.0 + math.exp(-p))
    if act == 3:
        return 0.5 * p * (1.0 + math.erf(p * _INV_SQRT2))
    return p


@helper
def act_slope(p, act):
    if act == 1:
        return 1.0 if p > 0 else 0.0
    if act == 2:
        sg = 1.0 / (1.0 + math.exp(-p))
        return sg * (1.0 + p * (1.0 - sg))
    if act == 3:
        return 0.5 * (1.0 + math.erf(p * _INV_SQRT2)) + p * _INV_SQRT2PI * math.exp(-0.5 * p * p)
    return 1.0


@helper
def _forward_run(xr, zr, o, m, a, s, act):
    for i in range(xr.shape[0]):
        o[i] = act_value((xr[i] - m) * a + s + zr[i], act)


@helper
def _forward_run_noz(xr, o, m, a, s, act):
    for i in range(xr.shape[0]):
        o[i] = act_value((xr[i] - m) * a + s, act)


def _act_forward(x, z, w, b, eps, out, act, batch_stats, mean_in, var_in):
    P, C, L = x.shape
    n = P * L
    mean = np.empty(C)
    var = np.empty(C)
    rstd = np.empty(C)
    for c in prange(C):
        if batch_stats:
            k = channel_shift(x, c)
            s1 = 0.0
            s2 = 0.0
            for p in range(P):
                a1, a2 = run_moments(x[p, c], k)
                s1 += a1
                s2 += a2
            mu, v = finish_moments(s1, s2, k, n)
        else:
            mu = np.float64(mean_in[c])
            v = np.float64(var_in[c])
        r = 1.0 / np.sqrt(v + eps)
        mean[c] = mu
        var[c] = v
        rstd[c] = r
        co = np.empty(3, x.dtype)
        forward_coefs(mu, r, w, b, c, co)
        m, a, s = co[0], co[1], co[2]
        if z is None:
            for p in range(P):
                _forward_run_noz(x[p, c], out[p, c], m, a, s, act)
        else:
            for p in range(P):
                _forward_run(x[p, c], z[p, c], out[p, c], m, a, s, act)
    return mean, var, rstd


@helper
def _grad_sums_run(gr, xr, zr, m, a, s, mu, act, has_z):
    s1 = 0.0
    s2 = 0.0
    for i in range(xr.shape[0]):
        pre = (xr[i] - m) * a + s
        if has_z:
            pre += zr[i]
        g = gr[i] * act_slope(pre, act)
        s1 += g
        s2 += g * (xr[i] - mu)
    return s1, s2


@helper
def _grad_run(gr, xr, zr, dxr, dzr, m, a, s, ga, gq, gm, gk, act, has_z, need_dx, need_dz):
    for i in range(xr.shape[0]):
        pre = (xr[i] - m) * a + s
        if has_z:
            pre += zr[i]
        g = gr[i] * act_slope(pre, act)
        if need_dx:
            dxr[i] = g * ga + (xr[i] - gm) * gq + gk
        if need_dz:
            dzr[i] = g


def _act_backward(dy, x, z, w, b, mean, rstd, act, batch_stats, dx, dz, need_dx, need_dz):
    P, C, L = x.shape
    n = P * L
    has_z = z.shape[0] > 0
    dw = np.empty(C)
    db = np.empty(C)
    for c in prange(C):
        co = np.empty(3, x.dtype)
        forward_coefs(mean[c], rstd[c], w, b, c, co)
        m, a, s = co[0], co[1], co[2]
        s1 = 0.0
        s2 = 0.0
        for p in range(P):
            zr = z[p, c] if has_z else x[p, c]
            a1, a2 = _grad_sums_run(dy[p, c], x[p, c], zr, m, a, s, mean[c], act, has_z)
            s1 += a1
            s2 += a2
        dw[c] = s2 * rstd[c]
        db[c] = s1
        bc = np.empty(4, x.dtype)
        backward_coefs(mean[c], rstd[c], w, c, s1, s2, n, batch_stats, bc)
        for p in range(P):
            zr = z[p, c] if has_z else x[p, c]
            dxr = dx[p, c] if need_dx else x[p, c]
            dzr = dz[p, c] if need_dz else x[p, c]
            _grad_run(dy[p, c], x[p, c], zr, dxr, dzr, m, a, s, bc[0], bc[1], bc[2], bc[3], act, has_z,
                      need_dx, need_dz)
    return dw, db


#: ``act_forward(x, z, w, b, eps, out, act, batch_stats, mean_in, var_in) -> (mean, var, rstd)``:
#: ``z`` a residual view or None; ``mean_in``/``var_in`` used when ``batch_stats`` is False.
act_forward_par, act_forward_ser = twin(_act_forward)
#: ``act_backward(dy, x, z, w, b, mean, rstd, act, batch_stats, dx, dz, need_dx, need_dz) -> (dw, db)``:
#: ``z``, ``dx``, ``dz`` are (0, 0, 0) placeholders when absent / not needed (never written).
act_backward_par, act_backward_ser = twin(_act_backward)
