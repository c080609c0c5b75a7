"""Shared pieces of ``normkit demo``: data, models, training loop, progress bar, recalibration.

The data are scikit-learn's handwritten digits (1,797 8x8 images, shipped with
scikit-learn, never downloaded) or the user's own ``.npz`` with arrays ``x``
and ``y``. Everything is seeded: a run with the same arguments gives the same
numbers.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import normkit.nn as nkn

# --------------------------------------------------------------------------- data


@dataclass
class Data:
    """A fixed train/test split. ``x_*`` are float32 images ``(N, C, H, W)``, standardised per pixel."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()).item()) + 1

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def n_features(self) -> int:
        return int(np.prod(self.image_shape))


def _as_images(x: np.ndarray) -> np.ndarray:
    """``(N, D)`` -> ``(N, 1, s, s)`` when D is a square, else ``(N, 1, 1, D)``; ``(N, H, W)`` -> ``(N, 1, H, W)``."""
    if x.ndim == 2:
        s = int(round(math.sqrt(x.shape[1])))
        return x.reshape(len(x), 1, s, s) if s * s == x.shape[1] else x.reshape(len(x), 1, 1, x.shape[1])
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        return x
    raise ValueError(f"normkit demo expected x of shape (N, D), (N, H, W) or (N, C, H, W), got {x.shape}")


def load_data(path: Optional[str] = None, test_fraction: float = 0.2, seed: int = 0) -> Data:
    """scikit-learn's digits (default) or an ``.npz`` with ``x`` and ``y``; a stratified split fixed by ``seed``."""
    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise RuntimeError(
                "normkit demo expected scikit-learn for its default data (the digits it ships); "
                "install it (pip install scikit-learn) or pass --data file.npz with arrays x and y"
            ) from e
        digits = load_digits()
        x, y, name = digits.images.astype(np.float64), digits.target, "scikit-learn digits (8x8)"
    else:
        with np.load(path) as f:
            if "x" not in f or "y" not in f:
                raise ValueError(f"normkit demo expected arrays 'x' and 'y' in {path}, got {sorted(f.files)}")
            x, y, name = f["x"].astype(np.float64), f["y"], str(path)
        if len(x) != len(y):
            raise ValueError(f"normkit demo expected as many labels as samples in {path}, got {len(x)} and {len(y)}")
    _, y = np.unique(np.asarray(y), return_inverse=True)  # labels 0..K-1
    x = _as_images(x)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):  # stratified
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[: max(1, int(round(test_fraction * len(idx))))]] = True
    # standardise every pixel with the training split's statistics (std + 0.1 keeps
    # near-constant border pixels finite): no network starts with an offset/scale handicap
    mu, sd = x[~test].mean(0), x[~test].std(0)
    x = (x - mu) / (sd + 0.1 * (sd.max() if sd.max() > 0 else 1.0))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Data(t(x[~test].astype(np.float32)), t(y[~test].astype(np.int64)),
                t(x[test].astype(np.float32)), t(y[test].astype(np.int64)), name)


# --------------------------------------------------------------------------- progress


class Progress:
    """A plain text progress bar on stderr: ``label [#####.....] 412/1000 3.1s``."""

    def __init__(self, total: int, label: str, stream=None, width: int = 30) -> None:
        self.total, self.label, self.width = max(1, int(total)), label, width
        self.stream = sys.stderr if stream is None else stream
        self.done, self.start, self._last = 0, time.perf_counter(), -1.0

    def update(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        now = time.perf_counter()
        if now - self._last >= 0.1 or self.done == self.total:
            self._last = now
            k = int(self.width * self.done / self.total)
            self.stream.write(f"\r{self.label:<18} [{'#' * k}{'.' * (self.width - k)}] "
                              f"{self.done}/{self.total} {now - self.start:5.1f}s")
            self.stream.flush()

    def close(self) -> None:
        self.stream.write("\n")
        self.stream.flush()


# --------------------------------------------------------------------------- models


def make_mlp(n_in: int, n_classes: int, bn: bool, seed: int, init_scale: float = 1.0,
             hidden: int = 100, depth: int = 3, bn_momentum: float = 0.1) -> nn.Sequential:
    """``depth`` hidden layers of ``hidden`` sigmoid units, each Linear followed by BatchNorm1d when ``bn``.

    The Linear layers are drawn first from ``seed`` (torch's default init, weights
    multiplied by ``init_scale``), so the models with and without BN start from
    the same weights.
    """
    torch.manual_seed(seed)
    sizes = [n_in] + [hidden] * depth
    linears = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])] + [nn.Linear(hidden, n_classes)]
    with torch.no_grad():
        for lin in linears:
            lin.weight.mul_(init_scale)
    layers: List[nn.Module] = [nn.Flatten()]
    for lin in linears[:-1]:
        layers.append(lin)
        if bn:
            layers.append(nkn.BatchNorm1d(hidden, momentum=bn_momentum))
        layers.append(nn.Sigmoid())
    layers.append(linears[-1])
    return nn.Sequential(*layers)


NORMS = ("BatchNorm", "GroupNorm", "LayerNorm", "BatchRenorm", "GhostBatchNorm")


