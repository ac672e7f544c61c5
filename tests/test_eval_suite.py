"""Suites and task definitions without running a model: loading, errors that name file / field / value, data
overrides (field mapping, conversion cache), template hashes, code-execution gating, light imports."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from autotune.config.suite import FieldMap, TaskData
from autotune.errors import UserError
from autotune.evaluate.suite import load_suite
from autotune.testing import BENCHMARKS, DEMO_TASKS, REPO


def write_suite(tmp_path, suite: dict, name: str = "suite.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def base(**over) -> dict:
    s = {"name": "s", "task_dirs": [str(DEMO_TASKS)], "target": [{"task": "demo_math_mc"}],
         "general": [{"task": "demo_prose_next_word"}]}
    s.update(over)
    return s


def test_demo_suite_loads_with_report_group():
    suite = load_suite(REPO / "evals" / "demo.yaml", ["math", "code", "general"])
    keys = [e.key for e in suite.entries]
    assert "demo_math_mc/gold_logprob" in keys and "bpb/math" in keys
    assert [e.key for e in suite.report] and all(e.key not in [t.key for t in suite.target] for e in suite.report)


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"benchmark copies not found at {BENCHMARKS} (../shared/data)")
def test_stock_offline_suite_loads():
    suite = load_suite(REPO / "evals" / "stock_offline.yaml")
    assert {e.task for e in suite.tasks} == {"gsm8k", "arc_easy", "lambada_openai"}
    assert suite.data_file("gsm8k/test.jsonl") == BENCHMARKS / "gsm8k" / "test.jsonl"


@pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"benchmark copies not found at {BENCHMARKS} (../shared/data)")
def test_smollm2_suite_loads_and_quoted_stock_task_names_are_found():
    """lm-eval's generated YAMLs quote their keys ("task": "mmlu_elementary_mathematics"): the 57 MMLU subjects
    were unknown to the stock index before it read quoted keys."""
    from autotune.evaluate.taskdefs import stock_index

    index = stock_index()
    assert index["mmlu_elementary_mathematics"]["kind"] == "task" and index["mmlu_anatomy"]["kind"] == "task"
    assert index["mmlu_stem_tasks"]["kind"] == "tag"
    suite = load_suite(REPO / "evals" / "smollm2_math.yaml", ["math", "general"])
    assert {e.task for e in suite.tasks} == {"mmlu_elementary_mathematics", "arc_easy", "arc_challenge",
                                              "lambada_openai"}


@pytest.mark.parametrize("change, field, words", [
    ({"target": [{"task": "demo_math_mc", "metrik": "acc"}]}, "target[0].metrik", "unknown field"),
    ({"target": [{"task": "demo_math_gen", "metric": "gold_logprob"}]}, "target[0].metric", "multiple_choice"),
    ({"target": [{"task": "demo_math_gen", "metric": "exact_match", "normalize": "chance"}]}, "target[0]", "normalize"),
    ({"target": [{"task": "demo_math_mc", "metric": "gold_prob", "filter": "x"}]}, "target[0]", "filter"),
    ({"target": [{"task": "demo_math_mc", "data": {"files": {"test": "nope.jsonl"}}}]}, "target[0].data.files.test",
     "data file not found"),
    ({"target": [{"task": "nope_task_xyz"}]}, "target[0].task", "unknown lm-eval task"),
    ({"target": [{"task": "demo_math_mc", "metric": "nan"}]}, "target[0].metric", "reports the metrics ['acc', 'acc_norm']"),
    ({"target": [{"task": "demo_math_gen", "metric": "exact_match", "filter": "nope"}]}, "target[0].filter",
     "reports the filters ['first-number']"),
    ({"target": [{"task": "arc_easy", "metric": "exact_match"}]}, "target[0].metric", "reports the metrics"),
    ({"backend": "vllm-serve"}, "backend", "Input should be"),
    ({"report": [{"task": "demo_math_mc"}, {"task": "demo_math_mc"}]}, None, "appear twice"),
    ({"general": [{"bpb": "general", "source": "prose"}]}, "general[0]", "demo:"),
])
def test_suite_errors_name_file_field_and_value(tmp_path, change, field, words):
    path = write_suite(tmp_path, base(**change))
    with pytest.raises(UserError) as e:
        load_suite(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and words in msg, msg
    if field:
        assert f": {field}" in msg, msg


def test_data_override_needs_the_splits_the_task_reads(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "label": 0}\n')
    path = write_suite(tmp_path, base(target=[{"task": "demo_math_mc", "data": {"files": {"train": "d.jsonl"}}}]))
    with pytest.raises(UserError, match=r"target\[0\].data.files: demo_math_mc reads the split\(s\) \['test'\]"):
        load_suite(path)
    path = write_suite(tmp_path, base(target=[{"task": "demo_math_mc", "data": {"files": {"test": "d.jsonl"}}}]))
    assert load_suite(path).tasks[0].data.files == {"test": "d.jsonl"}


def test_field_mapping_converts_arc_layout(tmp_path, monkeypatch):
    from autotune.config.suite import Suite
    from autotune.evaluate.taskdata import data_files

    monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / "home"))
    rec = {"id": "Q1", "question": {"stem": "Which?", "choices": [{"text": "red", "label": "A"}, {"text": "blue", "label": "B"}]},
           "answerKey": "B"}
    (tmp_path / "arc.jsonl.gz").write_bytes(__import__("gzip").compress((json.dumps(rec) + "\n").encode()))
    data = TaskData(files={"test": "arc.jsonl.gz"}, fields={
        "id": "id", "question": "question.stem", "choices.text": "question.choices[*].text",
        "choices.label": "question.choices[*].label", "answerKey": "answerKey",
        "gold": FieldMap(path="answerKey", map={"A": 0, "B": 1}), "first": "question.choices[0].text"})
    suite = Suite(name="s", target=[{"task": "x"}], general=[{"task": "y"}], source_file=str(tmp_path / "s.yaml"))
    files = data_files(data, suite, where="target[0]")
    out = [json.loads(x) for x in open(files["test"])]
    assert out == [{"id": "Q1", "question": "Which?", "choices": {"text": ["red", "blue"], "label": ["A", "B"]},
                    "answerKey": "B", "gold": 1, "first": "red"}]
    assert data_files(data, suite, where="target[0]") == files  # converted once, then reused

    bad = TaskData(files={"test": "arc.jsonl.gz"}, fields={"question": "question.body"})
    with pytest.raises(UserError, match=r"target\[0\].data.fields.question.*record 0 has no 'question.body'"):
        data_files(bad, suite, where="target[0]")


def test_template_hash_follows_task_file_data_and_shots(tmp_path):
    from autotune.evaluate.taskdefs import resolve_task, template_hash

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for f in ("demo_math_mc.yaml", "math_mc.jsonl"):
        (tasks / f).write_bytes((DEMO_TASKS / f).read_bytes())
    suite = load_suite(write_suite(tmp_path, base(task_dirs=["tasks"], general=[{"bpb": "general"}])))
    entry = suite.target[0]

    def h(e=entry):
        return template_hash(resolve_task(e, suite), e, suite)

    first = h()
    assert h() == first
    assert h(entry.model_copy(update={"num_fewshot": 2})) != first
    with open(tasks / "math_mc.jsonl", "a") as f:
        f.write('{"answer": "1", "choices": ["1", "2"], "label": 0, "question": "Q: 0 + 1 = ?\\nA:"}\n')
    assert h() != first
    second = h()
    (tasks / "demo_math_mc.yaml").write_text((tasks / "demo_math_mc.yaml").read_text().replace('" "', '"  "'))
    assert h() != second


def test_code_execution_tasks_need_the_flag(tmp_path):
    """HumanEval runs model-generated code: refused (exit 2) before any model is loaded, unless allowed."""
    from autotune.evaluate.backends import Checkpoint
    from autotune.evaluate.harness import EvalOptions, run_suite

    path = write_suite(tmp_path, base(target=[{"task": "humaneval", "metric": "pass@1", "filter": "create_test",
                                               "data": {"files": {"test": str(tmp_path / "he.jsonl")}}}]))
    (tmp_path / "he.jsonl").write_text("{}\n")
    suite = load_suite(path)
    with pytest.raises(UserError, match=r"target\[0\].task: humaneval executes model-generated code.*--allow-code-execution"):
        run_suite(Checkpoint(tmp_path / "no-model-needed"), suite, options=EvalOptions(use_cache=False))


def test_validate_path_imports_neither_torch_nor_lm_eval():
    code = ("import sys; from autotune.evaluate.suite import load_suite; "
            f"load_suite({str(REPO / 'evals' / 'demo.yaml')!r}); "
            "bad = [m for m in ('torch', 'lm_eval', 'transformers', 'datasets') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
