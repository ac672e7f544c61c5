"""Configuration: YAML files -> frozen, validated records (pydantic).

* ``base``: ``Frozen`` (the base of every schema) and the parsers of YAML numbers;
* ``load``: ``read_yaml``, ``--set`` overrides, pydantic errors -> ``UserError``;
* ``sources``: where a domain's text comes from (``PathSource``, ``HFSource``, ``Domain``);
* ``run``: the demo base model, the proxy budget, the launcher and the search loop;
* ``space``: the search space (``SearchSpace`` and its searched sections), ``load_space``, ``dump_space``;
* ``suite``: evaluation suites (``Suite`` and its entries; ``autotune.evaluate.suite.load_suite`` loads one);
* ``gate``: the CI gate's settings (``GateConfig``, ``load_gate_config``).

The names below are re-exported lazily: importing this package imports none of its modules. Nothing here
imports torch, transformers, lm_eval or optuna: ``autotune validate`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "Frozen": "base",
    "read_yaml": "load", "apply_overrides": "load", "validation_error_to_user_error": "load", "ErrorStyle": "load",
    "PathSource": "sources", "HFSource": "sources", "Domain": "sources",
    "DemoBase": "run", "Proxy": "run", "LauncherSpec": "run", "Search": "run",
    "SearchSpace": "space", "FloatRange": "space", "Mixture": "space", "Schedule": "space", "Context": "space",
    "Objective": "space", "Ladder": "space", "Extrapolate": "space", "load_space": "space", "dump_space": "space",
    "Suite": "suite", "TaskEntry": "suite", "BpbEntry": "suite",
    "GateConfig": "gate", "Tolerance": "gate", "Rule": "gate", "load_gate_config": "gate",
}
__all__ = [
    "BpbEntry", "Context", "DemoBase", "Domain", "ErrorStyle", "Extrapolate", "FloatRange", "Frozen",
    "GateConfig", "HFSource", "Ladder", "LauncherSpec", "Mixture", "Objective", "PathSource", "Proxy",
    "Rule", "Schedule", "Search", "SearchSpace", "Suite", "TaskEntry", "Tolerance", "apply_overrides",
    "dump_space", "load_gate_config", "load_space", "read_yaml", "validation_error_to_user_error",
]

if TYPE_CHECKING:
    from autotune.config.base import Frozen
    from autotune.config.gate import GateConfig, Rule, Tolerance, load_gate_config
    from autotune.config.load import ErrorStyle, apply_overrides, read_yaml, validation_error_to_user_error
    from autotune.config.run import DemoBase, LauncherSpec, Proxy, Search
    from autotune.config.sources import Domain, HFSource, PathSource
    from autotune.config.space import (
        Context,
        Extrapolate,
        FloatRange,
        Ladder,
        Mixture,
        Objective,
        Schedule,
        SearchSpace,
        dump_space,
        load_space,
    )
    from autotune.config.suite import BpbEntry, Suite, TaskEntry


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)
