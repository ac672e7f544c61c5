"""What the command line, as the application, sets that the library leaves alone (a Python caller keeps its
own settings): Optuna's INFO lines ("A new study created in RDB ...", "Using an existing study ...") are
noise beside autotune's bars and tables, so the commands that open a study show only its warnings.

autotune's own messages reach stderr through ``autotune.logs.to_stderr``, installed by ``cli_errors``.
"""

from __future__ import annotations


def quiet_optuna() -> None:
    """Optuna's logging at WARNING. It imports optuna: only the commands that open a study call it
    (``autotune --help`` and ``autotune validate`` import no optuna)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
