"""Extrapolation: from a finished study's proxy runs to a full-scale mid-training recipe.

* ``mixture``: mixture -> metric models over the simplex, chosen per metric by K-fold cross-validation;
* ``optimize``: the predicted objective maximised over the constrained simplex, bootstrap intervals;
* ``schedule``: the Multi-Power Law of loss curves across LR schedules, and the schedule choice;
* ``ladder``: scale transfer: power laws in tokens per mixture, rank agreement between ladder rungs;
* ``study_data``: reading ``runs/<study>/``;
* ``fit``: the same models and optimum on any swarm in OLMix's CSV tables (``autotune fit``);
* ``recipe``: ``build_recipe`` / ``write_recipe`` / ``load_recipe`` / ``extrapolate_study`` and the
  ``Recipe`` model of ``recipe.yaml``.

Imports stay light: numpy, pydantic and yaml here; scipy and scikit-learn inside the functions that fit.
"""

from autotune.extrapolate.recipe import (
    HARD_MAX_EPOCHS,
    WARN_EPOCHS,
    Recipe,
    build_recipe,
    extrapolate_study,
    load_recipe,
    write_recipe,
)

__all__ = ["HARD_MAX_EPOCHS", "WARN_EPOCHS", "Recipe", "build_recipe", "extrapolate_study", "load_recipe",
           "write_recipe"]