def _norm(kind: str, c: int, hw: Tuple[int, int], batch: int, steps: int, momentum: float) -> nn.Module:
    if kind == "BatchNorm":
        return nkn.BatchNorm2d(c, momentum=momentum)
    if kind == "GroupNorm":
        return nkn.GroupNorm(4, c)
    if kind == "LayerNorm":
        return nkn.LayerNorm([c, hw[0], hw[1]])
    if kind == "BatchRenorm":  # warm up as BN for 10% of training, then relax the limits over 40%
        return nkn.BatchRenorm2d(c, momentum=momentum, warmup_steps=max(1, steps // 10),
                                 relax_steps=max(1, 2 * steps // 5))
    if kind == "GhostBatchNorm":
        return nkn.GhostBatchNorm2d(c, virtual_batch_size=min(16, batch), momentum=momentum)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown normalization {kind!r}; expected one of {NORMS + ('none',)}")


def make_convnet(image_shape: Tuple[int, int, int], n_classes: int, norm: str, seed: int,
                 batch: int = 32, steps: int = 1000, momentum: float = 0.1) -> nn.Sequential:
    """conv3x3(16) - norm - ReLU - conv3x3/2(32) - norm - ReLU - global average - linear."""
    torch.manual_seed(seed)
    c, h, w = image_shape
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    return nn.Sequential(
        nn.Conv2d(c, 16, 3, padding=1, bias=False), _norm(norm, 16, (h, w), batch, steps, momentum), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), _norm(norm, 32, (h2, w2), batch, steps, momentum),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, n_classes),
    )


# --------------------------------------------------------------------------- training


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_stats: bool = False,
             batch: int = 64) -> float:
    """Eval-mode accuracy (running statistics); ``batch_stats=True``: train-mode BN on test
    batches of ``batch`` (the running statistics are saved and restored)."""
    was = model.training
    with torch.no_grad():
        if not batch_stats:
            model.eval()
            out = model(x)
        else:
            saved = {k: v.clone() for k, v in model.state_dict().items()}
            model.train()
            out = torch.cat([model(x[i:i + batch]) for i in range(0, len(x) - batch + 1, batch)]
                            + ([model(x[len(x) - len(x) % batch:])] if len(x) % batch > 1 else []))
            y = y[: len(out)]
            model.load_state_dict(saved)
    model.train(was)
    return float((out.argmax(1) == y).float().mean().item())


def batches(n: int, batch: int, steps: int, seed: int) -> Iterable[torch.Tensor]:
    """``steps`` index batches from seeded epoch permutations, the last partial batch of an epoch dropped."""
    rng = np.random.default_rng(seed)
    done = 0
    while True:
        perm = torch.from_numpy(rng.permutation(n))
        for i in range(0, n - batch + 1, batch):
            if done == steps:
                return
            yield perm[i:i + batch]
            done += 1


def train(model: nn.Module, data: Data, steps: int, batch: int, lr: float, seed: int,
          momentum: float = 0.0, eval_every: int = 0, on_eval: Optional[Callable[[int], None]] = None,
          progress: Optional[Progress] = None) -> List[Tuple[int, float]]:
    """SGD on cross-entropy; returns ``[(step, eval-mode test accuracy), ...]`` (at 0, every ``eval_every``, the end)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    curve: List[Tuple[int, float]] = []

    def evaluate(step: int) -> None:
        curve.append((step, accuracy(model, data.x_test, data.y_test)))
        if on_eval is not None:
            on_eval(step)

    if eval_every:
        evaluate(0)
    model.train()
    step = 0
    for step, idx in enumerate(batches(len(data.x_train), batch, steps, seed), 1):
        loss = nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress.update()
        if eval_every and step % eval_every == 0 and step != steps:
            evaluate(step)
    evaluate(step)
    return curve


# --------------------------------------------------------------------------- recalibration


def _bn_layers(model: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


def _recalibrate(model: nn.Module, x: torch.Tensor, batch: int = 256) -> nn.Module:
    """Set every BatchNorm's running statistics to the pooled statistics of its eval-mode inputs.

    The demo's own private version (``normkit.tools.recalibrate`` is the
    library's): layer by layer in forward order, with the model in eval mode and
    the earlier layers already recalibrated, a forward hook collects the layer's
    inputs over all batches of ``x``; ``running_mean`` becomes their mean per
    channel and ``running_var`` their unbiased variance per channel (pooled over
    every sample and position, accumulated in float64 around a shift). Returns
    the model, in the mode it came in.
    """
    was = model.training
    model.eval()
    for layer in _bn_layers(model):
        acc: Dict[str, torch.Tensor] = {}

        def hook(mod: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> None:
            v = inputs[0].detach().to(torch.float64)
            v = v.transpose(0, 1).reshape(v.shape[1], -1)  # (C, N*L)
            if "shift" not in acc:
                acc["shift"] = v[:, :1].clone()
                acc["n"] = torch.zeros((), dtype=torch.float64)
                acc["s1"] = torch.zeros(v.shape[0], dtype=torch.float64)
                acc["s2"] = torch.zeros(v.shape[0], dtype=torch.float64)
            d = v - acc["shift"]
            acc["n"] += d.shape[1]
            acc["s1"] += d.sum(1)
            acc["s2"] += (d * d).sum(1)

        handle = layer.register_forward_pre_hook(hook)
        try:
            with torch.no_grad():
                for i in range(0, len(x), batch):
                    model(x[i:i + batch])
        finally:
            handle.remove()
        n, s1, s2 = acc["n"], acc["s1"], acc["s2"]
        mean_d = s1 / n
        var = (s2 - n * mean_d * mean_d) / (n - 1)
        with torch.no_grad():
            layer.running_mean.copy_((acc["shift"][:, 0] + mean_d).to(layer.running_mean.dtype))
            layer.running_var.copy_(var.clamp_min(0).to(layer.running_var.dtype))
    model.train(was)
    return model


# --------------------------------------------------------------------------- statistics


def spread(values: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def fmt(s: Dict[str, float], pct: bool = False, digits: int = 1) -> str:
    """``mean ± std`` of a :func:`spread`, as percent when ``pct``."""
    k = 100.0 if pct else 1.0
    return f"{k * s['mean']:.{digits}f} ± {k * s['std']:.{digits}f}"
