"""Per-layer BatchNorm diagnostics: :func:`report` and ``normkit inspect`` (:func:`inspect_main`).

For every BatchNorm with running statistics, a row (a dict) with:

* ``layer``, ``type``, ``channels``, ``momentum`` (PyTorch's: weight of the new
  batch; ``None`` = cumulative), ``num_batches_tracked``, ``eps``;
* ``nonfinite``: channels whose running mean/var or affine parameters are NaN/Inf;
* ``dead``: channels with ``|weight| < 1e-6`` (output is the constant ``bias``);
* ``constant``: channels whose running variance (or, with batches, population
  variance) is ``< eps`` -- an input that does not vary, normalized by ``sqrt(eps)``;
* with ``batches``: the population statistics of the layer's inputs
  (:func:`normkit.tools.population_stats`) and the gap to the running ones,
  ``mean_gap = max_c |running_mean - mean| / sqrt(var + eps)`` (in population
  standard deviations) and ``var_ratio = max_c max(r, 1/r)``, ``r = (running_var + eps)/(var + eps)``
  -- 1.0 is a perfect match; a large value is the "model is worse in eval()" symptom,
  fixed by :func:`normkit.tools.recalibrate`.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from ._common import Forward, batchnorm_layers, default_forward

__all__ = ["report", "report_state_dict", "format_table", "plot", "inspect_main"]

_COLUMNS = ["layer", "type", "channels", "momentum", "num_batches_tracked", "nonfinite", "dead", "constant",
            "mean_gap", "var_ratio"]


def _row(name: str, kind: str, rm: torch.Tensor, rv: torch.Tensor, w: Optional[torch.Tensor],
         b: Optional[torch.Tensor], nbt: Optional[torch.Tensor], momentum: Any, eps: float) -> Dict[str, Any]:
    rm64, rv64 = rm.detach().double().cpu(), rv.detach().double().cpu()
    bad = ~(torch.isfinite(rm64) & torch.isfinite(rv64))
    for p in (w, b):
        if p is not None:
            bad |= ~torch.isfinite(p.detach().double().cpu())
    return {
        "layer": name, "type": kind, "channels": int(rm.numel()), "momentum": momentum,
        "num_batches_tracked": None if nbt is None else int(nbt), "eps": eps,
        "nonfinite": int(bad.sum()),
        "dead": int((w.detach().abs().cpu() < 1e-6).sum()) if w is not None else 0,
        "constant": int((rv64 < eps).sum()),
        "mean_gap": None, "var_ratio": None,
    }


def report(model: nn.Module, batches: Optional[Iterable[Any]] = None, num_batches: Optional[int] = None, *,
           forward: Forward = default_forward, print_table: bool = True, png: Optional[str] = None,
           progress_bar: bool = False, file: Any = None) -> List[Dict[str, Any]]:
    """Diagnostics rows for every BatchNorm of ``model`` (see the module docstring);
    the model is not changed. Prints a table to ``file`` (stdout) unless
    ``print_table=False``; writes a PNG of the gaps to ``png`` if given (matplotlib)."""
    rows = []
    layers = batchnorm_layers(model)
    for name, m in layers:
        rows.append(_row(name, type(m).__name__, m.running_mean, m.running_var, m.weight, m.bias,
                         m.num_batches_tracked, m.momentum, m.eps))
    if batches is not None and layers:
        from .recalibrate import population_stats
        stats = population_stats(model, batches, num_batches, forward=forward, progress_bar=progress_bar)
        for row, (name, m) in zip(rows, layers):
            s = stats[name]
            if s.count == 0:
                continue
            pv = s.var_unbiased
            rm, rv = m.running_mean.detach().double().cpu(), m.running_var.detach().double().cpu()
            sd = torch.sqrt(pv + m.eps)
            row["mean_gap"] = float(((rm - s.mean).abs() / sd).max())
            r = (rv + m.eps) / (pv + m.eps)
            row["var_ratio"] = float(torch.maximum(r, 1 / r).max())
            row["constant"] = int((pv < m.eps).sum())
            row["population_mean"], row["population_var"] = s.mean, pv
    if print_table:
        print(format_table(rows), file=file or sys.stdout)
    if png:
        plot(rows, png)
    return rows


def report_state_dict(state: Dict[str, torch.Tensor]) -> List[Dict[str, Any]]:
    """Rows from a checkpoint alone: every prefix with ``running_mean`` and ``running_var``
    (no momentum, eps taken as 1e-5, no population gap)."""
    rows = []
    for key in state:
        if not key.endswith("running_mean"):
            continue
        pre = key[: -len("running_mean")]
        if pre + "running_var" not in state:
            continue
        rows.append(_row(pre.rstrip("."), "BatchNorm?", state[key], state[pre + "running_var"],
                         state.get(pre + "weight"), state.get(pre + "bias"), state.get(pre + "num_batches_tracked"),
                         None, 1e-5))
    return rows


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if math.isfinite(v) else str(v)
    return str(v)


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A fixed-width text table of the rows' main columns."""
    if not rows:
        return "no BatchNorm layers with running statistics"
    cells = [_COLUMNS] + [[_fmt(r.get(c)) for c in _COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """Bar charts per layer: mean gap and variance ratio (or running statistics' spread
    without population data), dead/constant/non-finite channel counts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["layer"] for r in rows]
    x = range(len(rows))
    fig, axes = plt.subplots(3, 1, figsize=(max(6, 0.35 * len(rows) + 2), 8), sharex=True)
    axes[0].bar(x, [r["mean_gap"] or 0.0 for r in rows])
    axes[0].set_ylabel("mean gap (pop. sd)")
    axes[1].bar(x, [r["var_ratio"] or 1.0 for r in rows])
    axes[1].set_ylabel("var ratio")
    axes[1].axhline(1.0, color="k", lw=0.5)
    for k, (col, color) in enumerate([("dead", "C1"), ("constant", "C2"), ("nonfinite", "C3")]):
        axes[2].bar([i + (k - 1) * 0.27 for i in x], [r[col] for r in rows], width=0.27, color=color, label=col)
    axes[2].set_ylabel("channels")
    axes[2].legend()
    axes[2].set_xticks(list(x))
    axes[2].set_xticklabels(names, rotation=90, fontsize=7)
    fig.suptitle("BatchNorm diagnostics")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _load_python(path: str):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_normkit_inspect_target", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"normkit inspect: cannot import {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "build_model"):
        raise SystemExit(f"normkit inspect: {path} defines no build_model()")
    return mod


def inspect_main(argv: Optional[Sequence[str]] = None) -> int:
    """``normkit inspect PATH [--batches N] [--png FILE]``.

    PATH is a checkpoint (``.pt``/``.pth``: a state_dict, or a dict holding one under
    ``state_dict``/``model``; loaded with ``weights_only=True``) -- running statistics
    only -- or a Python file defining ``build_model()`` and optionally
    ``batches()`` (an iterable of inputs), which adds the population gap.
    Returns the exit status: 0, or 1 when a layer has non-finite statistics.
    """
    ap = argparse.ArgumentParser(prog="normkit inspect", description="BatchNorm diagnostics of a model or checkpoint")
    ap.add_argument("path", help="a .pt/.pth state_dict, or a .py file defining build_model() [and batches()]")
    ap.add_argument("--batches", type=int, default=None, metavar="N", help="use at most N batches from batches()")
    ap.add_argument("--png", default=None, metavar="FILE", help="also write a PNG of the diagnostics")
    args = ap.parse_args(argv)
    if args.path.endswith(".py"):
        mod = _load_python(args.path)
        model = mod.build_model()
        data = mod.batches() if hasattr(mod, "batches") else None
        rows = report(model, data, args.batches, png=args.png, progress_bar=data is not None)
    else:
        state = torch.load(args.path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise SystemExit(f"normkit inspect: {args.path} holds a {type(state).__name__}, not a state_dict")
        rows = report_state_dict(state)
        print(format_table(rows))
        if args.png:
            plot(rows, args.png)
    return 1 if any(r["nonfinite"] for r in rows) else 0
