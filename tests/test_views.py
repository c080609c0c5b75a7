"""Views without a reference (normkit.kernels.views): the elements they cover, writes
through them, the inlined per-run helper, and the typing errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit, prange
from numba.core.errors import TypingError

from normkit.kernels._jit import helper
from normkit.kernels.views import borrow, row_of, run_of


@njit
def _copy_and_bump(a, start, n):
    """A copy of the borrowed range, then 1 added through the view."""
    v = borrow(a, start, n)
    out = np.empty(n, a.dtype)
    for i in range(n):
        out[i] = v[i]
        v[i] += 1
    return out


@njit(parallel=True)
def _runs_sum(a):
    """Per (p, c) the sum of run_of(a, p, c), in a parallel loop as the kernels use it."""
    P, C, _ = a.shape
    out = np.empty((P, C))
    for t in prange(P * C):
        r = run_of(a, t // C, t % C)
        out[t // C, t % C] = r.sum()
    return out


@njit(parallel=True)
def _rows_sum(a):
    """Per r the sum of row_of(a, r), in a parallel loop as the kernels use it."""
    out = np.empty(a.shape[0])
    for r in prange(a.shape[0]):
        out[r] = row_of(a, r).sum()
    return out


@st.composite
def ranges(draw):
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    size = int(np.prod(shape))
    start = draw(st.integers(0, size - 1))
    n = draw(st.integers(0, size - start))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int64]))
    return shape, start, n, dtype


@given(ranges())
def test_borrow_covers_the_flat_range_and_writes_through(case):
    shape, start, n, dtype = case
    a = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    want = a.reshape(-1)[start:start + n].copy()
    got = _copy_and_bump(a, start, n)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(a.reshape(-1)[start:start + n], want + 1)  # written through
    untouched = np.ones(a.size, bool)
    untouched[start:start + n] = False
    np.testing.assert_array_equal(a.reshape(-1)[untouched], np.arange(a.size, dtype=dtype)[untouched])


def test_run_of_is_the_run_of_a_row_and_channel():
    a = np.random.default_rng(0).standard_normal((3, 5, 7))
    np.testing.assert_allclose(_runs_sum(a), a.sum(axis=2), rtol=1e-12)


def test_row_of_is_a_row():
    a = np.random.default_rng(0).standard_normal((6, 9))
    np.testing.assert_allclose(_rows_sum(a), a.sum(axis=1), rtol=1e-12)


def test_borrow_rejects_arrays_it_cannot_view_flat():
    a = np.zeros((4, 6))
    with pytest.raises(TypingError, match="borrow: expected a C-contiguous array"):
        _copy_and_bump(a[:, ::2], 0, 2)
    with pytest.raises(TypingError, match="borrow: expected a C-contiguous array"):
        _copy_and_bump(np.asfortranarray(a), 0, 2)
    with pytest.raises(TypingError, match="borrow: start and n must be integers"):
        _copy_and_bump(a, 0.0, 2)


@helper(inline=True)
def _twice(v):
    return 2 * v


@njit
def _call_twice(v):
    return _twice(v)


def test_inlined_helpers_run_from_jitted_code_only():
    assert _call_twice(21) == 42
    with pytest.raises(TypeError, match="kernel helper"):
        _twice(21)
