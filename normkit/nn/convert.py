"""Swap torch's normalization layers for normkit's in a model, and back."""

from __future__ import annotations

from typing import Dict, Type

from torch import nn

from . import batchnorm as nk

__all__ = ["convert", "PAIRS"]

#: (torch class, normkit class): every layer ``convert`` knows, both directions.
PAIRS = [
    (nn.BatchNorm1d, nk.BatchNorm1d),
    (nn.BatchNorm2d, nk.BatchNorm2d),
    (nn.BatchNorm3d, nk.BatchNorm3d),
]


def _swap(module: nn.Module, target: Type[nn.Module]) -> nn.Module:
    """A ``target`` instance sharing ``module``'s parameters, buffers and attributes.

    ``target`` and ``module``'s class are a normkit class and the torch class it
    subclasses (either way), so they have the same fields: the instance
    dictionary is carried over whole. Parameters and buffers are the same
    objects, so an optimizer built on the old model keeps working.
    """
    new = target.__new__(target)
    new.__dict__.update(module.__dict__)
    for name in ("_parameters", "_buffers", "_modules"):
        new.__dict__[name] = dict(module.__dict__[name])
    if issubclass(target, nk._BatchNormMixin):
        new.__dict__.setdefault("nonfinite", "propagate")
    else:
        new.__dict__.pop("nonfinite", None)
    return new


def convert(model: nn.Module, to: str = "normkit") -> nn.Module:
    """Replace every torch normalization layer in ``model`` by normkit's (``to="torch"``: back).

    Only exact classes are swapped (``type(m) is torch.nn.BatchNorm2d``), each
    by its counterpart, carrying the very same parameter and buffer objects,
    the training mode and every attribute. The model is changed in place and
    returned (if ``model`` itself is such a layer, the new layer is returned).
    """
    if to == "normkit":
        mapping: Dict[type, type] = {t: n for t, n in PAIRS}
    elif to == "torch":
        mapping = {n: t for t, n in PAIRS}
    else:
        raise ValueError(f"convert expected to='normkit' or to='torch', got {to!r}")

    def visit(m: nn.Module) -> nn.Module:
        for name, child in m.named_children():
            new_child = visit(child)
            if new_child is not child:
                setattr(m, name, new_child)
        target = mapping.get(type(m))
        return m if target is None else _swap(m, target)

    return visit(model)
