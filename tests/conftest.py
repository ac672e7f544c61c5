"""Session fixtures: a private AUTOTUNE_HOME per test session. Helpers (the tiny search space, the CLI in a
subprocess, the evaluator's tiny checkpoint, the RegMix oracle) are in ``autotune.testing``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def autotune_home(tmp_path_factory) -> Path:
    """Caches (tokenizer, packed tokens, base model) shared by the session's tests, never the user's.

    Set AUTOTUNE_TEST_HOME to reuse a cache across sessions while developing.
    """
    home = Path(os.environ.get("AUTOTUNE_TEST_HOME") or tmp_path_factory.mktemp("autotune-home"))
    os.environ["AUTOTUNE_HOME"] = str(home)
    return home
