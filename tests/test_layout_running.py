"""Layout planning and the running-statistics rule, checked in isolation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from normkit.kernels import running as compiled_running

from normkit.kernels.layout import channel_view, is_contiguous
from normkit.running import (
    decay_from_momentum,
    momentum_from_decay,
    unbiased_variance_scale,
    update_factor,
    update_running_stats,
)


def elem_strides(a):
    return [s // a.itemsize for s in a.strides]


def test_contiguous_view():
    a = np.zeros((2, 3, 4, 5))
    v = channel_view(a.shape, elem_strides(a), 1)
    assert (v.P, v.C, v.L, v.perm) == (2, 3, 20, None)
    assert not v.channels_last


def test_channels_last_view():
    a = np.zeros((2, 4, 5, 3)).transpose(0, 3, 1, 2)  # NCHW shape, NHWC memory
    v = channel_view(a.shape, elem_strides(a), 1)
    assert (v.P, v.C, v.L, v.perm) == (40, 3, 1, (0, 2, 3, 1))
    assert v.channels_last


def test_neither_layout_needs_a_copy():
    a = np.zeros((2, 3, 8))[:, :, ::2]
    assert channel_view(a.shape, elem_strides(a), 1) is None
    b = np.zeros((3, 2, 4)).transpose(1, 0, 2)
    assert channel_view(b.shape, elem_strides(b), 1) is None


def test_size_one_and_empty_axes_are_ignored():
    assert is_contiguous((3, 1, 4), (4, 99, 1))
    assert is_contiguous((0, 3), (7, 7))
    v = channel_view((2, 3, 1, 1), (3, 1, 3, 3), 1)  # both layouts: row-major wins
    assert v.perm is None and v.L == 1


@pytest.mark.parametrize("momentum,count,expected", [(0.1, 5, 0.1), (None, 1, 1.0), (None, 4, 0.25)])
def test_update_factor(momentum, count, expected):
    assert update_factor(momentum, count) == expected


def test_update_factor_needs_a_count():
    with pytest.raises(ValueError, match="num_batches_tracked >= 1"):
        update_factor(None, 0)


def test_update_rule_in_place_numpy_and_torch():
    torch = pytest.importorskip("torch")
    mean, var = np.array([1.0, 2.0]), np.array([4.0, 9.0])
    for make in (np.array, lambda v: torch.tensor(v, dtype=torch.float64)):
        rm, rv = make([0.0, 0.0]), make([1.0, 1.0])
        update_running_stats(rm, rv, mean if make is np.array else torch.from_numpy(mean),
                             var if make is np.array else torch.from_numpy(var), 5, 0.25)
        np.testing.assert_allclose(np.asarray(rm), 0.25 * mean)
        np.testing.assert_allclose(np.asarray(rv), 0.75 + 0.25 * var * 5 / 4)


@settings(max_examples=60, deadline=None)
@given(
    C=st.integers(1, 40),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    n=st.integers(1, 10**6),
    factor=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_compiled_update_matches_the_rule_bit_for_bit(C, dtype, n, factor, seed):
    # the hot path's compiled fold and the stated rule: same roundings, same bits
    rng = np.random.default_rng(seed)
    mean, var = rng.normal(size=C) * 100, rng.uniform(0, 50, C)
    start_m, start_v = rng.normal(size=C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    rm, rv = start_m.copy(), start_v.copy()
    update_running_stats(rm, rv, mean, var, n, factor)
    cm, cv = start_m.copy(), start_v.copy()
    compiled_running.update_running_stats(cm, cv, mean, var, n, factor)
    assert cm.dtype == dtype and cv.dtype == dtype
    np.testing.assert_array_equal(cm, rm)
    np.testing.assert_array_equal(cv, rv)


def test_unbiased_scale():
    assert unbiased_variance_scale(5) == 5 / 4
    assert unbiased_variance_scale(1) == 1.0


def test_decay_conversion():
    assert momentum_from_decay(0.99) == 0.01
    assert decay_from_momentum(0.1) == 0.9
    assert momentum_from_decay(decay_from_momentum(0.003)) == 0.003
    with pytest.raises(ValueError, match="decay must lie in"):
        momentum_from_decay(1.5)
    with pytest.raises(ValueError, match="momentum must lie in"):
        decay_from_momentum(-0.1)


def test_numpy_api_works_without_torch():
    """normkit and normkit.numpy never import torch (it is an optional extra)."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now fails
        "import numpy as np, normkit, normkit.numpy, normkit.reference\n"
        "layer = normkit.numpy.BatchNorm(3)\n"
        "y = layer(np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32))\n"
        "layer.backward(np.ones_like(y))\n"
        "assert 'torch' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok"
