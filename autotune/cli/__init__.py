"""The command line: one typer app (``autotune``), thin commands over the packages.

``app`` is the console entry (``autotune = autotune.cli:app``); ``python -m autotune.cli`` runs it too.
"""

from autotune.cli.app import app, main

__all__ = ["app", "main"]
