"""Fold eval-mode BatchNorm layers into the Conv/ConvTranspose/Linear layer before them.

In eval mode a BatchNorm is the per-channel affine map
``y = (z - running_mean) * s + bias`` with ``s = weight / sqrt(running_var + eps)``
(``weight`` = 1 and ``bias`` = 0 without affine parameters). When ``z`` is the
output of a Conv/ConvTranspose/Linear ``z = W x + b`` used by nothing else, the
pair is the single layer ``W' = s * W`` (scaled along the *output* channel),
``b' = (b - running_mean) * s + bias``. :func:`fold` computes this in float64,
writes it back in the layer's dtype, and replaces the BatchNorm by ``nn.Identity``
(normkit's ``BatchNormAct2d`` by its activation, with its residual argument).

Where "directly follows" is decided:

1. by a ``torch.fx`` trace of the model (conv/linear and BatchNorm kept as leaves):
   a BatchNorm whose only input is a call of such a layer, that layer's output used
   by nothing else, and each of the two modules called exactly once -- this covers
   residual blocks and any non-sequential wiring;
2. where a (sub)module cannot be traced, by neighbours in an ``nn.Sequential``
   (and the trace is retried on each child, recursively).

Every BatchNorm with running statistics that is not folded is reported with the
reason, in a :class:`FoldWarning` and in the :class:`FoldReport` that
``fold(model, return_report=True)`` returns; nothing is skipped silently.
"""

from __future__ import annotations

import copy
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.fx
from torch import nn
from torch.nn.utils import parametrize

from ._common import is_batchnorm

__all__ = ["fold", "FoldReport", "FoldWarning", "fold_pair"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FOLDABLE = _CONV + _CONVT + (nn.Linear,)


class FoldWarning(UserWarning):
    """Some BatchNorm layers could not be folded (the message lists them with reasons)."""


@dataclass
class FoldReport:
    folded: List[Tuple[str, str]] = field(default_factory=list)   # (layer name, batchnorm name)
    skipped: List[Tuple[str, str]] = field(default_factory=list)  # (batchnorm name, reason)


class _Act(nn.Module):
    """What remains of a folded ``BatchNormAct2d``: ``act(x + residual)``."""

    def __init__(self, act: Optional[str]) -> None:
        super().__init__()
        self.act = act

    def forward(self, input: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = input if residual is None else input + residual
        if self.act is None:
            return y
        if self.act == "relu":
            return torch.relu(y)
        if self.act == "silu":
            return nn.functional.silu(y)
        return nn.functional.gelu(y)

    def extra_repr(self) -> str:
        return f"act={self.act!r}"


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, _FOLDABLE) or is_batchnorm(m) or type(m).__module__.startswith("normkit.nn")
                or super().is_leaf_module(m, qualname))


