"""Hostile files never run code unasked (issue 15, findings 2 and 3).

A train state is read with ``torch.load(weights_only=True)``: a real pickle whose ``__reduce__`` runs a shell
command, placed in a trial's ``train_state/``, is refused with a message and the run trains afresh. A suite
that runs user code (``!function`` task code under its ``task_dirs``, a code-executing metric, a custom
``vllm.serve_command``, the suite's own ``vllm.python``, ``vllm.extra_args``, a user task's
``dataset_kwargs.trust_remote_code``) is refused by ``eval`` / ``gate`` / ``search`` (its ``--dry-run`` too) /
``ladder`` without ``--allow-code-execution``, exit 2, and its code never runs (a real ``evil.py`` or
``./evil`` that would write a marker file); lm-eval's stock tasks (its own ``utils.py`` functions) need no flag.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import yaml

from autotune.testing import REPO, run_cli, tiny_space, write_space

pytestmark = pytest.mark.faults


# ----------------------------------------------------------------------------------------------- train state
class _Hostile:
    """Unpickling this runs ``touch MARKER`` (what a planted state.pt would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_hostile_state(folder: Path, marker: Path, *, zip_format: bool) -> Path:
    """A real hostile ``state.pt``: torch's zip format (torch.save) or a bare pickle stream."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "state.pt"
    payload = {"step": 3, "key": "anything", "model": _Hostile(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    assert not marker.exists()
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch-zip", "bare-pickle"])
def test_a_hostile_pickle_in_train_state_never_runs(tmp_path, caplog, zip_format):
    """The trainer meets a planted state.pt: the marker is never created, it says why it ignores the file,
    and trains from step 0."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from autotune.train.schedules import ScheduleParams
    from autotune.train.trainer import TrainConfig, train

    marker = tmp_path / "pwned"
    state_dir = tmp_path / "train_state"
    _plant_hostile_state(state_dir, marker, zip_format=zip_format)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    import numpy as np

    domains = {"a": np.tile(np.arange(16, dtype=np.uint16), 200), "b": np.tile(np.arange(16, 32, dtype=np.uint16), 200)}
    cfg = TrainConfig(seq_len=16, seqs_per_step=4, steps=4, seed=0, state_every_steps=2,
                      schedule=ScheduleParams(kind="constant", peak_lr=1e-3))
    summary = train(model, domains, {"a": 0.5, "b": 0.5}, cfg, state_dir=state_dir)
    err = "\n".join(r.getMessage() for r in caplog.records if r.name == "autotune.train.state")  # a worker: its log
    assert not marker.exists(), "unpickling the planted train state ran its code"
    assert "ignoring" in err and str(state_dir / "state.pt") in err and "not a plain train state" in err, err
    assert summary.steps == 4 and not summary.resumed_from


def test_train_state_round_trips_under_weights_only(tmp_path):
    """What the trainer saves (weights, AdamW state with its tuples and flags, summary, tail sums) loads back
    with weights_only=True."""
    import torch

    from autotune.train.state import TrainState

    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    st = TrainState(tmp_path, "k1")
    st.save({"step": 5, "model": model.state_dict(), "optimizer": opt.state_dict(),
             "summary": {"tokens": 640, "final_loss": 2.5, "tokens_per_domain": {"a": 320, "b": 320}},
             "tail_sums": [0.5, 1.0], "tail_counts": [1.0, 2.0]})
    back = TrainState(tmp_path, "k1").load()
    assert back is not None and back["step"] == 5 and back["summary"]["tokens_per_domain"] == {"a": 320, "b": 320}
    assert torch.equal(back["model"]["weight"], model.state_dict()["weight"])
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    torch.load(tmp_path / "state.pt", weights_only=True)  # what load does: no python objects needed


def test_no_torch_load_without_weights_only():
    """Every torch.load in the package passes weights_only=True."""
    import re

    for f in (REPO / "autotune").rglob("*.py"):
        for call in re.findall(r"torch\.load\([^)]*\)", f.read_text(encoding="utf-8")):
            assert "weights_only=True" in call, (f, call)


# ----------------------------------------------------------------------------------------------- suites
EVIL_PY = """\
from pathlib import Path
Path({marker!r}).write_text("ran")


def process_docs(dataset):
    return dataset
"""


def _evil_tasks(tmp_path: Path, marker: Path, **task_over) -> Path:
    """A task folder whose task imports evil.py (which writes ``marker`` when imported) via !function."""
    tasks = tmp_path / "evil_tasks"
    tasks.mkdir()
    (tasks / "evil.py").write_text(EVIL_PY.format(marker=str(marker)))
    (tasks / "rows.jsonl").write_text("".join(f'{{"q": "{i} + 1 =", "choices": ["{i + 1}", "{i}"], "label": 0}}\n'
                                              for i in range(4)))
    task = {"task": "evil_task", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "rows.jsonl"}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{q}}",
            "doc_to_choice": "{{choices}}", "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}], **task_over}
    text = yaml.safe_dump(task, sort_keys=False)
    if "process_docs" not in task_over:
        text += "process_docs: !function evil.process_docs\n"
    (tasks / "evil.yaml").write_text(text)
    return tasks


