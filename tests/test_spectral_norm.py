"""normkit.nn.spectral.spectral_norm against torch's own spectral_norm and numpy.linalg.svd."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrizations as tp  # noqa: E402
from torch.nn.utils import parametrize  # noqa: E402

from normkit.nn.spectral import SpectralNorm, spectral_norm  # noqa: E402

MODULES = {
    "linear": lambda: nn.Linear(7, 5),
    "linear_tall": lambda: nn.Linear(3, 9),
    "conv1d": lambda: nn.Conv1d(4, 6, 3),
    "conv2d": lambda: nn.Conv2d(3, 8, (3, 2)),
    "conv3d": lambda: nn.Conv3d(2, 3, 2),
    "convT1d": lambda: nn.ConvTranspose1d(4, 3, 3),
    "convT2d": lambda: nn.ConvTranspose2d(5, 3, 2),
    "embedding": lambda: nn.Embedding(6, 4),
}


def pair(kind, seed=0, dtype=torch.float64, **kwargs):
    """The same module twice (same weights), with torch's and normkit's spectral norm,
    each registered right after the same manual_seed."""
    torch.manual_seed(seed)
    base = MODULES[kind]().to(dtype)
    theirs, mine = base, copy.deepcopy(base)
    torch.manual_seed(seed + 1)
    tp.spectral_norm(theirs, **kwargs)
    torch.manual_seed(seed + 1)
    spectral_norm(mine, **kwargs)
    return theirs, mine


def matrix(weight, dim):
    w = weight.detach().double()
    if dim != 0:
        w = w.movedim(dim, 0)
    return w.reshape(w.shape[0], -1).numpy()


def top_singular_value(weight, dim):
    return np.linalg.svd(matrix(weight, dim), compute_uv=False)[0]


@pytest.mark.parametrize("kind", list(MODULES))
def test_same_init_and_iterates_as_torch(kind):
    theirs, mine = pair(kind)
    p_t, p_m = theirs.parametrizations.weight[0], mine.parametrizations.weight[0]
    assert p_m.dim == p_t.dim == (1 if kind.startswith("convT") else 0)
    torch.testing.assert_close(p_m._u, p_t._u, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(p_m._v, p_t._v, rtol=1e-12, atol=1e-13)
    rows = theirs.parametrizations.weight.original.shape[p_t.dim]
    assert p_m._u.shape == (rows,)
    x = {"embedding": lambda: torch.randint(0, 6, (3, 2))}.get(kind, lambda: None)()
    opt_t = torch.optim.SGD(theirs.parameters(), lr=0.05)
    opt_m = torch.optim.SGD(mine.parameters(), lr=0.05)
    for step in range(4):  # training forwards and parameter updates stay in lock-step
        wt, wm = theirs.weight, mine.weight
        torch.testing.assert_close(wm, wt, rtol=1e-10, atol=1e-12)
        gen = torch.Generator().manual_seed(step)
        c = torch.randn(wt.shape, generator=gen, dtype=wt.dtype)
        for opt, w in ((opt_t, wt), (opt_m, wm)):
            opt.zero_grad()
            ((w * c).sum() + (w ** 2).sum()).backward()
            opt.step()
        torch.testing.assert_close(mine.parametrizations.weight.original.grad,
                                   theirs.parametrizations.weight.original.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(p_m._u, p_t._u, rtol=1e-10, atol=1e-12)
    if x is not None:
        torch.testing.assert_close(mine(x), theirs(x))


@pytest.mark.parametrize("kind", ["linear", "conv2d", "convT2d", "conv3d"])
@pytest.mark.parametrize("n_iter", [1, 3])
def test_converges_to_unit_spectral_norm(kind, n_iter):
    """After enough training forwards the normalized weight's largest singular value is 1 (1%),
    and 1/sigma is numpy's largest singular value of the raw weight."""
    torch.manual_seed(3)
    m = spectral_norm(MODULES[kind](), n_power_iterations=n_iter)
    p = m.parametrizations.weight[0]
    for _ in range(60 // n_iter):
        w = m.weight
    raw = m.parametrizations.weight.original
    assert top_singular_value(w, p.dim) == pytest.approx(1.0, rel=1e-2)
    sigma = (raw / w).detach().flatten()[0].item()
    assert sigma == pytest.approx(top_singular_value(raw, p.dim), rel=1e-2)
    # the vectors are the leading singular vectors (up to sign)
    U, S, Vh = np.linalg.svd(matrix(raw, p.dim))
    assert abs(float(np.dot(U[:, 0], p._u.double().numpy()))) == pytest.approx(1.0, abs=2e-2)


def test_one_dimensional_weight_is_divided_by_its_norm():
    m = nn.Module()
    m.weight = nn.Parameter(torch.randn(7, dtype=torch.float64))
    spectral_norm(m)
    expect = m.parametrizations.weight.original.detach().numpy()
    np.testing.assert_allclose(m.weight.detach().numpy(), expect / np.linalg.norm(expect), rtol=1e-13)
    assert not list(m.parametrizations.weight[0].buffers())


def test_eval_does_no_power_iteration_train_does():
    torch.manual_seed(0)
    m = spectral_norm(nn.Conv2d(3, 4, 3))
    p = m.parametrizations.weight[0]
    m.eval()
    u, v = p._u.clone(), p._v.clone()
    w1 = m.weight.detach().clone()
    w2 = m.weight.detach().clone()
    assert torch.equal(p._u, u) and torch.equal(p._v, v) and torch.equal(w1, w2)
    # the eval weight is W / (u^T W_mat v) with the stored vectors
    raw = m.parametrizations.weight.original.detach()
    sigma = torch.dot(u, raw.reshape(4, -1) @ v)
    torch.testing.assert_close(w1, raw / sigma)
    with torch.no_grad():  # make the stored vectors poor so that one iteration visibly moves them
        p._u.copy_(torch.nn.functional.normalize(torch.ones(4), dim=0))
        p._v.copy_(torch.nn.functional.normalize(torch.arange(27.0) - 5, dim=0))
    u, v = p._u.clone(), p._v.clone()
    m.train()
    m.weight
    assert not torch.equal(p._u, u) and not torch.equal(p._v, v)
    # one iteration, exactly: u = normalize(W v), v = normalize(W^T u)
    u1 = torch.nn.functional.normalize(raw.reshape(4, -1) @ v, dim=0)
    torch.testing.assert_close(p._u, u1)
    torch.testing.assert_close(p._v, torch.nn.functional.normalize(raw.reshape(4, -1).T @ u1, dim=0))


def test_state_dict_both_ways_with_torch():
    theirs, mine = pair("conv2d", seed=5, dtype=torch.float32)
    for _ in range(3):
        theirs.weight  # move torch's vectors away from normkit's
    assert list(mine.state_dict()) == list(theirs.state_dict())
    mine.load_state_dict(theirs.state_dict(), strict=True)
    mine.eval()
    theirs.eval()
    torch.testing.assert_close(mine.weight, theirs.weight, rtol=0, atol=0)
    fresh = tp.spectral_norm(nn.Conv2d(3, 8, (3, 2)))
    fresh.load_state_dict(mine.state_dict(), strict=True)
    for k, v in mine.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    # the vectors persist: a copy made from the state_dict continues identically
    x = torch.randn(2, 3, 5, 5)
    mine.train()
    fresh.train()
    torch.testing.assert_close(mine(x), fresh(x))


def test_gradient_through_weight_over_sigma():
    """u, v are constants for autograd: the gradient is that of W / (u^T W v) with u, v fixed."""
    torch.manual_seed(1)
    m = spectral_norm(nn.Linear(4, 3).double())
    m.eval()
    p = m.parametrizations.weight[0]
    u, v = p._u.clone(), p._v.clone()
    raw = m.parametrizations.weight.original

    def fixed(w):
        return w / torch.dot(u, w @ v)

    w0 = raw.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda w: p(w), (w0,), eps=1e-6, atol=1e-7)
    c = torch.randn(3, 4, dtype=torch.float64)
    (g_fixed,) = torch.autograd.grad((fixed(w0) * c).sum(), w0)
    (g_mod,) = torch.autograd.grad((m.weight * c).sum(), raw)
    torch.testing.assert_close(g_mod, g_fixed)


def test_assigning_the_weight_stores_it_unnormalized():
    m = spectral_norm(nn.Linear(3, 3))
    new = torch.randn(3, 3)
    m.weight = new
    assert torch.equal(m.parametrizations.weight.original.detach(), new)


def test_bad_arguments_clear_errors_and_nothing_registered():
    lin = nn.Linear(3, 4)
    with pytest.raises(ValueError, match=r"expected Linear to have a parameter or buffer named 'kernel'.*\['weight', 'bias'\]"):
        spectral_norm(lin, name="kernel")
    with pytest.raises(IndexError, match=r"expected dim in \[-2, 1\] for a weight of shape \(4, 3\), got 2"):
        spectral_norm(lin, dim=2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=rf"n_power_iterations to be an integer >= 1, got {bad!r}"):
            spectral_norm(lin, n_power_iterations=bad)
    with pytest.raises(ValueError, match="eps >= 0"):
        spectral_norm(lin, eps=-1.0)
    assert not parametrize.is_parametrized(lin)
    assert isinstance(lin.weight, nn.Parameter)
    assert "dim=0, n_power_iterations=2" in repr(spectral_norm(lin, n_power_iterations=2))
    assert isinstance(lin.parametrizations.weight[0], SpectralNorm)
