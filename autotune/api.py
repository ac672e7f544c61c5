"""What ``import autotune`` gives a notebook or a script beyond the package's own functions: a study's trials
as a pandas DataFrame, for a ``Study``, its search-space file or its folder alike.

The API sits where the CLI sits (it reads every stage's output) and is as thin: each name that ``autotune``
exports is the function the CLI command calls.

::

    import logging, autotune
    logging.basicConfig(level=logging.INFO)           # autotune logs; it never prints
    space = autotune.load_space("search_spaces/demo.yaml", ["search.trials=4"])
    study = autotune.Study(space)                     # a study that ran resumes (finished runs are reused)
    study.search()
    df = autotune.trials_dataframe(study)             # share.<domain>, schedule.<field>, target, general, ...
    autotune.extrapolate_study(study.paths.root, tokens=2e10)
    autotune.write_report(study.paths.root)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from autotune.search.study import Study


def trials_dataframe(study: Any, *, storage: str | None = None) -> pd.DataFrame:
    """Every trial of a study as a pandas DataFrame, one row a trial (by number): state, status, reason, seed,
    prior, ``target`` and ``general`` (improvements over the base model), ``feasible``, the mixture as
    ``share.<domain>`` (shares of the proxy's tokens, summing to 1), ``schedule.<field>``, and each suite
    entry's metric. The same table as ``autotune export``'s ``trials.csv``.

    ``study``: a ``Study``, a ``SearchSpace``, a search-space YAML or a study folder (``runs/<name>``), as
    the study commands take; ``storage``: the Optuna storage URL when it is not the space's. Readable while
    the study runs; reading creates nothing. Raises ``autotune.UserError`` when it names no study.
    """
    from autotune.search.export import trial_frames

    study = _study(study, storage)
    return trial_frames(study, study.controller(read_only=True))["trials"]  # a Study given to search too


def _study(study: Any, storage: str | None) -> Study:
    """A ``Study`` to read: the one given, or a read-only one of a space or of a path to a space or a folder."""
    from autotune.config.space import SearchSpace
    from autotune.search.study import Study

    if isinstance(study, Study):
        return study
    if isinstance(study, SearchSpace):
        return Study(study, storage=storage, read_only=True)
    if not isinstance(study, (str, Path)):
        raise TypeError(f"a Study, a SearchSpace, a search-space file or a study folder, not {type(study).__name__}")
    from autotune.cli.resolve import resolve_study  # light: typer and rich, never torch or optuna

    space, _ = resolve_study(Path(study))
    return Study(space, storage=storage, read_only=True)