def _suite(folder: Path, tasks: Path | None, **over) -> Path:
    entry = {"task": "evil_task" if tasks else "demo_math_mc", "metric": "acc", "limit": 4}
    suite = {"name": "evil", "batch_size": 4, "task_dirs": [str(tasks)] if tasks else [],
             "target": [entry], "general": [{**entry, "label": "again"}], **over}
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _refused(proc, suite: Path, field: str, value: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "--allow-code-execution" in proc.stderr and str(suite) in proc.stderr, proc.stderr
    assert field in proc.stderr and value in proc.stderr, proc.stderr
    assert "Traceback" not in out


@pytest.mark.slow
def test_function_task_code_needs_the_flag_in_eval_and_gate(tmp_path):
    """`!function evil.process_docs` under task_dirs: eval and gate refuse it (exit 2, marker absent); with
    --allow-code-execution eval runs it as lm-eval does (the marker appears)."""
    from autotune.testing import tiny_checkpoint

    ckpt = tiny_checkpoint()
    marker = tmp_path / "evil-ran"
    suite = _suite(tmp_path, _evil_tasks(tmp_path, marker))
    proc = run_cli("eval", str(ckpt), "--suite", str(suite), "--no-cache", cwd=tmp_path)
    _refused(proc, suite, "target[0].task", "evil.process_docs")
    assert not marker.exists()
    proc = run_cli("gate", str(ckpt), "--suite", str(suite), "--write-baseline", str(tmp_path / "b.json"),
                   cwd=tmp_path)
    _refused(proc, suite, "target[0].task", "evil.process_docs")
    assert not marker.exists() and not (tmp_path / "b.json").exists()
    proc = run_cli("eval", str(ckpt), "--suite", str(suite), "--no-cache", "--allow-code-execution", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert marker.read_text() == "ran"
    assert "not a git repository" not in proc.stderr  # lm-eval's git lookup is quiet (issue 15, #17)


def test_function_task_code_needs_the_flag_in_search(tmp_path):
    """autotune search refuses a suite with !function task code before anything starts (no run folder)."""
    marker = tmp_path / "evil-ran"
    tasks = _evil_tasks(tmp_path, marker)
    suite = yaml.safe_load(_suite(tmp_path, tasks).read_text())
    space = write_space(tmp_path, tiny_space("evil"), suite)
    proc = run_cli("validate", str(space), cwd=tmp_path)  # the flag is per run: validate only notes it
    assert proc.returncode == 0 and "note:" in proc.stdout and "--allow-code-execution" in proc.stdout, proc.stdout
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path)
    _refused(proc, tmp_path / "suite.yaml", "target[0].task", "evil.process_docs")
    assert not marker.exists() and not (tmp_path / "runs" / "evil").exists()


def test_custom_serve_command_needs_the_flag(tmp_path):
    """backend vllm-server with vllm.serve_command [sh, -c, ...]: eval, gate and search refuse before any
    server starts (no vLLM needed: nothing may start)."""
    from autotune.testing import tiny_checkpoint

    marker = tmp_path / "served"
    cmd = ["sh", "-c", f"touch {marker}"]
    suite = _suite(tmp_path, None, task_dirs=[str(REPO / "evals" / "tasks" / "demo")], backend="vllm-server",
                   vllm={"serve_command": cmd})
    ckpt = tiny_checkpoint()
    proc = run_cli("eval", str(ckpt), "--suite", str(suite), "--no-cache", cwd=tmp_path)
    _refused(proc, suite, "vllm.serve_command", "sh -c")
    proc = run_cli("gate", str(ckpt), "--suite", str(suite), "--write-baseline", str(tmp_path / "b.json"), cwd=tmp_path)
    _refused(proc, suite, "vllm.serve_command", "sh -c")
    space = write_space(tmp_path / "s", tiny_space("served"), yaml.safe_load(suite.read_text()))
    proc = run_cli("search", str(space), "--quiet", cwd=tmp_path / "s")
    _refused(proc, tmp_path / "s" / "suite.yaml", "vllm.serve_command", "sh -c")
    assert not marker.exists()


def test_code_executing_metric_and_function_metric_need_the_flag(tmp_path):
    """A user task whose metric HF `evaluate` would load as a script, or a `!function` metric: refused."""
    from autotune.errors import UserError
    from autotune.evaluate.suite import load_suite, require_code_permission

    marker = tmp_path / "never"
    tasks = _evil_tasks(tmp_path, marker, process_docs=None,
                        metric_list=[{"metric": "acc"},
                                     {"metric": "./my_metric.py", "aggregation": "mean", "higher_is_better": True}])
    suite = load_suite(_suite(tmp_path, tasks))
    with pytest.raises(UserError, match=r"target\[0\].task.*my_metric.py \(a code-executing metric.*--allow-code-execution"):
        require_code_permission(suite, False)
    require_code_permission(suite, True)
    (tasks / "evil.yaml").write_text((tasks / "evil.yaml").read_text().replace(
        "metric: ./my_metric.py", "metric: !function evil.process_docs"))
    suite = load_suite(tmp_path / "suite.yaml")
    with pytest.raises(UserError, match=r"evil.process_docs.*--allow-code-execution"):
        require_code_permission(suite, False)
    assert not marker.exists()


def test_custom_group_members_with_function_code_need_the_flag(tmp_path):
    """A custom group is refused when one of its member tasks (found under task_dirs) runs !function code."""
    from autotune.errors import UserError
    from autotune.evaluate.suite import load_suite, require_code_permission

    tasks = _evil_tasks(tmp_path, tmp_path / "never")
    (tasks / "group.yaml").write_text(yaml.safe_dump({"group": "evil_group", "task": ["evil_task"]}))
    suite_file = _suite(tmp_path, tasks)
    suite_file.write_text(suite_file.read_text().replace("task: evil_task", "task: evil_group", 1))
    with pytest.raises(UserError, match=r"evil_group.*evil.process_docs"):
        require_code_permission(load_suite(suite_file), False)


def test_stock_tasks_and_shipped_suites_need_no_flag(tmp_path):
    """lm-eval's stock tasks are the library's code: hellaswag's `!function utils.process_docs` needs no flag,
    nor does any suite shipped in evals/ (the gate's CI example runs without the flag)."""
    from autotune.evaluate.suite import load_suite, require_code_permission
    from autotune.evaluate.taskdefs import stock_index

    assert "hellaswag" in stock_index()
    suite = yaml.safe_load(_suite(tmp_path, None).read_text())
    suite.update(task_dirs=[], target=[{"task": "hellaswag", "metric": "acc"}], general=[{"task": "hellaswag", "label": "again"}])
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    require_code_permission(load_suite(tmp_path / "suite.yaml"), False)
    for f in sorted((REPO / "evals").glob("*.yaml")):
        if yaml.safe_load(f.read_text()).get("name") is None:
            continue  # a gate config, not a suite
        require_code_permission(load_suite(f), False)


# ----------------------------------------------------------------------------------------------- vllm.python & co
def _evil_python(folder: Path, marker: Path) -> Path:
    """A real executable ``./evil`` that touches ``marker`` when anything runs it (as a suite's vllm.python)."""
    evil = folder / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\n")
    evil.chmod(0o755)
    return evil


def test_a_suite_vllm_python_needs_the_flag_everywhere(tmp_path):
    """`backend: vllm-server, vllm: {python: ./evil}` (a pull request's suite): eval, gate, search, its
    --dry-run and ladder refuse it before anything runs the suite's Python (exit 2 naming the suite file, the
    field and the value; the marker never appears); with --allow-code-execution it is run (the marker appears:
    ./evil has no vLLM, so the run then stops with that message)."""
    from autotune.testing import tiny_checkpoint

    marker = tmp_path / "evil-ran"
    _evil_python(tmp_path, marker)
    suite = _suite(tmp_path, None, task_dirs=[str(REPO / "evals" / "tasks" / "demo")], backend="vllm-server",
                   vllm={"python": "./evil"})
    ckpt = tiny_checkpoint()
    proc = run_cli("eval", str(ckpt), "--suite", str(suite), "--no-cache", cwd=tmp_path)
    _refused(proc, suite, "vllm.python", "./evil")
    proc = run_cli("gate", str(ckpt), "--suite", str(suite), "--write-baseline", str(tmp_path / "b.json"), cwd=tmp_path)
    _refused(proc, suite, "vllm.python", "./evil")
    baseline = tmp_path / "base.json"  # a baseline file: its backend is compared before any evaluation
    baseline.write_text('{"format": "autotune-gate-baseline/1", "suite": {"name": "evil"}, "backend": {}, "entries": {}}')
    proc = run_cli("gate", str(ckpt), "--suite", str(suite), "--baseline", str(baseline), cwd=tmp_path)
    _refused(proc, suite, "vllm.python", "./evil")
    space = write_space(tmp_path, tiny_space("evilpy"), yaml.safe_load(suite.read_text()))
    for args in (["search", str(space), "--quiet"], ["search", str(space), "--dry-run"], ["ladder", str(space)]):
        proc = run_cli(*args, cwd=tmp_path)
        _refused(proc, suite, "vllm.python", "./evil")
    assert not marker.exists(), "the suite's vllm.python ran without --allow-code-execution"
    assert not (tmp_path / "runs" / "evilpy").exists()
    proc = run_cli("search", str(space), "--dry-run", "--allow-code-execution", cwd=tmp_path)
    assert marker.exists(), proc.stdout + proc.stderr  # allowed: the suite's Python was asked for its vLLM
    assert proc.returncode == 2 and "has no vLLM" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    marker.unlink()
    proc = run_cli("eval", str(ckpt), "--suite", str(suite), "--no-cache", "--allow-code-execution", cwd=tmp_path)
    assert marker.exists() and "has no vLLM" in proc.stderr, proc.stdout + proc.stderr


def test_the_users_own_vllm_python_setting_needs_no_flag(tmp_path, monkeypatch):
    """$AUTOTUNE_VLLM_PYTHON is the user's setting, not the suite's: a vllm-server suite without vllm.python
    needs no flag (as evals/smollm2_math.yaml)."""
    from autotune.evaluate.suite import code_uses, load_suite

    monkeypatch.setenv("AUTOTUNE_VLLM_PYTHON", str(_evil_python(tmp_path, tmp_path / "never")))
    suite = load_suite(_suite(tmp_path, None, task_dirs=[str(REPO / "evals" / "tasks" / "demo")],
                              backend="vllm-server"))
    assert code_uses(suite) == []
    assert code_uses(load_suite(REPO / "evals" / "smollm2_math.yaml")) == []


@pytest.mark.parametrize("extra", [["--trust-remote-code"], ["--worker-extension-cls", "evil.Ext"]])
def test_vllm_extra_args_need_the_flag(tmp_path, extra):
    """Server flags the suite adds (`--trust-remote-code`, another `--worker-extension-cls`) run code the
    suite names: refused without the flag, naming vllm.extra_args and its value."""
    from autotune.errors import UserError
    from autotune.evaluate.suite import load_suite, require_code_permission

    suite = load_suite(_suite(tmp_path, None, task_dirs=[str(REPO / "evals" / "tasks" / "demo")],
                              backend="vllm-server", vllm={"extra_args": extra}))
    with pytest.raises(UserError, match=r"--allow-code-execution") as e:
        require_code_permission(suite, False)
    assert e.value.field == "vllm.extra_args" and extra[0] in str(e.value.value)
    require_code_permission(suite, True)
    with pytest.raises(UserError, match=r"vllm.extra_args"):  # the backend chosen at the command line counts
        require_code_permission(load_suite(_suite(tmp_path, None, task_dirs=[str(REPO / "evals" / "tasks" / "demo")],
                                                  vllm={"extra_args": extra})), False, "vllm-server")


def test_a_user_task_with_trust_remote_code_needs_the_flag(tmp_path):
    """A custom task's `dataset_kwargs.trust_remote_code: true` lets `datasets` run the dataset's loading
    script: refused without the flag, naming the task entry."""
    from autotune.errors import UserError
    from autotune.evaluate.suite import load_suite, require_code_permission

    tasks = _evil_tasks(tmp_path, tmp_path / "never", process_docs=None,
                        dataset_kwargs={"data_files": {"test": "rows.jsonl"}, "trust_remote_code": True})
    suite = load_suite(_suite(tmp_path, tasks))
    with pytest.raises(UserError, match=r"trust_remote_code.*--allow-code-execution") as e:
        require_code_permission(suite, False)
    assert e.value.field == "target[0].task"
    require_code_permission(suite, True)


def test_dry_run_refuses_what_search_refuses(tmp_path):
    """A suite with humaneval (stock, executes model-generated code): `search --dry-run` exits 2 as `search`
    does, and passes with --allow-code-execution."""
    suite = yaml.safe_load(_suite(tmp_path, None).read_text())
    suite.update(task_dirs=[str(REPO / "evals" / "tasks" / "demo")],
                 target=[{"task": "humaneval", "metric": "pass@1", "filter": "create_test", "limit": 2}],
                 general=[{"task": "demo_math_mc", "metric": "acc", "limit": 4}])
    space = write_space(tmp_path, tiny_space("he"), suite)
    proc = run_cli("search", str(space), "--dry-run", cwd=tmp_path)
    _refused(proc, tmp_path / "suite.yaml", "target[0].task", "humaneval")
    proc = run_cli("search", str(space), "--dry-run", "--allow-code-execution", cwd=tmp_path)
    assert proc.returncode == 0 and "dry run ok" in proc.stdout, proc.stdout + proc.stderr
    assert not (tmp_path / "runs").exists()
