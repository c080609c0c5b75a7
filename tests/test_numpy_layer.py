"""The stateful NumPy layer: running statistics, modes, gradients, errors, non-finite policy."""

import copy
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from normkit import reference as ref
from normkit.numpy import BatchNorm
from normkit.running import NonFiniteBatchError, NonFiniteBatchWarning


def batches(shape, k, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(2.0, 3.0, shape).astype(np.float32) for _ in range(k)]


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
@pytest.mark.parametrize("axis,shape", [(1, (6, 3, 4, 4)), (-1, (6, 4, 4, 3)), (1, (10, 3))])
def test_running_statistics_follow_the_rule(momentum, axis, shape):
    bn = BatchNorm(3, momentum=momentum, axis=axis, dtype=np.float64)
    rm, rv = np.zeros(3), np.ones(3)
    data = batches(shape, 4)
    red = tuple(a for a in range(len(shape)) if a != axis % len(shape))
    for k, x in enumerate(data, start=1):
        bn(x)
        f = momentum if momentum is not None else 1.0 / k
        x64 = x.astype(np.float64)
        rm = (1 - f) * rm + f * x64.mean(axis=red)
        rv = (1 - f) * rv + f * x64.var(axis=red, ddof=1)
        assert bn.num_batches_tracked == k
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-12)
    if momentum is None:  # the cumulative average is the plain mean of the batch statistics
        np.testing.assert_allclose(bn.running_mean, np.mean([x.astype(np.float64).mean(axis=red) for x in data], 0), rtol=1e-12)


@given(st.integers(2, 9), st.integers(1, 5), st.integers(0, 1000))
def test_momentum_one_stores_the_batch_statistics(n, c, seed):
    x = np.random.default_rng(seed).normal(size=(n, c, 3))
    bn = BatchNorm(c, momentum=1.0, dtype=np.float64)
    bn(x)
    np.testing.assert_allclose(bn.running_mean, x.mean(axis=(0, 2)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.running_var, x.var(axis=(0, 2), ddof=1), rtol=1e-10)


def test_eval_uses_running_statistics_and_changes_nothing():
    bn = BatchNorm(3)
    for x in batches((8, 3, 5), 3):
        bn(x)
    bn.weight[:] = [1.0, 2.0, 0.5]
    bn.bias[:] = [0.0, -1.0, 3.0]
    state = copy.deepcopy(vars(bn))
    x = batches((4, 3, 5), 1, seed=9)[0]
    y = bn.eval()(x)
    expect, _, _ = ref.batch_norm(x, bn.weight, bn.bias, running_mean=bn.running_mean,
                                  running_var=bn.running_var, training=False)
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
    for key in ("running_mean", "running_var", "weight", "bias"):
        np.testing.assert_array_equal(getattr(bn, key), state[key])
    assert bn.num_batches_tracked == state["num_batches_tracked"]
    assert bn(x[:1]).shape == (1, 3, 5)  # one sample is fine in inference


def test_without_running_statistics_batch_stats_are_used_in_eval():
    bn = BatchNorm(3, track_running_stats=False, affine=False).eval()
    assert bn.running_mean is None and bn.weight is None
    x = batches((5, 3, 2), 1)[0]
    np.testing.assert_allclose(bn(x), ref.batch_norm(x)[0], atol=1e-5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x[:1, :, :1])


@pytest.mark.parametrize("training", [True, False])
def test_backward_matches_reference_and_sets_parameter_gradients(training):
    rng = np.random.default_rng(5)
    bn = BatchNorm(4, axis=-1, dtype=np.float64)
    bn.weight[:] = rng.uniform(0.5, 2, 4)
    bn(rng.normal(size=(8, 5, 4)))  # give the running statistics some content
    bn.train(training)
    x, dy = rng.normal(size=(8, 5, 4)), rng.normal(size=(8, 5, 4))
    bn(x)
    dx = bn.backward(dy)
    if training:
        mean, var = ref.batch_stats(x, -1)
    else:
        mean, var = bn.running_mean, bn.running_var
    dx_ref, dw_ref, db_ref = ref.batch_norm_backward(dy, x, mean, var, bn.weight, training=training, axis=-1)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bn.grad_weight, dw_ref, rtol=1e-9)
    np.testing.assert_allclose(bn.grad_bias, db_ref, rtol=1e-9)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        BatchNorm(2).backward(np.ones((2, 2)))


