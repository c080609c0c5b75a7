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
With no activation and no residual the forward is plain batch normalization's
per-channel fused forward (:func:`.norm.forward_batch` uses it).
Per-channel tasks (the rows pattern, as :mod:`.fused`). A channel that fits in
cache is read once from memory; a larger one twice (statistics, then the element
pass) -- still one pass and two allocations fewer than BN, add and activation
apart, so the front end uses these kernels for every channel size and composes
the separate operations only where the rows pattern does not apply.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from ._jit import helper, twin
from .coefs import backward_coefs, forward_coefs
from .elementwise import affine
from .reduce import channel_moments
from .stream import fence, span, stream_map, workers
from .views import run_of

__all__ = ["ACTIVATIONS", "act_backward", "act_forward"]

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
def _identity_run(xr, zr, o, m, a, s, act, nt):
    stream_map("0 1 - 2 * 3 + 4 +", o, (xr, m, a, s, zr), nt)


@helper
def _identity_run_noz(xr, o, m, a, s, act, nt):
    affine(xr, o, m, a, s, nt)


@helper
def _relu_run(xr, zr, o, m, a, s, act, nt):
    stream_map("0 1 - 2 * 3 + 4 + relu", o, (xr, m, a, s, zr), nt)


@helper
def _relu_run_noz(xr, o, m, a, s, act, nt):
    stream_map("0 1 - 2 * 3 + relu", o, (xr, m, a, s), nt)


@helper
def _smooth_run(xr, zr, o, m, a, s, act, nt):
    """SiLU and GELU: ordinary stores (the element costs more than its traffic)."""
    for i in range(xr.shape[0]):
        o[i] = act_value((xr[i] - m) * a + s + zr[i], act)


@helper
def _smooth_run_noz(xr, o, m, a, s, act, nt):
    for i in range(xr.shape[0]):
        o[i] = act_value((xr[i] - m) * a + s, act)


#: activation code -> the forward's element runs (without, with residual). The
#: piecewise-linear ones write through stream_map (streaming stores). Bound per
#: compilation, so a kernel compiles only its own activation's runs.
_RUNS = {0: (_identity_run_noz, _identity_run), 1: (_relu_run_noz, _relu_run),
         2: (_smooth_run_noz, _smooth_run), 3: (_smooth_run_noz, _smooth_run)}


# In the kernels below ``_ACT`` (and the forward's ``_RUN``/``_RUN_Z``) are globals
# bound per compilation (one per activation), so the activation's branches fold
# away and the loops vectorise.


def _act_forward(x, z, w, b, eps, out, batch_stats, mean_in, var_in, nt):
    P, C, L = x.shape
    mean = np.empty(C)
    var = np.empty(C)
    rstd = np.empty(C)
    coefs = np.empty((3, C), x.dtype)  # per channel (m, a, s)
    nw = workers(C)
    for wk in prange(nw):
        c0, c1 = span(wk, nw, C)
        for c in range(c0, c1):
            if batch_stats:
                mu, v = channel_moments(x, c)
            else:
                mu = np.float64(mean_in[c])
                v = np.float64(var_in[c])
            r = 1.0 / np.sqrt(v + eps)
            mean[c] = mu
            var[c] = v
            rstd[c] = r
            forward_coefs(mu, r, w, b, c, coefs)
            m, a, s = coefs[0, c], coefs[1, c], coefs[2, c]
            if z is None:
                for p in range(P):
                    _RUN(run_of(x, p, c), run_of(out, p, c), m, a, s, _ACT, nt)  # noqa: F821
            else:
                for p in range(P):
                    _RUN_Z(run_of(x, p, c), run_of(z, p, c), run_of(out, p, c), m, a, s, _ACT, nt)  # noqa: F821
        fence(nt)
    return mean, var, rstd


@helper
def _grad_sums_run(gr, xr, zr, m, a, s, mu, act):
    s1 = 0.0
    s2 = 0.0
    for i in range(xr.shape[0]):
        g = gr[i] * act_slope((xr[i] - m) * a + s + zr[i], act)
        s1 += g
        s2 += g * (xr[i] - mu)
    return s1, s2


