"""The command line's conventions (issue 16 #6): ``--version``; options with a fixed set of values typed as
choices (``--help`` lists them, a bad one exits 2 with typer's message); autotune's numeric environment
settings checked (one line naming the variable and value, exit 2, before a worker would fail every trial on
it); every study command, ``search`` included, takes a study folder or its space file; ``search`` exits 1
when no trial of the study completed. The tokenizer's own threads for a source tokenized in-process, with
the same tokens as without them (``autotune.data.prepare``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

import autotune
from autotune.cli import app
from autotune.errors import UserError
from autotune.testing import REPO, run_cli, study_trials, tiny_space, write_space

DEMO = REPO / "search_spaces" / "demo.yaml"


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``autotune ARGS`` in a subprocess (a user's console), ``env`` added to this process's."""
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300, env={**os.environ, "COLUMNS": "200", **(env or {})})


def _lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


# ----------------------------------------------------------------------------------------------- --version
def test_version_prints_autotune_and_its_libraries_without_importing_them():
    from importlib.metadata import version

    code = ("import sys\nfrom typer.testing import CliRunner\nfrom autotune.cli import app\n"
            "r = CliRunner().invoke(app, ['--version'])\nprint(r.exit_code)\nprint(r.output, end='')\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'lm_eval', 'optuna') if m in sys.modules))")
    code_, *lines, heavy = _lines(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                 check=True).stdout)
    assert code_ == "0" and heavy == "HEAVY []"
    assert lines[0] == f"autotune {autotune.__version__}" and lines[1] == f"python {sys.version.split()[0]}"
    for dist in ("torch", "transformers", "accelerate", "optuna", "lm_eval"):
        assert f"{dist.replace('_', '-')} {version(dist)}" in lines


# ----------------------------------------------------------------------------------------------- typed choices
def _invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300", **(env or {})})


def test_options_with_fixed_values_are_choices_in_help_and_refused_when_bad(tmp_path):
    from autotune.cli.eval import BackendName
    from autotune.config.suite import BACKENDS

    assert typing.get_args(BackendName) == BACKENDS  # one list of backends: the suite's
    from autotune.cli.gate import Interval
    from autotune.config.gate import Interval as ConfigInterval

    assert typing.get_args(Interval) == typing.get_args(ConfigInterval)  # one list of gate interval methods
    assert "csv|parquet" in _invoke("export", "--help").output
    for command in ("eval", "gate"):
        assert "hf|vllm|vllm-server" in _invoke(command, "--help").output
    bad = {("export", str(tmp_path), "--format", "xls"): "'xls' is not one of 'csv', 'parquet'",
           ("eval", str(tmp_path), "--suite", "s.yaml", "--backend", "vllm_server"): "'vllm_server' is not one of",
           ("gate", str(tmp_path), "--suite", "s.yaml", "--backend", "HF"): "'HF' is not one of"}
    for args, words in bad.items():
        r = _invoke(*args)
        assert r.exit_code == 2 and words in " ".join(r.output.split()), (args, r.output)
        assert "Traceback" not in r.output


def _is_choice(annotation) -> bool:
    import enum

    if typing.get_origin(annotation) is typing.Literal:
        return True
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return True
    return any(_is_choice(a) for a in typing.get_args(annotation) if a is not type(None))  # X | None


def test_no_option_lists_its_values_in_prose_instead_of_as_a_choice():
    """An option whose help spells its values as ``a | b`` (how --backend's were written before) is a choice."""
    import typer.core
    import typer.main

    group = typer.main.get_command(app)
    choices, prose = set(), []
    for name, command in group.commands.items():
        for param in command.params:
            if not isinstance(param, typer.core.TyperOption):
                continue
            if _is_choice(param.type_descriptor.annotation):
                choices.add((name, param.name))
            elif re.search(r"\b[\w-]+ \| [\w-]+\b", param.help or ""):
                prose.append((name, param.name, param.help))
    assert not prose
    assert {("export", "fmt"), ("eval", "backend"), ("gate", "backend")} <= choices


