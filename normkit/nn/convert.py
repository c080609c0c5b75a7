"""Swap torch's normalization layers for normkit's in a model, and back."""

from __future__ import annotations

from typing import Any, Dict, Type

from torch import nn

from . import batchnorm as nk
from .groupnorm import GroupNorm
from .instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from .layernorm import LayerNorm, RMSNorm

__all__ = ["convert", "EXTRA_ATTRIBUTES", "PAIRS"]

#: (torch class, normkit class): every layer ``convert`` knows, both directions.
PAIRS = [
    (nn.BatchNorm1d, nk.BatchNorm1d),
    (nn.BatchNorm2d, nk.BatchNorm2d),
    (nn.BatchNorm3d, nk.BatchNorm3d),
    (nn.LayerNorm, LayerNorm),
    (nn.GroupNorm, GroupNorm),
    (nn.InstanceNorm1d, InstanceNorm1d),
    (nn.InstanceNorm2d, InstanceNorm2d),
    (nn.InstanceNorm3d, InstanceNorm3d),
    (nn.RMSNorm, RMSNorm),
]

#: Attributes a normkit class adds to its torch base (base class -> {name: value a
#: converted torch layer gets}). Converting to a class without them drops them.
EXTRA_ATTRIBUTES: Dict[type, Dict[str, Any]] = {
    nk._BatchNormMixin: {"nonfinite": "propagate"},
}


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
    wanted: Dict[str, Any] = {}
    for owner, attributes in EXTRA_ATTRIBUTES.items():
        if issubclass(target, owner):
            wanted.update(attributes)
    for owner, attributes in EXTRA_ATTRIBUTES.items():
        for name in attributes:
            if name not in wanted:
                new.__dict__.pop(name, None)
    for name, value in wanted.items():
        new.__dict__.setdefault(name, value)
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

    done: Dict[int, nn.Module] = {}  # a layer registered at several places stays one layer

    def visit(m: nn.Module) -> nn.Module:
        if id(m) in done:
            return done[id(m)]
        for name, child in list(m._modules.items()):  # every slot, even a module registered twice
            if child is not None:
                new_child = visit(child)
                if new_child is not child:
                    m._modules[name] = new_child
        target = mapping.get(type(m))
        done[id(m)] = m if target is None else _swap(m, target)
        return done[id(m)]

    return visit(model)
