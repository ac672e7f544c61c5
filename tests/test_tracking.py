"""Experiment trackers (issue 16, item 3: ``search.tracking``): accelerate's trackers in the worker (one run per
trial: training curves, rung values, final metrics; shares and schedule as its config) and one study-level run
(per trial: shares, schedule, scores), read back with the trackers' own readers: MLflow's ``MlflowClient`` on
its local file store, TensorBoard's ``EventAccumulator`` on the event files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from autotune.cli import app
from autotune.testing import run_cli, study_trials, tiny_space, write_space

runner = CliRunner()
STEPS = 4  # tiny_space: 4096 tokens in batches of 1024


def _space(tmp_path: Path, tracking, trials: int = 2) -> Path:
    spec = tiny_space("tracked", trials=trials)
    spec["proxy"]["rungs"] = [0.5, 1.0]  # one rung (step 2) before the final evaluation
    spec["search"]["tracking"] = tracking
    return write_space(tmp_path, spec)


# ----------------------------------------------------------------------------------------------- fast: config
@pytest.mark.parametrize("tracking,field,expect", [
    ({"kind": "comet"}, "search.tracking.kind", "'mlflow', 'wandb', 'tensorboard' or 'trackio' (got 'comet')"),
    ("neptune", "search.tracking.kind", "(got 'neptune')"),  # the shorthand: just the kind
    ({"kind": "tensorboard", "uri": "http://x"}, "search.tracking", "uri is MLflow's tracking URI (kind: mlflow)"),
    ({"kind": "mlflow", "every_steps": 0}, "search.tracking.every_steps", "(got 0)"),
])
def test_a_bad_tracking_section_names_file_field_and_value(tmp_path, tracking, field, expect):
    space = _space(tmp_path, tracking)
    result = runner.invoke(app, ["validate", str(space)])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert f"{space}: {field}:" in out and expect in out, out
    assert "Traceback" not in out


def test_tracking_keys_nothing_and_is_off_by_default(tmp_path):
    from autotune.config.space import load_space
    from autotune.search.study import space_identity

    plain = load_space(write_space(tmp_path / "a", tiny_space("tracked")))
    assert plain.search.tracking is None
    tracked = load_space(_space(tmp_path / "b", "mlflow"))
    assert tracked.search.tracking.kind == "mlflow"  # the shorthand: just the kind
    # a study may gain or change its tracker between sessions: the study's identity does not move
    assert space_identity(tracked) == space_identity(load_space(_space(tmp_path / "c", None)))


def test_validate_imports_no_tracker(tmp_path):
    space = _space(tmp_path, {"kind": "mlflow"})
    code = ("import sys; from typer.testing import CliRunner; from autotune.cli import app; "
            f"r = CliRunner().invoke(app, ['validate', {str(space)!r}]); assert r.exit_code == 0, r.output; "
            "bad = [m for m in ('mlflow', 'tensorboard', 'accelerate', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    proc = __import__("subprocess").run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow  # (MLflow and torch imported: ~25 s on a loaded 2-core machine)
def test_a_tracker_that_fails_after_its_start_warns_once_and_goes_quiet(tmp_path):
    """Real MLflow: the store vanishes under a started run; logging warns once, then the run is off."""
    import shutil

    from autotune.config.run import Tracking
    from autotune.search.tracking import resolve, trial_run

    spec = resolve(Tracking(kind="mlflow", uri=(tmp_path / "mlruns").as_uri()), tmp_path, "s")
    warnings: list[str] = []
    run = trial_run(spec, "s", 0, {"share.math": 0.5}, warnings.append)
    run.log({"train/loss": 1.0}, step=1)
    assert not warnings
    shutil.rmtree(tmp_path / "mlruns")
    (tmp_path / "mlruns").write_text("not a folder")  # the store is gone and cannot come back
    run.log({"train/loss": 0.9}, step=2)
    run.log({"train/loss": 0.8}, step=3)
    run.finish()
    assert len(warnings) == 1 and "search.tracking (mlflow) could not log" in warnings[0], warnings


# ----------------------------------------------------------------------------------------------- fail fast
@pytest.mark.slow  # (MLflow and torch imported: ~25 s on a loaded 2-core machine)
def test_a_tracker_that_cannot_start_stops_the_study_before_any_work(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    space = _space(tmp_path, {"kind": "mlflow", "uri": (blocker / "mlruns").as_uri()})
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr
    assert "search.tracking.kind" in err and "'mlflow'" in err and str(space) in err, err
    assert "Traceback" not in err + proc.stdout
    assert not (tmp_path / "runs" / "tracked" / "prepare").exists()  # nothing was prepared


@pytest.mark.skipif(__import__("importlib").util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_missing_tracker_package_is_named_with_its_install_command(tmp_path):
    """The study's own run starts first in ``Study.search`` (before any work): a missing package is a
    UserError naming the field, the kind and the install command (the CLI prints it, exit 2)."""
    from autotune.config.run import Tracking
    from autotune.errors import UserError
    from autotune.search.tracking import StudyRun, resolve

    spec = resolve(Tracking(kind="wandb", options={"mode": "offline"}), tmp_path, "s")
    with pytest.raises(UserError) as e:
        StudyRun(spec, "s", file="space.yaml").start()
    said = str(e.value)
    assert e.value.field == "search.tracking.kind" and e.value.value == "wandb", said
    assert "pip install wandb" in said and "space.yaml" in said, said


def test_a_finished_trial_is_read_alone_and_only_for_a_tracker(tmp_path):
    """Per finished trial the study reads that one trial from the storage when it has a tracker, and nothing
    without one (before: every trial of the study, copied, tracker or not)."""
    import optuna

    from autotune.config.run import Tracking
    from autotune.search.tracking import StudyRun, resolve

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    calls: list[str] = []

    class Reads:  # the real storage, its reads counted
        def __getattr__(self, name):
            calls.append(name)
            return getattr(study._storage, name)

    trial = optuna.Trial(study, study.trials[1]._trial_id)
    StudyRun(None, "s").log_trial_of(Reads(), trial)
    assert calls == []
    spec = resolve(Tracking(kind="tensorboard", dir=str(tmp_path / "tb")), tmp_path, "s")
    StudyRun(spec, "s").log_trial_of(Reads(), trial)  # (not started: its run logs nothing)
    assert calls == ["get_trial"]


class _Recorder:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def log(self, values, step: int) -> None:
        self.steps.append(step)


def test_the_trainers_logged_steps_and_the_trackers_filter_agree(tmp_path):
    """One rule for logged steps (``train.trainer.log_due``: the first, every n-th update done, the last),
    for the train log (``log_every``) and the tracker (``search.tracking.every_steps``) alike: a tracker sees
    the steps that both keep. One run with ``log_every`` 2 feeds two filters (every 2nd, every 3rd step);
    the worker's own case (``log_every`` 1: every step reaches the filter) is the filter alone."""
    import json

    import numpy as np
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from autotune.search.tracking import Every
    from autotune.train.schedules import ScheduleParams
    from autotune.train.trainer import TrainConfig, train

    steps = 7
    alone = _Recorder()
    for step in range(1, steps + 1):
        Every(alone, 3, steps).log({"train/loss": 1.0}, step)
    assert alone.steps == [1, 3, 6, 7]

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32))
    by2, by3 = _Recorder(), _Recorder()
    filters = (Every(by2, 2, steps), Every(by3, 3, steps))

    class Both:
        def log(self, values, step: int) -> None:
            for f in filters:
                f.log(values, step)

    cfg = TrainConfig(seq_len=8, seqs_per_step=2, steps=steps, seed=0, log_every=2,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    data = {"a": np.arange(2000, dtype=np.uint16) % 32, "b": np.arange(2000, dtype=np.uint16) % 7}
    train(model, data, {"a": 0.5, "b": 0.5}, cfg, log_path=tmp_path / "log.jsonl", tracker=Both())
    logged = [json.loads(x)["step"] + 1 for x in (tmp_path / "log.jsonl").read_text().splitlines()]  # (0-based)
    assert logged == [1, 2, 4, 6, 7]
    assert by2.steps == [1, 2, 4, 6, 7]  # (before: [7], the trainer's 1, 3, 5, 7 through a filter of 2, 4, 6)
    assert by3.steps == [1, 6, 7]


@pytest.mark.slow  # (MLflow imported: ~10 s on a loaded 2-core machine)
def test_the_mlflow_tracker_leaves_a_callers_mlflow_as_it_was(tmp_path, monkeypatch):
    """A notebook has its own tracking URI and active run, and no MLFLOW_ALLOW_FILE_STORE: a study run in a
    file store (logged, finished) leaves all three as they were, and the caller's own metric lands in its run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from autotune.config.run import Tracking
    from autotune.search.tracking import StudyRun, resolve

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    mine = f"sqlite:///{tmp_path / 'mine.db'}"
    mlflow.set_tracking_uri(mine)
    try:
        caller = mlflow.start_run(run_name="notebook")
        ours = (tmp_path / "mlruns").as_uri()
        run = StudyRun(resolve(Tracking(kind="mlflow", uri=ours, project="p"), tmp_path, "s"), "s", {"seed": 3}).start()
        assert mlflow.get_tracking_uri() == mine and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
        assert mlflow.active_run().info.run_id == caller.info.run_id
        run.run.log({"target": 0.5}, step=0)
        mlflow.log_metric("own", 1.0)
        run.finish()
        assert mlflow.get_tracking_uri() == mine and "MLFLOW_ALLOW_FILE_STORE" not in os.environ
        assert mlflow.active_run().info.run_id == caller.info.run_id
        mlflow.end_run()
        assert mlflow.active_run() is None
        assert set(MlflowClient(mine).get_run(caller.info.run_id).data.metrics) == {"own"}
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading our file store back
        client = MlflowClient(ours)
        [study] = client.search_runs([client.get_experiment_by_name("p").experiment_id])
        assert study.info.run_name == "s-study" and study.info.status == "FINISHED"
        assert study.data.metrics == {"target": 0.5} and study.data.params == {"seed": "3"}
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(None)


# ----------------------------------------------------------------------------------------------- real studies
@pytest.mark.slow
def test_a_tracked_study_in_mlflow_then_tensorboard(tmp_path):
    """Session 1 tracks 2 trials in MLflow's file store; session 2 of the same study switches to TensorBoard
    (tracking keys nothing: the study resumes) and runs a third trial; its study-level run also holds the two
    trials finished before it."""
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    space = _space(tmp_path, {"kind": "mlflow", "uri": uri, "project": "tracked-exp"})
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.number: t for t in study_trials(tmp_path, "tracked")}
    assert len(trials) == 2

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the file store back
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tracked-exp")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"tracked-trial-0", "tracked-trial-1", "tracked-study"}, set(runs)
    for n, t in trials.items():
        run = runs[f"tracked-trial-{n}"]
        assert run.info.status == "FINISHED"
        shares = t.user_attrs["proposal"]["mixture"]
        for d, share in shares.items():  # the shares, not the sampler's coordinates
            assert float(run.data.params[f"share.{d}"]) == pytest.approx(share)
        assert run.data.params["schedule.kind"] == t.user_attrs["proposal"]["schedule"]["kind"]
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1))
        for key in ("train/lr", "train/tokens", "train/tokens_per_s", "train/loss.math", "train/loss.general"):
            assert len(client.get_metric_history(run.info.run_id, key)) == STEPS, key
        assert client.get_metric_history(run.info.run_id, "train/tokens")[-1].value == STEPS * 1024
        rung = client.get_metric_history(run.info.run_id, "rung/bpb.math")
        assert [m.step for m in rung] == [2]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/bpb.math")] == [STEPS]
    study = runs["tracked-study"]
    assert study.info.status == "FINISHED" and study.data.params["sampler"] == "tpe"
    target = client.get_metric_history(study.info.run_id, "target")
    assert sorted(m.step for m in target) == [0, 1]
    for m in target:
        assert m.value == pytest.approx(trials[m.step].user_attrs["target"])
    for d in ("math", "code", "general"):
        by_step = {m.step: m.value for m in client.get_metric_history(study.info.run_id, f"share.{d}")}
        assert by_step == pytest.approx({n: t.user_attrs["proposal"]["mixture"][d] for n, t in trials.items()})

    # session 2: the same study, tracked in TensorBoard now, one more trial
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec = yaml.safe_load(space.read_text())
    spec["search"]["tracking"] = {"kind": "tensorboard", "dir": "tb"}
    spec["search"]["trials"] = 3
    space.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = {t.number: t for t in study_trials(tmp_path, "tracked")}
    assert len(trials) == 3
    tb = tmp_path / "tb"  # relative to the working directory, like runs/
    assert sorted(p.name for p in tb.iterdir()) == ["tracked-study", "tracked-trial-2"]
    trial_events = EventAccumulator(str(tb / "tracked-trial-2"))
    trial_events.Reload()
    tags = trial_events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "train/tokens_per_s", "rung/bpb.math", "eval/bpb.math"} <= set(tags), tags
    assert [e.step for e in trial_events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    study_events = EventAccumulator(str(tb / "tracked-study"))
    study_events.Reload()
    assert [e.step for e in study_events.Scalars("target")] == [0, 1, 2]  # 0 and 1 from session 1
    for e in study_events.Scalars("share.math"):
        assert e.value == pytest.approx(trials[e.step].user_attrs["proposal"]["mixture"]["math"], rel=1e-6)
