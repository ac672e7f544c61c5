"""Hugging Face conventions (issue 16, item 5): a trial checkpoint carries HF Trainer's ``trainer_state.json``
(so it can be the base of a next study with ``schedule.start_lr: base``) and a model card; a base may be a Hub
id read from the local HF cache (the real ``snapshot_download(local_files_only=True)`` on a real cache layout),
its resolved commit part of the base's identity; models load with ``dtype=``, not the deprecated
``torch_dtype=``."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import pytest

from autotune.errors import UserError
from autotune.hashing import checkpoint_hash, hub_base_hash
from autotune.testing import run_cli, study_trials, tiny_space, tiny_suite, write_space
from autotune.testing.studies import tiny_checkpoint

COMMIT_MAIN = "a" * 40
COMMIT_V1 = "b" * 40


def hub_cache(cache: Path, repo_id: str, checkpoint: Path, refs: dict[str, str]) -> Path:
    """An HF hub cache holding ``checkpoint``'s files as ``repo_id``, laid out as ``huggingface_hub`` writes
    it: ``models--ORG--NAME/blobs/<sha256>``, ``refs/<ref>`` (a commit), ``snapshots/<commit>/<file>`` (links
    to the blobs). ``refs``: ref name -> commit; each commit's snapshot gets the same files."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    for ref, commit in refs.items():
        (repo / "refs" / ref).write_text(commit)
        snap = repo / "snapshots" / commit
        snap.mkdir(parents=True, exist_ok=True)
        for f in sorted(checkpoint.iterdir()):
            if f.is_file():
                blob = repo / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
                if not blob.exists():
                    shutil.copyfile(f, blob)
                if not (snap / f.name).exists():
                    (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    return repo


# ----------------------------------------------------------------------------------------------- dtype
def test_a_base_loads_without_the_torch_dtype_deprecation():
    import transformers

    from autotune.train.model import load_causal_lm

    ckpt = tiny_checkpoint()
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process: make this call able to warn
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    lib = transformers.utils.logging.get_logger("transformers")
    lib.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model, _ = load_causal_lm(ckpt)
    finally:
        lib.removeHandler(handler)
    assert not [r.getMessage() for r in records if "deprecated" in r.getMessage()]
    assert next(model.parameters()).dtype.is_floating_point and str(next(model.parameters()).dtype) == "torch.float32"


# ----------------------------------------------------------------------------------------------- trainer_state
def test_trainer_state_is_hf_trainers_and_gives_the_final_lr(tmp_path):
    from transformers import TrainerState

    from autotune.train.card import write_trainer_state
    from autotune.train.model import base_final_lr

    rows = [{"step": s, "lr": 1e-3 * (4 - s), "loss": 5.0 - s / 10, "tokens": 1024 * (s + 1)} for s in range(4)]
    rows.insert(2, {"step": 9, "lr": float("nan"), "loss": 1.0})  # not a logged step: left out
    path = write_trainer_state(tmp_path, rows, max_steps=4, tokens=4096, seqs_per_step=16, flops_per_token=10.0,
                               trial_name="s/abc", trial_params={"share.math": 0.5, "schedule.kind": "wsd"})
    state = TrainerState.load_from_json(str(path))  # HF's own reader: no foreign keys
    assert (state.global_step, state.max_steps, state.num_input_tokens_seen, state.train_batch_size) == (4, 4, 4096, 16)
    assert state.total_flos == 40960.0 and state.trial_params["share.math"] == 0.5
    assert [h["step"] for h in state.log_history] == [1, 2, 3, 4]  # optimizer steps done, as HF counts
    assert [h["learning_rate"] for h in state.log_history] == [r["lr"] for r in rows if r["step"] != 9]
    assert base_final_lr(tmp_path) == pytest.approx(1e-3)  # what start_lr: base reads


# ----------------------------------------------------------------------------------------------- model card
def test_the_model_card_loads_back_and_leaves_the_checkpoint_hash(tmp_path):
    from huggingface_hub import ModelCard

    from autotune.train.card import BaseInfo, CardInfo, Score, write_model_card

    ckpt = tmp_path / "checkpoint"
    shutil.copytree(tiny_checkpoint(), ckpt)
    before = checkpoint_hash(ckpt)
    info = CardInfo(study="demo", run="0123abcd", trial=7, mixture={"math": 0.52, "code": 0.14, "general": 0.34},
                    schedule={"kind": "wsd", "peak_lr": 3e-3, "start_lr": None}, seed=0, tokens=4096, seq_len=64,
                    batch_tokens=1024, base=BaseInfo(path="/cache/x", hash="beef", repo_id="acme/tiny", commit=COMMIT_MAIN),
                    suite="tiny", final_loss=5.5,
                    scores=[Score("bpb/math", "heldout-math", "bpb", 3.9), Score("demo_math_mc/acc", "demo_math_mc", "acc", 0.4, 0.11)])
    write_model_card(ckpt, CardInfo(**{**info.__dict__, "scores": []}))  # at save: no scores yet
    assert "Not evaluated yet" in ModelCard.load(ckpt / "README.md").text
    write_model_card(ckpt, info)  # after evaluation
    card = ModelCard.load(ckpt / "README.md")
    assert card.data.base_model == "acme/tiny" and card.data.library_name == "transformers"
    assert "autotune" in card.data.tags and card.data.pipeline_tag == "text-generation"
    assert {(r.metric_name, r.metric_type, r.dataset_name, r.metric_value) for r in card.data.eval_results} == {
        ("bpb/math", "bpb", "heldout-math", 3.9), ("demo_math_mc/acc", "acc", "demo_math_mc", 0.4)}
    for text in ("demo", "Optuna trial 7", "trials/0123abcd", "| math | 0.5200 |", "| code | 0.1400 |", "| peak_lr | 0.003 |",
                 "| demo_math_mc/acc | 0.4 | 0.11 |", f"acme/tiny](https://huggingface.co/acme/tiny) at commit `{COMMIT_MAIN}`"):
        assert text in card.text, text
    assert checkpoint_hash(ckpt) == before  # README.md is no checkpoint file


# ----------------------------------------------------------------------------------------------- a Hub base
def test_a_hub_id_resolves_from_the_local_cache_and_its_commit_keys_the_base(tmp_path):
    from autotune.train.model import hub_origin, resolve_hub_base

    cache = tmp_path / "hub"
    hub_cache(cache, "acme/tiny", tiny_checkpoint(), {"main": COMMIT_MAIN, "v1": COMMIT_V1})
    folder, commit = resolve_hub_base("acme/tiny", "main", cache_dir=cache)
    assert commit == COMMIT_MAIN and folder == cache / "models--acme--tiny" / "snapshots" / COMMIT_MAIN
    assert (folder / "config.json").is_symlink() and hub_origin(folder) == ("acme/tiny", COMMIT_MAIN)
    assert resolve_hub_base("acme/tiny", COMMIT_V1, cache_dir=cache)[1] == COMMIT_V1  # a commit as the revision
    v1, commit_v1 = resolve_hub_base("acme/tiny", "v1", cache_dir=cache)
    assert checkpoint_hash(v1) == checkpoint_hash(folder)  # the same files...
    assert hub_base_hash(v1, "acme/tiny", commit_v1) != hub_base_hash(folder, "acme/tiny", commit)  # ...another base
    assert hub_base_hash(folder, "acme/tiny", commit) == hub_base_hash(folder, "acme/tiny", commit)
    with pytest.raises(UserError) as e:
        resolve_hub_base("acme/absent", "main", cache_dir=cache)
    msg = str(e.value)
    assert msg.startswith("base_model.hf: this Hub model") and "'acme/absent@main'" in msg
    assert "no hub is reached" in msg and "hf download acme/absent --revision main" in msg
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        resolve_hub_base("acme/tiny", "v2", cache_dir=cache)  # a revision the cache does not hold


def test_a_hub_base_is_written_as_a_mapping_or_a_string(tmp_path):
    from autotune.config.run import HubBase
    from autotune.config.space import load_space

    for given, want in [("hf:acme/tiny", HubBase(hf="acme/tiny")), ("hf:acme/tiny@v1", HubBase(hf="acme/tiny", revision="v1")),
                        ({"hf": "acme/tiny", "revision": COMMIT_V1}, HubBase(hf="acme/tiny", revision=COMMIT_V1))]:
        assert load_space(write_space(tmp_path, tiny_space(base_model=given))).base_model == want
    for given, field in [({"hf": "acme/bad name"}, "base_model.hf"), ("hf:acme/tiny@", "base_model.revision"), ("hf:", "base_model.hf"),
                         ({"hf": "acme/tiny", "revision": "a b"}, "base_model.revision"),
                         ({"hf": "acme/tiny", "revison": "v1"}, "base_model.revison")]:
        path = write_space(tmp_path, tiny_space(base_model=given))
        with pytest.raises(UserError) as e:
            load_space(path)
        assert str(e.value).startswith(f"{path}: {field}: "), str(e.value)


@pytest.mark.slow
def test_a_hub_model_not_in_the_cache_stops_the_search_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    space = write_space(tmp_path, tiny_space("nohub", trials=1, base_model="hf:acme/absent@v3"))
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{space}: base_model.hf: this Hub model (revision) is not in the local Hugging Face cache" in proc.stderr
    assert "(got 'acme/absent@v3')" in proc.stderr and "hf download acme/absent --revision v3" in proc.stderr


# ----------------------------------------------------------------------------------------------- the whole loop
@pytest.mark.slow
def test_a_trial_checkpoint_from_a_hub_base_is_the_base_of_the_next_study(tmp_path, monkeypatch):
    """Study A trains from a Hub model in the local cache; its trial checkpoint carries trainer_state.json and a
    card with the scores; study B trains from that checkpoint with start_lr: base, re-warming from A's final LR."""
    import optuna
    from huggingface_hub import ModelCard
    from transformers import TrainerState

    cache = tmp_path / "hub"
    hub_cache(cache, "acme/tiny", tiny_checkpoint(), {"main": COMMIT_MAIN})
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    suite = tiny_suite(limit=5)
    schedule = {"kind": "wsd", "peak_lr": 5e-3, "warmup_fraction": 0.25, "decay_fraction": 0.5, "final_lr_ratio": 0.1}
    a = write_space(tmp_path / "a", tiny_space("hub_a", trials=1, base_model="hf:acme/tiny", schedule=schedule), suite)
    proc = run_cli("search", str(a), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root = tmp_path / "runs" / "hub_a"
    prep = json.loads((root / "prepare" / "result.json").read_text())
    snapshot = cache / "models--acme--tiny" / "snapshots" / COMMIT_MAIN
    assert Path(prep["base"]) == snapshot and prep["base_hash"] == hub_base_hash(snapshot, "acme/tiny", COMMIT_MAIN)
    (trial,) = study_trials(tmp_path, "hub_a")
    assert trial.state == optuna.trial.TrialState.COMPLETE
    run = root / trial.user_attrs["run_dir"]
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    result = json.loads((run / "result.json").read_text())
    ckpt = run / "checkpoint"

    state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    assert state.global_step == state.max_steps == len(log) == 4
    assert [h["learning_rate"] for h in state.log_history] == [e["lr"] for e in log]
    assert [h["loss"] for h in state.log_history] == [e["loss"] for e in log]
    assert state.num_input_tokens_seen == result["train"]["tokens"] == 4096
    final_lr = log[-1]["lr"]
    assert final_lr > 0

    card = ModelCard.load(ckpt / "README.md")
    assert card.data.base_model == "acme/tiny" and card.data.library_name == "transformers" and "autotune" in card.data.tags
    assert {r.metric_name: r.metric_value for r in card.data.eval_results} == pytest.approx(result["metrics"])
    mixture = trial.user_attrs["proposal"]["mixture"]
    for text in ("hub_a", f"Optuna trial {trial.number}", f"trials/{run.name}", COMMIT_MAIN,
                 *(f"| {d} | {s:.4f} |" for d, s in mixture.items())):
        assert text in card.text, text

    b_space = tiny_space("hub_b", trials=1, base_model=str(ckpt), schedule={**schedule, "start_lr": "base"})
    proc = run_cli("search", str(write_space(tmp_path / "b", b_space, suite)), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    root_b = tmp_path / "runs" / "hub_b"
    assert json.loads((root_b / "prepare" / "result.json").read_text())["base_final_lr"] == pytest.approx(final_lr)
    (trial_b,) = study_trials(tmp_path, "hub_b")
    log_b = [json.loads(x) for x in (root_b / trial_b.user_attrs["run_dir"] / "train_log.jsonl").read_text().splitlines()]
    assert log_b[0]["lr"] == pytest.approx(final_lr)  # re-warmed from where study A's run ended
    card_b = ModelCard.load(root_b / trial_b.user_attrs["run_dir"] / "checkpoint" / "README.md")
    assert card_b.data.base_model is None and str(ckpt) in card_b.text  # a local base: named in the body only
