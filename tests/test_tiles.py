"""Register tiles of the columns pattern (normkit.kernels.tiles): the intrinsic against
float64 NumPy over row ranges, column offsets, tile counts and dtypes, what it leaves
alone, NaN confined to its column, and its typing errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numba import njit
from numba.core.errors import TypingError

from normkit.kernels.tiles import TILE, tile_sums


@njit
def _paired(u, v, uw, vw, r0, r1, j0, nt, a1, a2):
    tile_sums(u, v, uw, vw, r0, r1, j0, nt, a1, a2)


@njit
def _moments(u, uw, r0, r1, j0, nt, a1, a2):
    tile_sums(u, None, uw, None, r0, r1, j0, nt, a1, a2)


@st.composite
def tiles_cases(draw):
    rows = draw(st.integers(0, 40))
    r0 = draw(st.integers(0, rows))
    r1 = draw(st.integers(r0, rows))
    nt = draw(st.integers(0, 3))
    j0 = draw(st.integers(0, 20))
    extra = draw(st.integers(0, 9))  # columns after the tiles, never read
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    moments = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return rows, r0, r1, nt, j0, extra, dtype, moments, seed


@given(tiles_cases())
def test_tile_sums_match_numpy(case):
    rows, r0, r1, nt, j0, extra, dtype, moments, seed = case
    rng = np.random.default_rng(seed)
    width = j0 + nt * TILE + extra
    u = (rng.normal(size=(rows, width)) * 3 + 50).astype(dtype)
    v = u if moments else rng.normal(size=(rows, width)).astype(dtype)
    k = nt * TILE
    uw = rng.normal(size=k + 5) + 50  # longer than the tiles: the rest is never read
    vw = uw if moments else rng.normal(size=k + 5)
    a1 = rng.normal(size=k + 7)  # the sums are added to what is there
    a2 = rng.normal(size=k + 7)
    want1, want2 = a1.copy(), a2.copy()
    d = u[r0:r1, j0:j0 + k].astype(np.float64) - uw[:k]
    e = v[r0:r1, j0:j0 + k].astype(np.float64) - vw[:k]
    want1[:k] += d.sum(0)
    want2[:k] += (d * e).sum(0)
    if moments:
        _moments(u, uw, r0, r1, j0, nt, a1, a2)
    else:
        _paired(u, v, uw, vw, r0, r1, j0, nt, a1, a2)
    np.testing.assert_allclose(a1, want1, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(a2, want2, rtol=1e-12, atol=1e-9)
    assert np.array_equal(a1[k:], want1[k:]) and np.array_equal(a2[k:], want2[k:])  # untouched past the tiles


def test_tile_sums_keep_nan_in_its_column():
    u = np.ones((20, 2 * TILE), np.float32)
    u[7, 40] = np.nan
    a1, a2 = np.zeros(2 * TILE), np.zeros(2 * TILE)
    _moments(u, np.zeros(2 * TILE), 0, 20, 0, 2, a1, a2)
    assert np.isnan(a1[40]) and np.isnan(a2[40])
    rest = np.arange(2 * TILE) != 40
    assert np.array_equal(a1[rest], np.full(2 * TILE - 1, 20.0)) and np.array_equal(a2[rest], a1[rest])


def test_tile_sums_reject_bad_operands():
    u = np.ones((4, TILE), np.float32)
    w = np.zeros(TILE)

    @njit
    def v_without_vw(u, w, a):
        tile_sums(u, u, w, None, 0, 4, 0, 1, a, a)

    with pytest.raises(TypingError, match="v and vw must both be None"):
        v_without_vw(u, w, np.zeros(TILE))

    with pytest.raises(TypingError, match="a1 must be float64"):
        _moments(u, w, 0, 4, 0, 1, np.zeros(TILE, np.float32), np.zeros(TILE))

    with pytest.raises(TypingError, match="v must be float32"):
        _paired(u, u.astype(np.float64), w, w, 0, 4, 0, 1, np.zeros(TILE), np.zeros(TILE))

    with pytest.raises(TypingError, match="u must be C-contiguous"):
        _moments(np.ones((4, 2 * TILE), np.float32)[:, :TILE], w, 0, 4, 0, 1, np.zeros(TILE), np.zeros(TILE))

    with pytest.raises(TypingError, match="u must be a 2-D float array"):
        _moments(np.ones(TILE, np.float32), w, 0, 4, 0, 1, np.zeros(TILE), np.zeros(TILE))

    with pytest.raises(TypingError, match="r0 must be an integer"):
        _moments(u, w, 0.0, 4, 0, 1, np.zeros(TILE), np.zeros(TILE))
