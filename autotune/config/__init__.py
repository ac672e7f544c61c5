"""Configuration: YAML files -> frozen, validated records (pydantic).

* ``space``: the search space (``SearchSpace`` and its sections) and ``load_space``;
Nothing here imports torch, transformers, lm_eval or optuna: ``autotune validate`` stays light.
"""
