"""Helpers for autotune's tests and for users' own tests (like ``optuna.testing``): not part of the tuner.

- a tiny search space that runs the whole loop in seconds on a CPU (``TINY_BASE``, ``tiny_space``,
  ``tiny_suite``, ``write_space``), the CLI in a subprocess (``run_cli``, ``study_trials``) and waits
  (``wait_for``, ``wait_until``, ``alive``);
- the evaluator's tiny real checkpoint and offline switches (``tiny_checkpoint``, ``set_offline``,
  ``demo_suite``);
- a finished synthetic study folder with known structure (``make_study``);
- published runs as ground truth (``../shared/data/anchors``, read in place): RegMix's mixture runs, an
  oracle fitted on them to benchmark samplers without training (``Oracle``, ``find_optimum``,
  ``benchmark_sampler``; ``benchmarks/search_efficiency.py``), and the Multi-Power Law schedule curves
  (``mpl_curve``, ``mpl_table``; ``benchmarks/extrapolation.py``).

Paths (``REPO``, ``DEMO_TASKS``, ``BENCHMARKS``, ``ANCHORS``) are those of a source checkout. Importing this
module is cheap: numpy and the standard library only; torch, transformers, optuna, pandas, scikit-learn
and autotune's own heavier modules are imported by the helpers that use them.
"""

from autotune.testing.anchors import (  # noqa: F401
    MPL_SIZES,
    MPL_TEST,
    MPL_TRAIN,
    OBJECTIVES,
    CvFit,
    Optimum,
    Oracle,
    RegMixRuns,
    SamplerResult,
    SamplingSpeed,
    SearchRun,
    benchmark_sampler,
    benchmark_space,
    find_optimum,
    load_regmix,
    load_regmix_split,
    make_regressor,
    mixture_distributions,
    mpl_curve,
    mpl_lrs,
    mpl_table,
    prior_params,
    rejection_sample,
    run_search,
    sampling_speed,
)
from autotune.testing.parity import lm_eval_cli_tasks  # noqa: F401
from autotune.testing.paths import ANCHORS, BENCHMARKS, DEMO_TASKS, MPL, REGMIX, REPO, SHARED_DATA  # noqa: F401
from autotune.testing.studies import (  # noqa: F401
    OFFLINE,
    SYNTHETIC_LAW,
    SYNTHETIC_SPACE,
    TINY_BASE,
    TINY_VERSION,
    alive,
    demo_suite,
    make_study,
    own_peak_rss_kib,
    run_cli,
    set_offline,
    small_bpe_tokenizer,
    study_trials,
    tiny_checkpoint,
    tiny_space,
    tiny_suite,
    wait_for,
    wait_until,
    write_space,
)
from autotune.testing.vllm import perturbed_checkpoint, server_pids, vllm_test_python  # noqa: F401
