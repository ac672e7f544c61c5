"""The evaluator on a real tiny checkpoint and real lm-eval tasks (the demo's, local data, offline):
continuous and chance-corrected metrics, per-sample logs, the result cache and its key, `autotune eval`
(table, JSON, exit codes), clear errors for a missing vLLM and for metrics lm-eval would fetch from the hub."""

from __future__ import annotations

import json
import math
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from autotune.errors import UserError
from autotune.evaluate.backends import Checkpoint, InMemoryModel
from autotune.evaluate.harness import EvalOptions, run_suite
from autotune.evaluate.suite import load_suite
from autotune.testing import DEMO_TASKS, demo_suite, set_offline, tiny_checkpoint

set_offline()


@pytest.fixture(scope="module")
def ckpt():
    return tiny_checkpoint()


def write_suite(folder, suite: dict):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "suite.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return load_suite(path), path


def test_scores_continuous_metrics_and_samples(ckpt, tmp_path):
    suite, _ = write_suite(tmp_path, demo_suite(limit=20))
    cache = tmp_path / "cache"
    r = run_suite(Checkpoint(ckpt), suite, out_dir=tmp_path / "out", options=EvalOptions(cache_dir=cache))
    m = r.metrics
    assert set(m) == {e.key for e in suite.entries}
    assert 0 <= m["demo_math_mc/acc"] <= 1 and 0 < m["demo_math_mc/gold_prob"] < 1
    assert m["demo_math_mc/gold_logprob"] < 0 and m["demo_math_mc/gold_bpb"] > 0
    # Jensen: the mean of probabilities is at least exp(mean log-probability)
    assert m["demo_math_mc/gold_prob"] >= math.exp(m["demo_math_mc/gold_logprob"]) - 1e-12
    # four choices: chance 1/4
    assert m["demo_math_mc/acc:chance"] == pytest.approx((m["demo_math_mc/acc"] - 0.25) / 0.75)
    assert r.stderr["demo_math_mc/acc"] > 0 and "demo_math_mc/gold_logprob" in r.stderr

    # the continuous metrics recomputed by hand from lm-eval's per-sample log
    rows = [json.loads(x) for x in (tmp_path / "out" / "samples" / "demo_math_mc.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    lps = []
    for s in rows:
        lls = [r_[0] for r_ in s["filtered_resps"]]
        z = math.log(sum(math.exp(x) for x in lls))
        lps.append(lls[s["target"]] - z)
    assert m["demo_math_mc/gold_logprob"] == pytest.approx(sum(lps) / len(lps), abs=1e-12)
    assert m["demo_math_mc/acc"] == pytest.approx(sum(s["acc"] for s in rows) / len(rows))

    # reproducibility record
    meta = r.meta
    assert meta["lm_eval_version"] and meta["model_hash"] and meta["batch_size"] == 16 and meta["backend"] == "hf"
    runs = list(meta["tasks"].values())
    assert len(runs) == 3  # 7 entries share 3 lm-eval runs
    assert all(t["template_hash"] and t["limit"] == 20 and t["n_shot"] == 0 and not t["cached"] for t in runs)
    assert not meta["cached"]

    # unchanged checkpoint: everything from the cache, in well under a second, same scores and samples
    t0 = time.perf_counter()
    again = run_suite(Checkpoint(ckpt), suite, out_dir=tmp_path / "out2", options=EvalOptions(cache_dir=cache))
    assert time.perf_counter() - t0 < 1.0
    assert again.meta["cached"] and again.metrics == m and again.stderr == r.stderr
    assert (tmp_path / "out2" / "samples" / "demo_math_mc.jsonl").read_text() == \
        (tmp_path / "out" / "samples" / "demo_math_mc.jsonl").read_text()


def test_in_memory_model_scores_like_its_checkpoint(ckpt, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    suite, _ = write_suite(tmp_path, demo_suite(limit=8))
    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    a = run_suite(InMemoryModel(model, tok), suite, options=EvalOptions(use_cache=False))
    b = run_suite(Checkpoint(ckpt), suite, options=EvalOptions(use_cache=False))
    assert a.metrics == pytest.approx(b.metrics, rel=1e-6)
    assert a.meta["model_hash"] != b.meta["model_hash"]  # state-dict hash vs checkpoint-file hash


def test_cache_key_covers_what_moves_scores(ckpt, tmp_path):
    one = {"name": "k", "batch_size": 16, "task_dirs": [str(DEMO_TASKS)],
           "target": [{"task": "demo_math_mc", "limit": 6}], "general": [{"task": "demo_prose_next_word", "limit": 6}]}
    suite, _ = write_suite(tmp_path / "a", one)
    opts = EvalOptions(cache_dir=tmp_path / "cache")
    run_suite(Checkpoint(ckpt), suite, options=opts)
    assert run_suite(Checkpoint(ckpt), suite, options=opts).meta["cached"]
    for i, change in enumerate([{"limit": 7}, {"num_fewshot": 1}, {"batch_size": 8}, {"seed": {"fewshot": 1}}]):
        changed = json.loads(json.dumps(one))
        per_task = "limit" in change or "num_fewshot" in change
        (changed["target"][0] if per_task else changed).update(change)
        suite2, _ = write_suite(tmp_path / str(i), changed)
        r = run_suite(Checkpoint(ckpt), suite2, options=opts)
        runs = {t["task"]: t["cached"] for t in r.meta["tasks"].values()}
        assert runs == {"demo_math_mc": False, "demo_prose_next_word": per_task}, change


def test_eval_command_table_json_and_cached_rerun(ckpt, tmp_path):
    from autotune.cli.eval import eval_command, main  # noqa: F401  (main: the module runs as a command)

    _, path = write_suite(tmp_path, demo_suite(limit=10))
    import typer

    app = typer.Typer()
    from autotune.cli.eval import eval_cmd

    app.command()(eval_cmd)
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, [str(ckpt), "--suite", str(path), "--output", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "demo_math_mc/gold_logprob" in res.output and "tiny-eval" in res.output
    doc = json.loads((out / "eval.json").read_text())
    assert doc["metrics"]["demo_math_mc/acc"] == doc["rows"][0]["value"]
    assert (out / "samples" / "demo_math_gen.jsonl").exists()

    t0 = time.perf_counter()
    code = eval_command(ckpt, path, json_out=True)
    assert code == 0 and time.perf_counter() - t0 < 1.0  # cached: no model load, no lm_eval run
    res = runner.invoke(app, [str(ckpt), "--suite", str(path), "--json"])
    again = json.loads(res.stdout)
    assert again["metrics"] == doc["metrics"] and again["meta"]["cached"]

    bad = runner.invoke(app, [str(tmp_path), "--suite", str(path)])
    assert bad.exit_code == 2 and "no config.json" in bad.output
    bad = runner.invoke(app, [str(ckpt), "--suite", str(path), "--backend", "tpu"])
    assert bad.exit_code == 2 and "--backend" in bad.output
    bpb = tmp_path / "bpb"
    _, bpb_path = write_suite(bpb, {"name": "b", "target": [{"bpb": "math"}], "general": [{"bpb": "general"}]})
    bad = runner.invoke(app, [str(ckpt), "--suite", str(bpb_path)])
    assert bad.exit_code == 2 and "target[0].bpb" in bad.output and "--space" in bad.output


def test_vllm_backend_missing_names_the_install_command(ckpt, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    monkeypatch.delenv("AUTOTUNE_VLLM_PYTHON", raising=False)
    suite, _ = write_suite(tmp_path, demo_suite(limit=2))
    with pytest.raises(UserError, match=r"backend: the vllm backend needs vLLM.*pip install 'autotune\[vllm\]'.*"
                                        r"install-vllm-cpu.sh"):
        run_suite(Checkpoint(ckpt), suite, options=EvalOptions(backend="vllm", use_cache=False))
    # vLLM in another environment: the in-process backend cannot use it, and says what to do instead
    monkeypatch.setenv("AUTOTUNE_VLLM_PYTHON", "/opt/elsewhere/bin/python")
    with pytest.raises(UserError, match=r"runs vLLM in this process.*run autotune from the vLLM environment.*vllm-server"):
        run_suite(Checkpoint(ckpt), suite, options=EvalOptions(backend="vllm", use_cache=False))
    # vllm-server: the Python it would start the server with does not exist / has no vLLM
    with pytest.raises(UserError, match=r"vllm.python: no such Python.*install-vllm-cpu.sh.*/opt/elsewhere/bin/python"):
        run_suite(Checkpoint(ckpt), suite, options=EvalOptions(backend="vllm-server", use_cache=False))
    suite, _ = write_suite(tmp_path / "s", demo_suite(limit=2, vllm={"python": sys.executable}))
    with pytest.raises(UserError, match=r"vllm.python: runs this Python, named by the suite.*--allow-code-execution"):
        run_suite(Checkpoint(ckpt), suite, options=EvalOptions(backend="vllm-server", use_cache=False))
    with pytest.raises(UserError, match=r"vllm.python: the vllm-server backend starts vLLM's server with .*which has no vLLM"):
        run_suite(Checkpoint(ckpt), suite, options=EvalOptions(backend="vllm-server", use_cache=False,
                                                               allow_code_execution=True))


def test_metric_lm_eval_would_fetch_from_the_hub_is_named(ckpt, tmp_path):
    """Offline, a metric lm-eval does not register falls through to HF `evaluate` and later fails with
    "'NoneType' object is not callable": it is caught before evaluating and named."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    cfg = yaml.safe_load((DEMO_TASKS / "demo_math_gen.yaml").read_text())
    cfg.update(task="demo_math_gen_sacre", dataset_kwargs={"data_files": {"test": str(DEMO_TASKS / "math_gen.jsonl")}},
               metric_list=[{"metric": "sacrebleu_xyz", "aggregation": "mean", "higher_is_better": True}])
    (tasks / "t.yaml").write_text(yaml.safe_dump(cfg))
    suite, _ = write_suite(tmp_path, {"name": "m", "task_dirs": ["tasks", str(DEMO_TASKS)],
                                      "target": [{"task": "demo_math_gen_sacre", "metric": "sacrebleu_xyz",
                                                  "filter": "first-number", "limit": 2}],
                                      "general": [{"task": "demo_prose_next_word", "limit": 2}]})
    with pytest.raises(UserError, match=r"target\[0\].task: task demo_math_gen_sacre: metric 'sacrebleu_xyz' is not "
                                        r"one lm-eval provides.*NoneType"):  # (a metric HF evaluate loads runs code)
        run_suite(Checkpoint(ckpt), suite, options=EvalOptions(use_cache=False, allow_code_execution=True))


def test_code_execution_task_offline_names_what_its_metric_needs(ckpt, tmp_path):
    """HumanEval with --allow-code-execution: its metric is HF `evaluate`'s code_eval, not cached offline here."""
    import importlib.util

    if importlib.util.find_spec("evaluate") is None:
        pytest.skip("HF evaluate is not installed")
    (tmp_path / "he.jsonl").write_text('{"task_id": "t/0", "prompt": "def f():\\n", "entry_point": "f", '
                                       '"canonical_solution": "  return 1\\n", "test": "def check(c): assert c() == 1"}\n')
    suite, _ = write_suite(tmp_path, {"name": "he", "target": [{"task": "humaneval", "metric": "pass_at_k",
                                                                "filter": "create_test", "limit": 1,
                                                                "data": {"files": {"test": "he.jsonl"}}}],
                                      "general": [{"task": "humaneval", "metric": "pass_at_k", "filter": "create_test",
                                                   "limit": 1, "label": "he2", "data": {"files": {"test": "he.jsonl"}}}]})
    try:
        run_suite(Checkpoint(ckpt), suite, options=EvalOptions(use_cache=False, allow_code_execution=True))
    except UserError as e:
        assert "humaneval" in str(e) and "code_eval" in str(e), str(e)
    else:  # the metric script is cached on this machine: then the task simply runs
        pass


def test_noise_floor_from_replicates():
    from autotune.evaluate.noise import beyond_noise, noise_floor

    floor = noise_floor([{"a/acc": 0.30, "bpb/math": 2.00}, {"a/acc": 0.34, "bpb/math": 2.02},
                         {"a/acc": 0.32, "bpb/math": 2.01}])
    assert floor["a/acc"].n == 3 and floor["a/acc"].spread == pytest.approx(0.04)
    assert floor["a/acc"].std == pytest.approx(0.02)
    assert floor["bpb/math"].mean == pytest.approx(2.01)
    assert beyond_noise(0.06, floor["a/acc"]) and not beyond_noise(0.05, floor["a/acc"])  # 2 * sqrt(2) * 0.02
    assert noise_floor([{"a/acc": 0.3}]) == {}
