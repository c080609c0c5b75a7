"""Train-to-deploy tools for BatchNorm models (torch's layers and normkit's alike).

* :func:`recalibrate` -- precise BN: running statistics := population statistics;
* :func:`fold` -- fold eval-mode BatchNorm into the preceding Conv/ConvTranspose/Linear;
* :func:`report` -- per-layer diagnostics (running vs population gap, dead
  channels, non-finite statistics), a terminal table and an optional PNG;
* :func:`skip_nonfinite_updates`, :func:`snapshot`, :func:`restore` -- safe updates;
* :func:`load_keras_batchnorm`, :func:`load_flax_batchnorm` -- other frameworks' conventions.

Layering: ``tools`` depends on ``normkit.nn`` and ``normkit.running``, never the reverse.
"""

from .conventions import load_flax_batchnorm, load_keras_batchnorm
from .fold import FoldReport, FoldWarning, fold
from .recalibrate import PopulationStats, population_stats, recalibrate
from .report import inspect_main, report
from .safe import SkipLog, normalization_modules, restore, skip_nonfinite_updates, snapshot

__all__ = [
    "FoldReport", "FoldWarning", "PopulationStats", "SkipLog", "fold", "inspect_main", "load_flax_batchnorm",
    "load_keras_batchnorm", "normalization_modules", "population_stats", "recalibrate", "report", "restore",
    "skip_nonfinite_updates", "snapshot",
]
