"""What ``normkit bench`` measures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

#: The four directions of a normalization layer.
DIRECTIONS = ("train_fwd", "bwd", "fwd_bwd", "eval_fwd")

#: Bytes moved per input-sized tensor by the unavoidable traffic of each direction
#: (reads + writes, in units of the input's size), the basis of GB/s and the floor.
TRAFFIC = {"train_fwd": 3, "eval_fwd": 2, "bwd": 5, "fwd_bwd": 8}

RESNET50 = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7)]
CACHE_SIZED = [(32, 256, 28, 28), (8, 64, 56, 56)]
SMALL = [(8, 16, 8, 8)]
#: The family (issue 4): transformer rows for LayerNorm/RMSNorm, ResNet maps for GroupNorm/InstanceNorm.
FAMILY = [
    ("LayerNorm", (8 * 512, 768)), ("LayerNorm", (4 * 2048, 4096)), ("RMSNorm", (8 * 512, 768)),
    ("RMSNorm", (4 * 2048, 4096)),
] + [(layer, shape) for layer in ("GroupNorm", "InstanceNorm2d") for shape in [(32, 256, 28, 28)] + RESNET50]
#: relu(BN(x) + z): normkit's BatchNormAct2d against torch's BN, add and ReLU.
FUSED_ACT = [(32, 256, 28, 28), (32, 64, 112, 112)]
BN1D = [(1024, 256), (8192, 512), (65536, 1024), (16384, 256)]


@dataclass(frozen=True)
class Case:
    """One layer, input shape, memory layout, dtype and direction."""

    layer: str
    shape: Tuple[int, ...]
    layout: str = "contiguous"
    direction: str = "train_fwd"
    dtype: str = "float32"
    group: str = field(default="", compare=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * (8 if self.dtype == "float64" else 4)

    @property
    def label(self) -> str:
        dims = "x".join(map(str, self.shape))
        lay = "" if self.layout == "contiguous" else " CL"
        return f"{self.layer} {dims}{lay}"


def _bn_layer(shape: Tuple[int, ...]) -> str:
    return {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}[len(shape)]


def default_cases(quick: bool = False) -> List[Case]:
    """The full suite (``quick``: one small shape per kind, for smoke tests)."""
    cases: List[Case] = []
    if quick:
        for d in DIRECTIONS:
            cases.append(Case("BatchNorm2d", (4, 8, 8, 8), "contiguous", d, group="quick"))
        cases.append(Case("BatchNorm2d", (4, 8, 8, 8), "channels_last", "train_fwd", group="quick"))
        cases.append(Case("BatchNorm1d", (256, 32), "contiguous", "fwd_bwd", group="quick"))
        return cases
    for shape in CACHE_SIZED + RESNET50:
        group = "cache" if shape in CACHE_SIZED else "resnet50"
        for layout in ("contiguous", "channels_last"):
            for d in DIRECTIONS:
                cases.append(Case("BatchNorm2d", shape, layout, d, group=group))
    for shape in BN1D:
        for d in DIRECTIONS:
            cases.append(Case("BatchNorm1d", shape, "contiguous", d, group="bn1d"))
    for layer, shape in FAMILY:
        for d in ("train_fwd", "fwd_bwd"):
            cases.append(Case(layer, shape, "contiguous", d, group="family"))
    for shape in FUSED_ACT:
        for d in ("train_fwd", "fwd_bwd"):
            cases.append(Case("BatchNormAct2d", shape, "contiguous", d, group="fused-act"))
    for shape in SMALL:
        for d in DIRECTIONS:
            cases.append(Case(_bn_layer(shape), shape, "contiguous", d, group="small"))
    return cases
