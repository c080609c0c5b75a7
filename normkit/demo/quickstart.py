"""A small conv net trained twice, with torch's BatchNorm2d and with normkit's.

Both runs start from the same weights and see the same batches; the printout
shows their losses side by side, how far apart the final weights are, and the
time each took -- normkit's modules are a drop-in replacement, so the two runs
should agree to float32 rounding.
"""

from __future__ import annotations

import copy
import time
from typing import List, Tuple

import numpy as np
import torch
from torch import nn

import normkit.nn as nkn


def make_data(n: int = 2048, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Noisy 1x16x16 images of 4 classes: a bright bar in one of four orientations."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.normal(0.0, 1.0, (n, 1, 16, 16)).astype(np.float32)
    idx = np.arange(16)
    for i, label in enumerate(y):
        k = rng.integers(4, 12)
        if label == 0:
            x[i, 0, k, :] += 1.2
        elif label == 1:
            x[i, 0, :, k] += 1.2
        elif label == 2:
            x[i, 0, idx, idx] += 1.2
        else:
            x[i, 0, idx, 15 - idx] += 1.2
    x = 3.0 * x + 5.0  # an offset and scale that batch normalization takes away
    return torch.from_numpy(x), torch.from_numpy(y)


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4),
    )


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int) -> Tuple[List[float], float]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.from_numpy(np.random.default_rng(epoch).permutation(len(x)))
        total = 0.0
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(x))
    return losses, time.perf_counter() - start


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run(epochs: int = 4, batch: int = 64) -> int:
    torch.manual_seed(0)
    x, y = make_data()
    x_test, y_test = make_data(512, seed=1)
    reference = make_model()
    ours = nkn.convert(copy.deepcopy(reference))
    print(f"normkit quickstart: a 3-layer conv net, {len(x)} images 16x16, {epochs} epochs, batch {batch}")
    print(f"converted: {sum(isinstance(m, nkn.BatchNorm2d) for m in ours.modules())} BatchNorm2d layers now run on normkit")
    loss_t, time_t = train(reference, x, y, epochs, batch)
    loss_n, time_n = train(ours, x, y, epochs, batch)
    print(f"{'epoch':>5}  {'loss torch BN':>14}  {'loss normkit BN':>16}")
    for e, (a, b) in enumerate(zip(loss_t, loss_n), 1):
        print(f"{e:>5}  {a:>14.5f}  {b:>16.5f}")
    drift = max((p - q).abs().max().item() for p, q in zip(reference.state_dict().values(), ours.state_dict().values()))
    print(f"test accuracy: torch BN {accuracy(reference, x_test, y_test):.3f}, normkit BN {accuracy(ours, x_test, y_test):.3f}")
    print(f"largest difference between the two trained state_dicts: {drift:.2e}")
    print(f"training time: torch BN {time_t:.2f} s, normkit BN {time_n:.2f} s (includes normkit's first-call JIT load)")
    return 0
