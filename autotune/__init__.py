"""autotune: evaluation-driven mid-training auto-tuner for LLMs.

Data flows one way: spec -> controller -> launcher -> trainer -> evaluator -> objective -> controller.
Heavy libraries (torch, transformers, lm_eval, optuna) are imported only where they are used.
"""

__version__ = "0.1.0"
