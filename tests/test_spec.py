"""Search-space validation: good spaces resolve; each malformed one gets one clear message and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.cli import app
from autotune.config.space import load_space
from autotune.errors import UserError
from autotune.testing import REPO, tiny_space, write_space

runner = CliRunner()


def test_demo_space_resolves():
    space = load_space(REPO / "search_spaces" / "demo.yaml")
    assert list(space.domains) == ["math", "code", "general"]
    assert space.suite_path == REPO / "evals" / "demo.yaml"
    assert space.objective.general_floor == pytest.approx(-0.02)
    assert space.proxy.tokens == 300_000 and isinstance(space.proxy.tokens, int)
    space.check_mixture(space.mixture.prior, "prior")


def test_overrides_reach_nested_fields_and_presets():
    space = load_space(REPO / "search_spaces" / "demo.yaml",
                       ["proxy.tokens=1e5", "base_model.hidden_size=64", "search.sampler=random"])
    assert space.proxy.tokens == 100_000
    assert space.base_model.hidden_size == 64 and space.base_model.num_layers == 4  # preset kept its defaults
    assert space.search.sampler == "random"


def _mutate(data: dict, path: str, value) -> dict:
    cur = data
    keys = path.split(".")
    for k in keys[:-1]:
        cur = cur[k]
    if value is _DELETE:
        del cur[keys[-1]]
    else:
        cur[keys[-1]] = value
    return data


_DELETE = object()

# (case id, field to change, new value, text the message must contain)
MALFORMED = [
    ("unknown-domain-in-mixture", "mixture.physics", {"min": 0.1}, "mixture.physics"),
    ("bounds-cannot-reach-1", "mixture", {"math": {"max": 0.2}, "code": {"max": 0.2}, "general": {"max": 0.2}},
     "maximum shares sum to 0.6"),
    ("minimums-above-1", "mixture", {"math": {"min": 0.5}, "code": {"min": 0.4}, "general": {"min": 0.3}},
     "minimum shares sum to 1.2"),
    ("negative-tokens", "proxy.tokens", -5, "proxy.tokens"),
    ("missing-suite-file", "evals", "nowhere/suite.yaml", "suite file not found"),
    ("unknown-sampler", "search.sampler", "annealing", "search.sampler"),
    ("unknown-field", "proxy.tokenz", 5, "proxy.tokenz: unknown field"),
    ("bad-role", "domains.math.role", "targets", "domains.math.role"),
    ("bad-demo-source", "domains.math.source", "demo:physics", "demo:physics"),
    ("lr-range-reversed", "schedule.peak_lr", {"low": 1e-2, "high": 1e-3}, "low must be below high"),
    ("unknown-schedule-kind", "schedule.kind", ["wsd", "step"], "schedule.kind"),
    ("bad-constraint", "objective.subject_to", "general > 3", "subject_to must read"),
    ("prior-outside-bounds", "mixture.prior", {"math": 0.9, "code": 0.05, "general": 0.05}, "mixture.prior"),
    ("floor-above-cap", "mixture", {"general": {"max": 0.5}, "floors": {"general": 0.9}}, "mixture.floors.general"),
    ("prior-below-floor", "mixture.floors", {"general": 0.9}, "mixture.prior: general domains get 0.5, below the floor 0.9"),
    ("one-domain", "domains", {"math": {"source": "demo:math", "role": "target"}}, "at least 2 domains"),
    ("missing-proxy", "proxy", _DELETE, "proxy: required field is missing"),
    ("batch-over-budget", "proxy.tokens", 100, "below one batch"),
    ("beyond-noise-without-replicates", "objective.beyond_noise", 2.0, "needs proxy.replicates >= 2"),
    ("unknown-launcher-field", "search.launcher", {"kind": "local", "partition": "gpu"}, "unknown launcher fields"),
    ("memory-limit-not-a-size", "search.launcher", {"kind": "local", "memory_limit": "lots"},
     "search.launcher.memory_limit: 'lots' is not a size"),
    ("memory-limit-slurm", "search.launcher", {"kind": "slurm", "memory_limit": "8GiB"}, "give Slurm its own"),
    ("fsdp-with-accelerate-autocast", "search.launcher",
     {"kind": "accelerate", "num_processes": 2, "sharding": "fsdp", "mixed_precision": "bf16"}, "set proxy.precision: bf16"),
    ("fsdp-one-process", "search.launcher", {"kind": "accelerate", "num_processes": 1, "sharding": "fsdp"},
     "sharding: fsdp shards over several processes"),
]


@pytest.mark.parametrize("case,field,value,expect", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_space_exit_2_with_one_clear_line(tmp_path, case, field, value, expect):
    space = _mutate(tiny_space(), field, value)
    path = write_space(tmp_path, space)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    out = result.output.strip()
    assert str(path) in out, out  # names the file
    assert expect in out, out
    assert "Traceback" not in out


def test_bad_yaml_names_line(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("name: x\ndomains: {math: [unclosed\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "invalid YAML at line" in result.output and str(path) in result.output


def test_missing_space_file(tmp_path):
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "search space file not found" in result.output


def test_suite_errors_name_the_suite_file(tmp_path):
    space = tiny_space()
    path = write_space(tmp_path, space, {"name": "s", "task_dirs": [str(REPO / "evals/tasks/demo")],
                                         "target": [{"bpb": "physics"}], "general": [{"bpb": "general"}]})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert "suite.yaml: target[0].bpb" in result.output and "physics" in result.output


def test_unknown_lm_eval_task_is_named(tmp_path):
    suite = {"name": "s", "target": [{"task": "no_such_task_xyz"}], "general": [{"bpb": "general"}]}
    path = write_space(tmp_path, tiny_space(), suite)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "unknown lm-eval task" in result.output and "no_such_task_xyz" in result.output


def test_stock_lm_eval_task_is_accepted(tmp_path):
    suite = {"name": "s", "target": [{"task": "gsm8k", "metric": "exact_match", "filter": "strict-match"}],
             "general": [{"task": "arc_easy"}]}
    path = write_space(tmp_path, tiny_space(), suite)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output


def test_every_shipped_space_and_suite_validates():
    spaces = sorted((REPO / "search_spaces").glob("*.yaml"))
    assert spaces
    for p in spaces:
        result = runner.invoke(app, ["validate", str(p)])
        assert result.exit_code == 0, (p, result.output)
    from autotune.config.gate import load_gate_config
    from autotune.evaluate.suite import load_suite

    gate_configs = sorted((REPO / "evals").glob("*.gate.yaml"))  # `autotune gate --config`, not suites
    assert gate_configs
    for p in gate_configs:
        load_gate_config(p)
    suites = sorted(set((REPO / "evals").glob("*.yaml")) - set(gate_configs))
    assert suites
    shared = REPO.parent / "shared" / "data"
    for p in suites:
        if "shared/data" in p.read_text() and not shared.is_dir():
            continue  # a suite over ../shared/data's benchmark files: checked where that folder exists
        load_suite(p)


def test_cli_is_light_and_prints_no_traceback(tmp_path):
    """`autotune --help` and `autotune validate` import neither torch, transformers, lm_eval nor optuna."""
    bad = write_space(tmp_path, _mutate(tiny_space(), "search.sampler", "annealing"))
    code = f"""