# ----------------------------------------------------------------------------------------------- env settings
BAD_SETTINGS = [("AUTOTUNE_PEAK_TFLOPS", "fast", "a number > 0"), ("AUTOTUNE_PEAK_TFLOPS", "-5", "a number > 0"),
                ("AUTOTUNE_PEAK_TFLOPS", "nan", "a number > 0"),
                ("AUTOTUNE_TOKENIZE_WORKERS", "two", "a whole number >= 1"),
                ("AUTOTUNE_TOKENIZE_WORKERS", "1.5", "a whole number >= 1"),
                ("AUTOTUNE_MEMORY_LIMIT", "8GiB", "a whole number >= 0")]


def _bad_setting_line(name: str, value: str, must: str) -> str:
    return f"error: {name}: environment variable: must be {must}; set it right or unset it (got {value!r})"


def test_a_bad_environment_setting_is_one_line_naming_it_and_exit_2():
    proc = _cli("validate", str(DEMO), env={"AUTOTUNE_PEAK_TFLOPS": "fast"})  # the console script
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    assert _lines(proc.stderr) == [_bad_setting_line("AUTOTUNE_PEAK_TFLOPS", "fast", "a number > 0")]
    for name, value, must in BAD_SETTINGS:
        r = _invoke("validate", str(DEMO), env={name: value})
        assert r.exit_code == 2 and _lines(r.output) == [_bad_setting_line(name, value, must)], r.output


def test_environment_settings_are_read_checked_where_they_are_used(monkeypatch):
    import torch

    from autotune import envvars
    from autotune.data.prepare import tokenize_workers
    from autotune.train.summary import peak_flops

    monkeypatch.setenv("AUTOTUNE_PEAK_TFLOPS", "989.5")
    assert peak_flops(torch.device("cpu")) == pytest.approx(989.5e12)
    monkeypatch.setenv("AUTOTUNE_PEAK_TFLOPS", " ")  # empty: unset
    assert peak_flops(torch.device("cpu")) is None
    monkeypatch.setenv("AUTOTUNE_PEAK_TFLOPS", "inf")
    with pytest.raises(UserError, match="AUTOTUNE_PEAK_TFLOPS"):  # in a worker: the trial's reason names it
        peak_flops(torch.device("cpu"))
    monkeypatch.setenv("AUTOTUNE_TOKENIZE_WORKERS", "2.0")
    assert tokenize_workers(10) == 2
    monkeypatch.setenv("AUTOTUNE_MEMORY_LIMIT", "1.5e9")
    assert envvars.memory_limit() == 1_500_000_000
    monkeypatch.delenv("AUTOTUNE_MEMORY_LIMIT")
    assert envvars.memory_limit() == 0


# ----------------------------------------------------------------------------------------------- study or space
def _started_study(tmp_path: Path) -> tuple[Path, Path]:
    """A study folder as ``autotune search`` starts it (space.json + space.yaml) and no trials yet."""
    from autotune.config.space import load_space
    from autotune.search.study import StudyPaths, check_space, study_dir

    spec = tiny_space("conv", search={"sampler": "tpe", "trials": 2, "storage": "sqlite",
                                      "runs_dir": str(tmp_path / "runs")})
    path = write_space(tmp_path / "spaces", spec)
    space = load_space(path)
    check_space(StudyPaths(study_dir(space)), space)
    return path, study_dir(space)


def test_every_study_command_takes_a_study_folder_or_its_space_file(tmp_path):
    """search (its dry run: what a resumed search builds), export, ladder and extrapolate reach the same study
    from either argument (status and report: tests/test_cli.py)."""
    space_file, folder = _started_study(tmp_path)
    for arg in (space_file, folder):
        r = _invoke("search", str(arg), "--dry-run")
        assert r.exit_code == 0 and "dry run ok" in r.output and str(folder / "study.db") in r.output, r.output
        out = tmp_path / f"export-{arg.name}"
        r = _invoke("export", str(arg), "-o", str(out))
        assert r.exit_code == 0 and (out / "trials.csv").is_file(), r.output
        r = _invoke("ladder", str(arg))  # resolved to the study's space: it has no ladder section
        assert r.exit_code == 2 and "the space has no ladder section" in r.output, r.output
        r = _invoke("extrapolate", str(arg), "--tokens", "1e9")  # resolved to the study folder: no trials yet
        assert r.exit_code == 2 and f"{folder / 'summary.json'}: summary.json not found" in r.output, r.output