@helper
def _grad_sums_run_noz(gr, xr, m, a, s, mu, act):
    s1 = 0.0
    s2 = 0.0
    for i in range(xr.shape[0]):
        g = gr[i] * act_slope((xr[i] - m) * a + s, act)
        s1 += g
        s2 += g * (xr[i] - mu)
    return s1, s2


@helper
def _grad_run(gr, xr, zr, dxr, dzr, m, a, s, ga, gq, gm, gk, act):
    for i in range(xr.shape[0]):
        g = gr[i] * act_slope((xr[i] - m) * a + s + zr[i], act)
        dxr[i] = g * ga + (xr[i] - gm) * gq + gk
        dzr[i] = g


@helper
def _grad_run_noz(gr, xr, dxr, m, a, s, ga, gq, gm, gk, act):
    for i in range(xr.shape[0]):
        g = gr[i] * act_slope((xr[i] - m) * a + s, act)
        dxr[i] = g * ga + (xr[i] - gm) * gq + gk


def _act_backward(dy, x, z, w, b, mean, rstd, batch_stats, dx, dz):
    """``z``/``dz`` empty (0, 0, 0) arrays when there is no residual; ``dx``/``dz``
    always written (the front end passes scratch arrays for unwanted ones)."""
    P, C, L = x.shape
    n = P * L
    has_z = z.shape[0] > 0
    dw = np.empty(C)
    db = np.empty(C)
    fc = np.empty((3, C), x.dtype)  # per channel: the forward's (m, a, s), the backward's (a, q, m, k)
    bc = np.empty((4, C), x.dtype)
    for c in prange(C):
        forward_coefs(mean[c], rstd[c], w, b, c, fc)
        m, a, s = fc[0, c], fc[1, c], fc[2, c]
        mu = mean[c]
        s1 = 0.0
        s2 = 0.0
        if has_z:
            for p in range(P):
                a1, a2 = _grad_sums_run(run_of(dy, p, c), run_of(x, p, c), run_of(z, p, c), m, a, s, mu,
                                        _ACT)  # noqa: F821
                s1 += a1
                s2 += a2
        else:
            for p in range(P):
                a1, a2 = _grad_sums_run_noz(run_of(dy, p, c), run_of(x, p, c), m, a, s, mu, _ACT)  # noqa: F821
                s1 += a1
                s2 += a2
        dw[c] = s2 * rstd[c]
        db[c] = s1
        backward_coefs(mu, rstd[c], w, c, s1, s2, n, batch_stats, bc)
        ga, gq, gm, gk = bc[0, c], bc[1, c], bc[2, c], bc[3, c]
        if has_z:
            for p in range(P):
                _grad_run(run_of(dy, p, c), run_of(x, p, c), run_of(z, p, c), run_of(dx, p, c), run_of(dz, p, c), m, a,
                          s, ga, gq, gm, gk, _ACT)  # noqa: F821
        else:
            for p in range(P):
                _grad_run_noz(run_of(dy, p, c), run_of(x, p, c), run_of(dx, p, c), m, a, s, ga, gq, gm, gk,
                              _ACT)  # noqa: F821
    return dw, db


def _per_activation(fn):
    """``{act code: (parallel, serial)}`` with ``_ACT`` bound as a compile-time constant."""
    bound = {code: {"_ACT": code, "_RUN": _RUNS[code][0], "_RUN_Z": _RUNS[code][1]} for code in range(4)}
    return {code: twin(fn, bound[code], bound[code], suffix=f"_act{code}") for code in range(4)}


#: ``act_forward[code](x, z, w, b, eps, out, batch_stats, mean_in, var_in, nt) -> (mean, var, rstd)``:
#: ``z`` a residual view or None; ``mean_in``/``var_in`` used when ``batch_stats`` is False;
#: ``nt``: streaming stores for ReLU and no activation (:mod:`.stream`).
act_forward = _per_activation(_act_forward)
#: ``act_backward[code](dy, x, z, w, b, mean, rstd, batch_stats, dx, dz) -> (dw, db)``.
act_backward = _per_activation(_act_backward)