import sys
from typer.testing import CliRunner
from autotune.cli import app
r = CliRunner()
assert r.invoke(app, ["--help"]).exit_code == 0
assert "pydantic" not in sys.modules, "--help imported pydantic"
assert r.invoke(app, ["validate", {str(REPO / 'search_spaces' / 'demo.yaml')!r}]).exit_code == 0
heavy = sorted(m for m in ("torch", "transformers", "lm_eval", "optuna") if m in sys.modules)
print("HEAVY", heavy)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    # the real console script: one line on stderr, exit 2, no traceback
    proc = subprocess.run([sys.executable, "-m", "autotune.cli", "validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "search.sampler" in proc.stderr and "annealing" in proc.stderr


def test_load_space_raises_user_error_with_parts(tmp_path):
    path = write_space(tmp_path, _mutate(tiny_space(), "proxy.seq_len", 2))
    with pytest.raises(UserError) as e:
        load_space(path)
    assert e.value.field == "proxy.seq_len" and e.value.value == 2 and Path(e.value.file) == path


def test_a_study_started_before_new_space_fields_resumes_while_they_keep_their_defaults(tmp_path):
    """Fields added to the space format later (here: context, proxy.max_epochs) are no change at their
    defaults; set explicitly, or any old field changed, the study is refused as a different space."""
    from autotune.config.space import load_space
    from autotune.errors import UserError
    from autotune.records import read_json, write_json_atomic
    from autotune.search.study import StudyPaths, check_space

    space_file = write_space(tmp_path, tiny_space("old"))
    paths = StudyPaths(tmp_path / "runs" / "old")
    check_space(paths, load_space(space_file))
    doc = read_json(paths.space_json)
    del doc["identity"]["context"], doc["identity"]["proxy"]["max_epochs"]  # as an older version wrote it
    write_json_atomic(paths.space_json, doc)
    check_space(paths, load_space(space_file))  # resumes
    with pytest.raises(UserError, match=r"different space \(changed: context\)"):
        check_space(paths, load_space(space_file, ["context.seq_len=[32, 64]"]))
    with pytest.raises(UserError, match=r"different space \(changed: proxy\)"):
        check_space(paths, load_space(space_file, ["proxy.max_epochs=2"]))
    with pytest.raises(UserError, match=r"different space \(changed: proxy\)"):
        check_space(paths, load_space(space_file, ["proxy.tokens=8192"]))