# ----------------------------------------------------------------------------------------------- no trial completed
@pytest.mark.slow
def test_search_exits_1_when_no_trial_completed_and_again_when_resumed_from_its_folder(tmp_path):
    """Every trial diverges (peak LR 1e6): the study is done but has no scores; search says so in its last
    line (how many, why, where the log is) and exits 1, from the space file and from the study folder."""
    space = tiny_space("allfail", trials=2, schedule={"kind": "constant", "peak_lr": 1.0e6, "warmup_fraction": 0.0})
    proc = run_cli("search", str(write_space(tmp_path, space)), "--quiet", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    last = _lines(proc.stderr)[-1]
    root = tmp_path / "runs" / "allfail"
    assert last.startswith("error: no trial of study allfail completed (2 ended without scores; all of them: "
                           "diverged: loss is"), last
    assert "worker.log" in last and f"autotune status {root}" in last
    trials = study_trials(tmp_path, "allfail")
    assert len(trials) == 2
    assert str(root / trials[0].user_attrs["run_dir"] / "worker.log") in last  # a log that is there
    assert (root / trials[0].user_attrs["run_dir"] / "worker.log").is_file()
    resumed = run_cli("search", str(root), "--quiet", cwd=tmp_path)  # the study folder: its budget is spent
    assert resumed.returncode == 1 and "no trial of study allfail completed" in resumed.stderr, resumed.stderr
    assert len(study_trials(tmp_path, "allfail")) == 2


# ----------------------------------------------------------------------------------------------- tokenizer threads
def test_a_source_tokenized_in_process_uses_the_tokenizers_threads_with_the_same_tokens(tmp_path, monkeypatch):
    """The worker sets TOKENIZERS_PARALLELISM=false (the offline switches); a source small enough to be
    tokenized in-process turns the tokenizer's threads on around each batch (benchmarks/tokenizer_parallelism.py)
    and writes the same bytes as without them, leaving the variable as it found it."""
    import json
    import random

    from autotune.config.sources import PathSource
    from autotune.data import prepare
    from autotune.testing import small_bpe_tokenizer

    rng = random.Random(0)
    words = ["the", "sum", "of", "seven", "and", "x", "def", "return", "(", ")", "=", "+", "42", "apples", "é", "日本"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 80))) for _ in range(400)]
    tok = small_bpe_tokenizer(texts, tmp_path / "tok")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    src = PathSource(path=str(data), heldout_fraction=0.1)
    monkeypatch.setattr(prepare, "CHUNK_DOCUMENTS", 37)  # 11 batches
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # as the worker has it before preparing
    seen: list[str | None] = []  # TOKENIZERS_PARALLELISM as each batch's tokenizer call finds it
    encode = prepare._Encoder.__call__

    def recording(self, *batch):
        seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
        return encode(self, *batch)

    monkeypatch.setattr(prepare._Encoder, "__call__", recording)
    packed, during = {}, {}
    for threads in (False, None):  # None: pack_domain decides (one worker: threads on)
        monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / f"home-{threads}"))
        seen.clear()
        packed[threads] = prepare.pack_domain(src, tok, where="domains.x", workers=1, threads=threads)
        during[threads] = list(seen)
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert during == {False: ["false"] * 11, None: ["true"] * 11}
    assert packed[False].manifest["tokenize"]["threads"] is False
    assert packed[None].manifest["tokenize"]["threads"] is True
    # a pool process (several workers) keeps the threads off: one process per core already. Its initializer
    # and task, called here as the pool calls them (a spawned pool would import transformers again).
    monkeypatch.setattr(prepare, "_worker_encoder", None)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")
    seen.clear()
    prepare._init_worker(str(tok), packed[None].manifest["eos_token_id"], packed[None].manifest["dtype"])
    prepare._encode_task(texts[:3], [False] * 3, [True] * 3)
    assert seen == ["false"]
    for split in ("train", "heldout"):
        before, now = (packed[t].folder / f"{split}.bin" for t in (False, None))
        assert before.stat().st_size > 0 and before.read_bytes() == now.read_bytes()
    monkeypatch.delenv("TOKENIZERS_PARALLELISM")
    with prepare.tokenizer_threads(True):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert "TOKENIZERS_PARALLELISM" not in os.environ
