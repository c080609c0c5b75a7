"""Keras/Flax batch-norm weights: independent NumPy formulas of each framework's
inference and update rules, against the loaded normkit/torch modules."""

import numpy as np
import pytest
import torch
from torch import nn

import normkit.nn as nkn
from normkit.running import decay_from_momentum, momentum_from_decay
from normkit.tools import load_flax_batchnorm, load_keras_batchnorm


def keras_inference(x, gamma, beta, mm, mv, eps):  # channels last, as Keras
    return gamma * (x - mm) / np.sqrt(mv + eps) + beta


def keras_update(mm, mv, xb, decay):  # Keras: biased batch variance, decay on the old value
    return mm * decay + xb.mean(0) * (1 - decay), mv * decay + xb.var(0) * (1 - decay)


def _weights(C, seed=0):
    r = np.random.default_rng(seed)
    return (r.normal(size=C), r.normal(size=C), r.normal(size=C), r.uniform(0.1, 2.0, size=C))


def test_decay_momentum_roundtrip():
    assert momentum_from_decay(0.99) == 0.01 and decay_from_momentum(0.01) == 0.99
    assert momentum_from_decay(decay_from_momentum(0.1)) == 0.1


@pytest.mark.parametrize("cls", [nn.BatchNorm2d, nkn.BatchNorm2d])
def test_keras_eval_matches_and_conventions(cls):
    C = 5
    g, b, mm, mv = _weights(C)
    bn = load_keras_batchnorm(cls(C), g, b, mm, mv)
    assert bn.eps == 1e-3 and bn.momentum == 0.01
    x = np.random.default_rng(1).normal(size=(2, 4, 3, C))  # NHWC
    ref = keras_inference(x, g, b, mm, mv, 1e-3)
    out = bn.eval()(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    np.testing.assert_allclose(out.detach().numpy(), ref, rtol=1e-5, atol=1e-5)


def test_keras_training_update_rule():
    """The mean update equals Keras' exactly; the variance update is Keras' with the
    batch variance made unbiased (PyTorch's convention, documented)."""
    C, n = 3, 10
    g, b, mm, mv = _weights(C, 2)
    bn = load_keras_batchnorm(nkn.BatchNorm1d(C, dtype=torch.float64), g, b, mm, mv, momentum=0.9)
    xb = np.random.default_rng(3).normal(size=(n, C))
    bn.train()(torch.tensor(xb))
    km, kv = keras_update(mm, mv, xb, 0.9)
    np.testing.assert_allclose(bn.running_mean.numpy(), km, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), mv * 0.9 + xb.var(0) * n / (n - 1) * 0.1, rtol=1e-12)
    assert not np.allclose(bn.running_var.numpy(), kv, rtol=1e-6)


def test_flax_defaults_scale_only_and_batch_count():
    C = 4
    s, bias, mean, var = _weights(C, 4)
    bn = load_flax_batchnorm(nn.BatchNorm1d(C), s, bias, mean, var)
    assert bn.eps == 1e-5 and bn.momentum == 0.01
    x = np.random.default_rng(5).normal(size=(6, C))
    out = bn.eval()(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(out, s * (x - mean) / np.sqrt(var + 1e-5) + bias, rtol=1e-5, atol=1e-5)
    bn2 = load_flax_batchnorm(nn.BatchNorm1d(C), None, None, mean, var, batch_count=5)
    np.testing.assert_allclose(bn2.running_var.numpy(), var * 5 / 4, rtol=1e-6)
    assert torch.equal(bn2.weight, torch.ones(C)) and torch.equal(bn2.bias, torch.zeros(C))


def test_loader_validates_before_writing():
    bn = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"moving_variance of shape \(3,\)"):
        load_keras_batchnorm(bn, np.ones(3), np.zeros(3), np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="negative"):
        load_keras_batchnorm(bn, np.ones(3), np.zeros(3), np.zeros(3), -np.ones(3))
    with pytest.raises(TypeError):
        load_keras_batchnorm(nn.LayerNorm(3), np.ones(3), np.zeros(3), np.zeros(3), np.ones(3))
    assert bn.eps == 1e-5 and bn.momentum == 0.1 and torch.equal(bn.running_var, torch.ones(3))


def test_mlp_ported_from_keras_matches():
    """A two-layer MLP 'ported' from Keras: Dense kernels transposed, BN weights loaded."""
    r = np.random.default_rng(7)
    W1, b1, W2, b2 = r.normal(size=(4, 6)), r.normal(size=6), r.normal(size=(6, 2)), r.normal(size=2)
    bnw = _weights(6, 8)
    x = r.normal(size=(5, 4))
    h = keras_inference(x @ W1 + b1, *bnw, 1e-3)
    ref = np.maximum(h, 0) @ W2 + b2
    model = nn.Sequential(nn.Linear(4, 6), nkn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).double().eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(W1.T)), model[0].bias.copy_(torch.tensor(b1))
        model[3].weight.copy_(torch.tensor(W2.T)), model[3].bias.copy_(torch.tensor(b2))
    load_keras_batchnorm(model[1], *bnw)
    np.testing.assert_allclose(model(torch.tensor(x)).detach().numpy(), ref, rtol=1e-10, atol=1e-10)