def snapshot(bn):
    return copy.deepcopy({k: v for k, v in vars(bn).items() if k != "_saved"})


def assert_unchanged(bn, snap):
    now = snapshot(bn)
    assert now.keys() == snap.keys()
    for k, v in snap.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(now[k], v)
        else:
            assert now[k] == v, k


@pytest.mark.parametrize("make_bad,exc,match", [
    (lambda: np.ones((4, 5, 2), np.float32), ValueError, "expected input with 3 channels along dim 1, got 5"),
    (lambda: np.ones((4, 3, 2), np.int32), TypeError, "floating-point input.*int32"),
    (lambda: np.ones((1, 3, 1), np.float32), ValueError, "more than 1 value per channel"),
    (lambda: np.ones((4,), np.float32), ValueError, "channel axis 1 is out of range for a 1D input"),
])
def test_bad_input_raises_and_leaves_state_untouched(make_bad, exc, match):
    bn = BatchNorm(3)
    bn(batches((4, 3, 2), 1)[0])
    snap = snapshot(bn)
    with pytest.raises(exc, match=match):
        bn(make_bad())
    assert_unchanged(bn, snap)


def test_wrongly_shaped_running_statistics():
    bn = BatchNorm(3)
    bn.running_var = np.ones(4, np.float32)
    snap = snapshot(bn)
    with pytest.raises(ValueError, match=r"expected running_var of shape \(3,\), got \(4,\)"):
        bn(np.ones((4, 3), np.float32))
    assert_unchanged(bn, snap)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_features=0), "positive integer"),
    (dict(num_features=3, momentum=1.5), "momentum in \\[0, 1\\]"),
    (dict(num_features=3, eps=-1.0), "eps >= 0"),
    (dict(num_features=3, nonfinite="ignore"), "nonfinite to be one of"),
])
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BatchNorm(**kwargs)


def poisoned(value):
    x = batches((6, 3, 4), 1, seed=3)[0]
    x[2, 1, 3] = value
    return x


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_propagate_is_pytorch_behaviour(value):
    bn = BatchNorm(3)
    y = bn(poisoned(value))
    assert not np.isfinite(bn.running_mean[1]) or not np.isfinite(bn.running_var[1])
    assert np.isfinite(bn.running_mean[[0, 2]]).all()
    assert bn.num_batches_tracked == 1
    assert not np.isfinite(y[:, 1]).all()


@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_nonfinite_skip_warns_and_keeps_running_statistics(value):
    bn = BatchNorm(3, nonfinite="skip")
    bn(batches((6, 3, 4), 1)[0])
    snap = snapshot(bn)
    with pytest.warns(NonFiniteBatchWarning, match="skipped"):
        y = bn(poisoned(value))
    assert y.shape == (6, 3, 4)
    np.testing.assert_array_equal(bn.running_mean, snap["running_mean"])
    np.testing.assert_array_equal(bn.running_var, snap["running_var"])
    assert bn.num_batches_tracked == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(batches((6, 3, 4), 1, seed=4)[0])  # a finite batch updates as usual
    assert bn.num_batches_tracked == 2


def test_nonfinite_raise_leaves_everything():
    bn = BatchNorm(3, nonfinite="raise")
    bn(batches((6, 3, 4), 1)[0])
    snap = snapshot(bn)
    with pytest.raises(NonFiniteBatchError, match="non-finite"):
        bn(poisoned(np.nan))
    assert_unchanged(bn, snap)


def test_empty_batch_counts_but_keeps_statistics():
    bn = BatchNorm(3)
    y = bn(np.ones((0, 3, 2), np.float32))
    assert y.shape == (0, 3, 2)
    assert bn.num_batches_tracked == 1  # as torch
    np.testing.assert_array_equal(bn.running_mean, np.zeros(3))
    np.testing.assert_array_equal(bn.running_var, np.ones(3))


def test_float16_input_float32_state():
    bn = BatchNorm(3)
    x = batches((8, 3, 4), 1)[0].astype(np.float16)
    y = bn(x)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y.astype(np.float64), ref.batch_norm(x)[0], atol=3e-3)
    assert bn.running_mean.dtype == np.float32
