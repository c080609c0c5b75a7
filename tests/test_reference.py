"""The oracle against hand-written float64 formulas and finite differences."""

import itertools

import numpy as np
import pytest

from normkit import reference as ref


def loop_batch_norm(x, w, b, eps, axis):
    """Batch norm written with explicit loops over channels, float64."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, 0)
    y = np.empty_like(x)
    means, vars_ = [], []
    for c in range(x.shape[0]):
        vals = x[c].ravel()
        m = sum(vals) / len(vals)
        v = sum((val - m) ** 2 for val in vals) / len(vals)
        y[c] = w[c] * (x[c] - m) / np.sqrt(v + eps) + b[c]
        means.append(m)
        vars_.append(v)
    return np.moveaxis(y, 0, axis), np.array(means), np.array(vars_)


@pytest.mark.parametrize("shape,axis", [((5, 3), 1), ((4, 3, 6), 1), ((2, 3, 4, 5), 1), ((2, 4, 5, 3), -1), ((3, 2, 2, 2, 2), 1)])
def test_forward_matches_loops(shape, axis):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, shape)
    C = shape[axis]
    w, b = rng.uniform(0.5, 2, C), rng.normal(size=C)
    y, mean, var = ref.batch_norm(x, w, b, eps=1e-5, axis=axis)
    y2, mean2, var2 = loop_batch_norm(x, w, b, 1e-5, axis)
    np.testing.assert_allclose(y, y2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, mean2, rtol=1e-12)
    np.testing.assert_allclose(var, var2, rtol=1e-12)


def test_inference_uses_given_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 5))
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2, 3)
    w, b = rng.normal(size=3), rng.normal(size=3)
    y, _, _ = ref.batch_norm(x, w, b, running_mean=rm, running_var=rv, training=False, eps=1e-3)
    expect = w[None, :, None] * (x - rm[None, :, None]) / np.sqrt(rv[None, :, None] + 1e-3) + b[None, :, None]
    np.testing.assert_allclose(y, expect, rtol=1e-13)


def numeric_grad(f, a, h=1e-6):
    g = np.zeros_like(a)
    for idx in itertools.product(*map(range, a.shape)):
        old = a[idx]
        a[idx] = old + h
        fp = f()
        a[idx] = old - h
        fm = f()
        a[idx] = old
        g[idx] = (fp - fm) / (2 * h)
    return g


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape,axis", [((4, 3), 1), ((3, 2, 5), 1), ((2, 3, 2, 2), -1)])
def test_backward_matches_finite_differences(training, shape, axis):
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, shape)
    C = shape[axis]
    w, b = rng.uniform(0.5, 2, C), rng.normal(size=C)
    rm, rv = rng.normal(size=C), rng.uniform(0.5, 2, C)
    dy = rng.normal(size=shape)
    kw = dict(running_mean=rm, running_var=rv, training=training, eps=1e-3, axis=axis)

    def loss():
        return float((ref.batch_norm(x, w, b, **kw)[0] * dy).sum())

    _, mean, var = ref.batch_norm(x, w, b, **kw)
    dx, dw, db = ref.batch_norm_backward(dy, x, mean, var, w, training=training, eps=1e-3, axis=axis)
    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, numeric_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, numeric_grad(loss, b), rtol=1e-6, atol=1e-7)


def test_generic_core_reduces_requested_axes():
    # LayerNorm-style use of the core: statistics over the last two axes.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3, 4, 5))
    mean, var = ref.moments(x, (1, 2))
    for i in range(3):
        assert mean[i, 0, 0] == pytest.approx(x[i].mean(), rel=1e-13)
        assert var[i, 0, 0] == pytest.approx(x[i].var(), rel=1e-13)