def _out_channels(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _why_not(layer: nn.Module, bn: nn.Module) -> Optional[str]:
    """None if the pair can be folded, else the reason."""
    if not isinstance(layer, _FOLDABLE):
        return f"its input comes from {type(layer).__name__}, not a Conv/ConvTranspose/Linear"
    if bn.running_mean is None or bn.running_var is None:
        return "it has no running statistics (track_running_stats=False uses batch statistics in eval)"
    if _out_channels(layer) != bn.num_features:
        return f"{type(layer).__name__} has {_out_channels(layer)} output channels, the BatchNorm {bn.num_features}"
    if parametrize.is_parametrized(layer):
        return f"{type(layer).__name__}'s weight is parametrized (weight/spectral norm)"
    if layer._forward_hooks or layer._forward_pre_hooks or bn._forward_hooks or bn._forward_pre_hooks:
        return "a forward hook is registered on the layer or the BatchNorm"
    if not torch.isfinite(bn.running_var).all() or not torch.isfinite(bn.running_mean).all():
        return "its running statistics are not finite"
    return None


@torch.no_grad()
def fold_pair(layer: nn.Module, bn: nn.Module) -> None:
    """Fold eval-mode ``bn`` into ``layer`` (Conv*/ConvTranspose*/Linear) in place."""
    w = layer.weight
    dt = torch.float64
    s = torch.rsqrt(bn.running_var.to(dt) + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.to(dt)
    shift = -bn.running_mean.to(dt) * s
    if bn.bias is not None:
        shift = shift + bn.bias.to(dt)
    W = w.to(dt)
    if isinstance(layer, _CONVT):
        g = layer.groups
        cin, cout_g = W.shape[0], W.shape[1]
        Wg = W.reshape(g, cin // g, cout_g, *W.shape[2:])
        Wg = Wg * s.reshape(g, 1, cout_g, *([1] * (W.dim() - 2)))
        W = Wg.reshape(W.shape)
    else:
        W = W * s.reshape(-1, *([1] * (W.dim() - 1)))
    b = layer.bias.to(dt) if layer.bias is not None else torch.zeros_like(s)
    b = b * s + shift
    w.copy_(W.to(w.dtype))
    if layer.bias is None:
        layer.bias = nn.Parameter(b.to(device=w.device, dtype=w.dtype), requires_grad=w.requires_grad)
    else:
        layer.bias.copy_(b.to(layer.bias.dtype))


def _is_act(bn: nn.Module) -> bool:
    from ..nn.batchnorm_act import BatchNormAct2d
    return isinstance(bn, BatchNormAct2d)


def _replacement(bn: nn.Module) -> nn.Module:
    if _is_act(bn):
        return _Act(bn.act)
    return nn.Identity()


def _set(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _fold_traced(module: nn.Module, prefix: str, graph: torch.fx.Graph, root: nn.Module,
                 report: FoldReport, decided: Dict[int, str]) -> None:
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        bn = module.get_submodule(node.target)
        if not is_batchnorm(bn) or id(bn) in decided:
            continue
        bn_name = _join(prefix, node.target)
        reason: Optional[str] = None
        src = node.args[0] if node.args else None
        if bn.running_mean is None or bn.running_var is None:
            reason = "it has no running statistics (track_running_stats=False uses batch statistics in eval)"
        elif calls[node.target] != 1:
            reason = f"it is called {calls[node.target]} times in the forward"
        elif (len(node.args) != 1 or node.kwargs) and not (
                _is_act(bn) and len(node.args) + len(node.kwargs) <= 2 and set(node.kwargs) <= {"residual"}):
            reason = "it is called with extra arguments (e.g. a residual)"
        elif not isinstance(src, torch.fx.Node) or src.op != "call_module":
            what = src.op if isinstance(src, torch.fx.Node) else type(src).__name__
            tgt = getattr(src, "target", "")
            reason = f"its input is not a module's output ({what} {getattr(tgt, '__name__', tgt)})"
        else:
            layer = module.get_submodule(src.target)
            reason = _why_not(layer, bn)
            if reason is None and calls[src.target] != 1:
                reason = f"{_join(prefix, src.target)} is called {calls[src.target]} times"
            if reason is None and len(src.users) != 1:
                reason = f"the output of {_join(prefix, src.target)} is also used elsewhere"
            if reason is None:
                fold_pair(layer, bn)
                _set(root, bn_name, _replacement(bn))
                report.folded.append((_join(prefix, src.target), bn_name))
                decided[id(bn)] = "folded"
                continue
        decided[id(bn)] = reason
        report.skipped.append((bn_name, reason))


def _fold_sequential(seq: nn.Sequential, prefix: str, root: nn.Module, report: FoldReport,
                     decided: Dict[int, str], uses: Counter) -> None:
    items = list(seq.named_children())
    for (lname, layer), (bname, bn) in zip(items, items[1:]):
        if not is_batchnorm(bn) or id(bn) in decided or not isinstance(layer, _FOLDABLE):
            continue
        bn_name = _join(prefix, bname)
        reason = _why_not(layer, bn)
        if reason is None and (uses[id(layer)] > 1 or uses[id(bn)] > 1):
            reason = "the layer or the BatchNorm is registered more than once in the model"
        if reason is None:
            fold_pair(layer, bn)
            _set(root, bn_name, _replacement(bn))
            report.folded.append((_join(prefix, lname), bn_name))
            decided[id(bn)] = "folded"
        else:
            decided[id(bn)] = reason
            report.skipped.append((bn_name, reason))


def _walk(module: nn.Module, prefix: str, root: nn.Module, report: FoldReport, decided: Dict[int, str],
          untraceable: Dict[int, str], uses: Counter) -> None:
    if is_batchnorm(module) or isinstance(module, _FOLDABLE):
        return
    try:
        graph = _Tracer().trace(module)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: look inside
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        for m in module.modules():
            untraceable.setdefault(id(m), f"'{prefix or type(module).__name__}' is not torch.fx-traceable ({msg})")
        if isinstance(module, nn.Sequential):
            _fold_sequential(module, prefix, root, report, decided, uses)
        for name, child in list(module.named_children()):
            _walk(child, _join(prefix, name), root, report, decided, untraceable, uses)
        return
    _fold_traced(module, prefix, graph, root, report, decided)


def fold(model: nn.Module, *, return_report: bool = False, warn: bool = True) -> Union[nn.Module, Tuple[nn.Module, FoldReport]]:
    """An eval-mode deep copy of ``model`` with every foldable BatchNorm folded
    into the Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear before it (see the module
    docstring). ``model`` itself is not changed.

    Every BatchNorm left in the copy is listed with its reason in a
    :class:`FoldWarning` (unless ``warn=False``) and, with ``return_report=True``,
    in the returned :class:`FoldReport` (``(copy, report)``).
    Assumes a Linear followed by a BatchNorm1d sees ``(N, features)`` input (the only
    layout in which the two agree on the channel axis).
    """
    folded = copy.deepcopy(model).eval()
    report = FoldReport()
    decided: Dict[int, str] = {}
    untraceable: Dict[int, str] = {}
    uses: Counter = Counter(id(m) for _, m in folded.named_modules(remove_duplicate=False))
    _walk(folded, "", folded, report, decided, untraceable, uses)
    for name, m in folded.named_modules():
        if is_batchnorm(m) and id(m) not in decided:
            reason = untraceable.get(id(m), "it is never called in the traced forward")
            if m.running_mean is None:
                reason = "it has no running statistics (track_running_stats=False uses batch statistics in eval)"
            decided[id(m)] = reason
            report.skipped.append((name, reason))
    if warn and report.skipped:
        lines = "\n".join(f"  {n}: {r}" for n, r in report.skipped)
        warnings.warn(f"fold: {len(report.skipped)} BatchNorm layer(s) left unfolded:\n{lines}", FoldWarning, stacklevel=2)
    return (folded, report) if return_report else folded
