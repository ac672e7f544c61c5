"""Run identity declared on the fields (issue 12, item 3): every field of the configs that key runs is
classified RUN / STUDY / HOW, and every key derives from the marks."""

from __future__ import annotations

from typing import Annotated

import pytest

from autotune.config.identity import (
    HOW,
    UnclassifiedField,
    only_what,
    proposal_key,
    roles,
    run_key,
    without_how,
)
from autotune.config.run import LauncherSpec, Proxy
from autotune.config.suite import TaskEntry
from autotune.records import Proposal
from autotune.train.trainer import TrainConfig


@pytest.mark.parametrize("cls", [Proxy, LauncherSpec, TaskEntry, TrainConfig])
def test_every_field_that_keys_runs_is_classified(cls):
    # a new field without RUN / RUN_UNLESS_DEFAULT / STUDY / HOW fails here (UnclassifiedField)
    assert set(roles(cls)) == set(cls.model_fields if hasattr(cls, "model_fields") else cls.__dataclass_fields__)


def test_an_unclassified_field_is_refused():
    class Grown(Proxy):
        new_knob: int = 3

    class Marked(Proxy):
        new_knob: Annotated[int, HOW] = 3

    with pytest.raises(UnclassifiedField, match="Grown.new_knob"):
        roles(Grown)
    assert roles(Marked)["new_knob"] == HOW


def test_keys_come_from_the_marks():
    p = Proxy(tokens=8192, seq_len=64, batch_tokens=1024, micro_batch_seqs=4, threads=2, rungs=[0.5, 1.0])
    # the run key of studies written before the marks: tokens, seq_len, batch_tokens, precision unless auto
    assert run_key(p) == {"tokens": 8192, "seq_len": 64, "batch_tokens": 1024}
    assert run_key(p.model_copy(update={"precision": "bf16"}))["precision"] == "bf16"
    assert run_key(p.model_copy(update={"micro_batch_seqs": 8, "compile": True})) == run_key(p)
    dumped = p.model_dump(mode="json")
    assert not {"micro_batch_seqs", "threads", "compile", "save_state_every_s"} & set(without_how(Proxy, dumped))
    assert {"rungs", "replicates", "seed", "tokens"} <= set(without_how(Proxy, dumped))
    launcher = {"kind": "slurm", "partition": "gpu", "mixed_precision": "no", "num_processes": 1}
    assert only_what(LauncherSpec, launcher) == {"mixed_precision": "no"}
    entry = TaskEntry(task="arc_easy", metric="acc_norm", weight=2, limit=10)
    assert entry.run_identity() == {"task": "arc_easy", "num_fewshot": None, "limit": 10, "data": None}


def test_one_rounding_for_proposals():
    a = Proposal(mixture={"math": 0.3, "code": 0.2, "general": 0.5}, schedule={"kind": "wsd", "peak_lr": 1e-3}, seed=0)
    b = Proposal(mixture={"math": 0.3 + 1e-12, "code": 0.2, "general": 0.5 - 1e-12},
                 schedule={"kind": "wsd", "peak_lr": 1e-3 + 1e-16}, seed=0)
    assert a.key() == b.key() == proposal_key(a.mixture, a.schedule, 0)
    assert a.key() != Proposal(mixture=a.mixture, schedule=a.schedule, seed=1).key()
    # the run-folder key of studies written before: mixture to 9 digits, schedule floats to 12, seed
    assert a.key() == {"mixture": {"code": 0.2, "general": 0.5, "math": 0.3},
                       "schedule": {"kind": "wsd", "peak_lr": 0.001}, "seed": 0}


def test_train_state_key_ignores_how_fields():
    from autotune.train.schedules import ScheduleParams

    cfg = TrainConfig(seq_len=64, seqs_per_step=4, steps=10, seed=0, schedule=ScheduleParams(kind="cosine", peak_lr=1e-3))
    again = TrainConfig(seq_len=64, seqs_per_step=4, steps=10, seed=0, schedule=ScheduleParams(kind="cosine", peak_lr=1e-3),
                        micro_batch_seqs=2, compile=True, fused_loss=False, state_every_s=5.0)
    assert cfg.run_identity() == again.run_identity()
    assert "schedule" in cfg.run_identity() and "micro_batch_seqs" not in cfg.run_identity()
    assert cfg.run_identity() != TrainConfig(seq_len=64, seqs_per_step=4, steps=10, seed=1, schedule=cfg.schedule).run_identity()


def test_suite_digest_is_unchanged_by_source_fields_added_at_their_default(tmp_path):
    """``piece_bytes`` / ``max_record_bytes`` came after studies had keyed their runs on the suite digest: at
    their defaults they are left out (the digest of an older suite file), set they count."""
    from autotune.config.identity import omitted_defaults
    from autotune.evaluate.suite import load_suite
    from autotune.testing import DEMO_TASKS

    (tmp_path / "held.jsonl").write_text('{"text": "hello world"}\n{"text": "more text"}\n')
    suite_yaml = ("name: dg\ntask_dirs: [" + str(DEMO_TASKS) + "]\ntarget:\n  - {task: demo_math_mc, metric: acc}\n"
                  "general:\n  - {bpb: general, source: {path: held.jsonl%s}}\n")
    (tmp_path / "a.yaml").write_text(suite_yaml % "")
    (tmp_path / "b.yaml").write_text(suite_yaml % ", piece_bytes: 4096")
    a, b = load_suite(tmp_path / "a.yaml", ["general"]), load_suite(tmp_path / "b.yaml", ["general"])
    dumped = a.model_dump_json(exclude=omitted_defaults(a))
    assert "piece_bytes" not in dumped and "max_record_bytes" not in dumped and "held.jsonl" in dumped
    assert "piece_bytes" in b.model_dump_json(exclude=omitted_defaults(b))
    assert a.digest() != b.digest()
