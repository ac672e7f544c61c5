"""What a trial checkpoint carries for Hugging Face tools: ``trainer_state.json`` in HF Trainer's format and a
model card ``README.md``.

* ``write_trainer_state``: a ``transformers.TrainerState`` (``global_step``, ``max_steps``, tokens seen, FLOPs,
  ``log_history`` with each logged step's ``learning_rate`` and ``loss``), written once when the checkpoint is
  saved, from the run's train log. Its last ``learning_rate`` is the LR the run ended at, which
  ``train.model.base_final_lr`` reads: a trial checkpoint can be the base of a next study with
  ``schedule.start_lr: base``. It holds nothing from a clock, so an identical run writes an identical file
  (``trainer_state.json`` is a checkpoint file for ``autotune.hashing``: it says where a base's run ended).
* ``write_model_card``: a ``huggingface_hub.ModelCard`` (YAML front matter: ``base_model`` when the base is a
  Hub model, ``library_name: transformers``, tags, the scores as ``model-index``; body: study, trial, mixture
  shares, schedule, scores, base). Written when the checkpoint is saved and again once it is evaluated (the
  scores exist only then); ``README.md`` is not a checkpoint file, so neither changes the checkpoint's hash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.paths import write_text_atomic

TRAINER_STATE = "trainer_state.json"
MODEL_CARD = "README.md"
TAGS = ("autotune", "mid-training", "proxy-run")


def write_trainer_state(folder: Path, log_rows: list[dict[str, Any]], *, max_steps: int, tokens: int,
                        seqs_per_step: int, log_every: int = 1, flops_per_token: float = 0.0,
                        trial_name: str | None = None, trial_params: dict[str, Any] | None = None) -> Path:
    """``folder/trainer_state.json`` from the train log's rows (``{"step", "lr", "loss", "tokens"}``, step
    0-based): HF counts a log entry's ``step`` in optimizer steps done, so row ``k`` is entry ``k + 1``."""
    from transformers import TrainerState

    history = [{"step": int(r["step"]) + 1, "learning_rate": float(r["lr"]), "loss": float(r["loss"]),
                "num_input_tokens_seen": int(r.get("tokens") or 0)}
               for r in log_rows if isinstance(r.get("step"), int) and _finite(r.get("lr")) and _finite(r.get("loss"))]
    state = TrainerState(global_step=history[-1]["step"] if history else 0, max_steps=int(max_steps),
                         logging_steps=int(log_every), train_batch_size=int(seqs_per_step),
                         num_input_tokens_seen=int(tokens), total_flos=float(flops_per_token) * int(tokens),
                         log_history=history, is_hyper_param_search=trial_name is not None,
                         trial_name=trial_name, trial_params=trial_params)
    path = Path(folder) / TRAINER_STATE
    state.save_to_json(str(path))
    return path


@dataclass(frozen=True)
class BaseInfo:
    """The base a checkpoint was trained from: a Hub model (``repo_id`` at ``commit``), a folder, the demo."""

    path: str
    hash: str
    repo_id: str | None = None
    commit: str | None = None
    demo: bool = False

    def describe(self) -> str:
        if self.repo_id:
            return f"[{self.repo_id}](https://huggingface.co/{self.repo_id}) at commit `{self.commit}` (base hash `{self.hash}`)"
        if self.demo:
            return f"autotune's embedded demo base (`demo:tiny-base`), `{self.path}` (base hash `{self.hash}`)"
        return f"the local checkpoint `{self.path}` (base hash `{self.hash}`)"


@dataclass(frozen=True)
class Score:
    """One evaluated entry: its key (``task/metric``, ``bpb/domain``), what it was measured on and how."""

    key: str
    dataset: str  # the lm-eval task, or ``heldout-<domain>`` for bits-per-byte
    metric: str
    value: float
    stderr: float | None = None


@dataclass(frozen=True)
class CardInfo:
    """What a trial checkpoint's card says; ``scores`` is empty until it is evaluated."""

    study: str
    run: str  # the run folder's key (trials/<run>)
    base: BaseInfo
    mixture: dict[str, float]
    schedule: dict[str, Any]
    seed: int
    tokens: int
    seq_len: int
    batch_tokens: int
    trial: int | None = None  # the Optuna trial number, when the study gave it
    phases: list[dict[str, Any]] = field(default_factory=list)  # fixed phases before the searched mixture
    context: dict[str, Any] = field(default_factory=dict)
    final_loss: float | None = None
    suite: str | None = None
    scores: list[Score] = field(default_factory=list)


def model_card(info: CardInfo):
    """The card as a ``huggingface_hub.ModelCard``."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    name = f"{info.study}-{info.run}"
    results = [EvalResult(task_type="text-generation", dataset_type=s.dataset, dataset_name=s.dataset,
                          metric_type=s.metric, metric_value=float(s.value), metric_name=s.key)
               for s in info.scores if _finite(s.value)]
    data = ModelCardData(base_model=info.base.repo_id, library_name="transformers", pipeline_tag="text-generation",
                         tags=list(TAGS), model_name=name, eval_results=results or None)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{_body(info, name)}")


def write_model_card(folder: Path, info: CardInfo) -> Path:
    """``folder/README.md`` (written whole, through a rename: a reader never sees half a card)."""
    path = Path(folder) / MODEL_CARD
    write_text_atomic(path, str(model_card(info)))
    return path


def _body(info: CardInfo, name: str) -> str:
    trial = f"Optuna trial {info.trial}, " if info.trial is not None else ""
    lines = [f"# {name}", "",
             f"A proxy mid-training run of the study **{info.study}**, made by autotune ({trial}run folder "
             f"`trials/{info.run}`): {info.tokens:,} tokens in windows of {info.seq_len} tokens, "
             f"{info.batch_tokens:,} tokens a step, seed {info.seed}, from {info.base.describe()}.", "",
             "A proxy run is small on purpose: its scores rank mixtures and schedules against each other and "
             "against the base; it is not a model to deploy.", "",
             "## Mixture", "", "| domain | share |", "|---|---|"]
    lines += [f"| {d} | {share:.4f} |" for d, share in info.mixture.items()]
    if info.phases:
        phases = "; ".join(f"until {p['until']:g}: " + ", ".join(f"{d} {s:.4f}" for d, s in p["shares"].items())
                           for p in info.phases)
        lines += ["", f"Fixed phases first ({phases}), then this mixture to the end of the run."]
    lines += ["", "## Schedule", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in info.schedule.items() if v is not None]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in info.context.items() if v is not None]
    if info.final_loss is not None and _finite(info.final_loss):
        lines += ["", f"Final training loss: {info.final_loss:.4f}."]
    lines += ["", "## Scores", ""]
    if info.scores:
        lines += [f"Suite **{info.suite}** (lm-evaluation-harness tasks and held-out bits-per-byte; autotune's "
                  "objective compares them with the base's, in the study's report).", "",
                  "| entry | value | stderr |", "|---|---|---|"]
        lines += [f"| {s.key} | {_fmt(s.value)} | {'' if s.stderr is None else _fmt(s.stderr)} |" for s in info.scores]
    else:
        lines += ["Not evaluated yet."]
    lines += ["", "## Base", "", f"Trained from {info.base.describe()}.", ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
