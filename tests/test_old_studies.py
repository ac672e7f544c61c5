"""Studies written before the records refactor still load (issue 12, item 2).

``tests/data/study-a581dba/`` is a study folder that the code at commit a581dba wrote (tests/test_search_e2e's
three-trial demo study; checkpoints, samples and logs left out): its Optuna ``study.db``, ``summary.json``,
``space.json`` and each run's ``job.json`` / ``result.json`` / ``train_log.jsonl``. Every reader of a
finished study opens it with today's records.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from autotune.extrapolate.study_data import load_study
from autotune.records import Job, Prepared, RunResult, TrialRecord, load_trials, read_json, read_result
from autotune.report.load import load_study_data

OLD = Path(__file__).parent / "data" / "study-a581dba"


def _copy(tmp_path) -> Path:
    return Path(shutil.copytree(OLD, tmp_path / "e2e"))


def test_trials_of_an_old_study_load_from_its_storage_and_its_summary(tmp_path):
    root = _copy(tmp_path)
    from_db = load_trials(root)
    from_summary = load_trials(root, storage=False)
    assert (from_db.source, from_summary.source) == ("study.db", "summary.json")
    assert [t.number for t in from_db.records] == [t.number for t in from_summary.records] == [0, 1, 2]
    for a, b in zip(from_db.records, from_summary.records, strict=True):
        assert a.complete and b.complete
        assert (a.mixture, a.schedule, a.seed, a.target, a.general, a.run_dir) == \
               (b.mixture, b.schedule, b.seed, b.target, b.general, b.run_dir)
        assert sum(a.mixture.values()) == pytest.approx(1.0)
        assert "bpb/math" in a.metrics
    assert from_db.records[0].prior
    assert TrialRecord.from_row(from_summary.records[1].to_row()) == from_summary.records[1]


def test_job_and_result_files_of_an_old_study_read_as_records(tmp_path):
    root = _copy(tmp_path)
    for folder in sorted((root / "trials").iterdir()):
        job = Job.read(folder / "job.json")
        assert job.kind == "trial" and isinstance(job.prepared, Prepared) and job.proposal is not None
        assert job.prepared.source_hash("math") and job.prepared.base_hash
        assert Job.from_json(job.to_json()) == job
        result = read_result(folder / "result.json")
        assert isinstance(result, RunResult) and result.ok and result.train["tokens"] > 0
    base_job = Job.read(next((root / "base").iterdir()) / "job.json")
    assert base_job.proposal is None and base_job.prepared is not None
    assert read_json(root / "space.json")["identity"]["name"] == "e2e"


def test_the_report_and_extrapolation_read_an_old_study(tmp_path):
    root = _copy(tmp_path)
    data = load_study_data(root)
    assert data.trials_source == "study.db" and len(data.complete) == 3
    assert all(t.train_log for t in data.complete) and data.base
    assert data.complete[0].mixture == data.complete[0].record.mixture
    study = load_study(root)
    assert [t.number for t in study.trials] == [0, 1, 2] and study.failed == []
    assert all(study.run_path(t) is not None and (study.run_path(t) / "train_log.jsonl").exists() for t in study.trials)
