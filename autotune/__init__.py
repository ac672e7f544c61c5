"""autotune: evaluation-driven mid-training auto-tuner for LLMs.

Data flows one way: spec -> controller -> launcher -> trainer -> evaluator -> objective -> controller.
Heavy libraries (torch, transformers, lm_eval, optuna) are imported only where they are used.

The Python API (the README's "Python API"; each name is imported on first use, so ``import autotune`` stays
light): ``load_space`` a search-space YAML, run or resume a ``Study`` (``Study(space).search()``), read its
trials as pandas (``trials_dataframe``), evaluate a checkpoint on a suite (``evaluate_checkpoint``), build
the full-scale recipe (``build_recipe``, ``extrapolate_study`` writes ``recipe.yaml``), write the HTML
report (``write_report``). Bad input raises ``UserError`` (file, field, value). autotune logs through
``logging`` (loggers under ``autotune``) and never prints; it leaves Optuna's and transformers' logging as
the caller set it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> the module that defines it (imported on first access, PEP 562)
_EXPORTS = {
    "load_space": "autotune.config.space",
    "Study": "autotune.search.study",
    "trials_dataframe": "autotune.api",
    "evaluate_checkpoint": "autotune.evaluate.checkpoint",
    "build_recipe": "autotune.extrapolate",
    "extrapolate_study": "autotune.extrapolate",
    "write_report": "autotune.report",
    "UserError": "autotune.errors",
}

__all__ = ["Study", "UserError", "__version__", "build_recipe", "evaluate_checkpoint", "extrapolate_study", "load_space",
           "trials_dataframe", "write_report"]  # _EXPORTS and __version__ (a literal: linters read it)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time ``__getattr__`` imports on first use
    from autotune.api import trials_dataframe
    from autotune.config.space import load_space
    from autotune.errors import UserError
    from autotune.evaluate.checkpoint import evaluate_checkpoint
    from autotune.extrapolate import build_recipe, extrapolate_study
    from autotune.report import write_report
    from autotune.search.study import Study


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'autotune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
