"""Whatever ``autotune validate`` accepts, every later stage must accept (issue 15, finding 15).

Each malformed input is either refused by ``validate`` (exit 2, one line naming the file and the field) or
accepted by ``autotune search --dry-run``, which builds every stage's configuration (suite, storage URL,
sampler, trainer, objective, ladder, recipe) with the study's own code, trains nothing and writes nothing.
A property test mutates the demo space and suite (wrong types, non-finite numbers, booleans for numbers,
empty and huge values, negative values, unknown keys, deleted keys); regression tests pin the cases the
probe found (a suite weight of ``.inf`` made every score NaN; ``search.trials: true`` read as 1).

Both commands run in process (typer's CliRunner) so that a hundred examples take well under a minute.
"""

from __future__ import annotations

import copy
import math
import os
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BeforeValidator, Strict
from typer.testing import CliRunner

from autotune.cli import app
from autotune.testing import REPO

pytestmark = pytest.mark.faults

runner = CliRunner()
_DELETE = object()


def _demo() -> tuple[dict, dict]:
    """The demo space and suite as mappings; the suite's task folder made absolute, the study folder local."""
    space = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    suite = yaml.safe_load((REPO / "evals" / "demo.yaml").read_text())
    space["evals"] = "suite.yaml"
    space["search"]["runs_dir"] = "runs"
    suite["task_dirs"] = [str(REPO / "evals" / "tasks" / "demo")]
    return space, suite


DEMO_SPACE, DEMO_SUITE = _demo()


def _write(folder: Path, space: dict, suite: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "suite.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def _set(doc: dict, path: tuple, value: Any) -> dict:
    doc = copy.deepcopy(doc)
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    if value is _DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return doc


def _invoke(folder: Path, *args: str):
    """The CLI in process, run from ``folder`` (the study folder, runs/, is relative to it)."""
    old = os.getcwd()
    os.chdir(folder)
    try:
        return runner.invoke(app, list(args), env={"COLUMNS": "250"})
    finally:
        os.chdir(old)


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _refused(result, path: Path, *names: str) -> str:
    """Assert ``validate`` refused the input cleanly: exit 2, one error line naming the file and a field."""
    out = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), out
    assert str(path.parent) in out, out  # names the file (the space or its suite)
    if names:
        assert any(n in out for n in names), (names, out)
    return out


def _dry_run_ok(folder: Path, space_file: Path, allow_code: bool = False) -> None:
    """Assert the dry run accepts what validate accepted, and writes nothing. ``allow_code``: validate noted
    that the suite runs code, which search (and so its dry run) accepts only with --allow-code-execution."""
    before = _files(folder)
    result = _invoke(folder, "search", str(space_file), "--dry-run", *(["--allow-code-execution"] if allow_code else []))
    assert result.exit_code == 0, (result.output, result.exception)
    assert "dry run ok" in result.output
    assert _files(folder) == before, _files(folder) - before  # no runs/, no study.db


# ----------------------------------------------------------------------------------------------- regressions
# (case, document, path, value, what the message must name)
REGRESSIONS = [
    ("suite-weight-inf", "suite", ("target", 3, "weight"), math.inf, "target[3].weight"),
    ("suite-weight-nan", "suite", ("general", 1, "weight"), math.nan, "general[1].weight"),
    ("suite-weight-huge-sum-overflows", "suite", ("target", 0, "weight"), 1e308, "target[0].weight"),
    ("suite-weight-true", "suite", ("target", 0, "weight"), True, "target[0].weight"),
    ("suite-batch-size-true", "suite", ("batch_size",), True, "batch_size"),
    ("suite-numpy-seed-over-32-bits", "suite", ("seed",), {"numpy": 2**32}, "seed.numpy"),
    ("trials-true", "space", ("search", "trials"), True, "search.trials"),
    ("tokens-true", "space", ("proxy", "tokens"), True, "proxy.tokens"),
    ("replicates-false", "space", ("proxy", "replicates"), False, "proxy.replicates"),
    ("peak-lr-nan", "space", ("schedule", "peak_lr"), math.nan, "schedule.peak_lr"),
    ("peak-lr-range-to-inf", "space", ("schedule", "peak_lr"), {"low": 1e-4, "high": math.inf, "log": True},
     "schedule.peak_lr"),
    ("log-is-a-number", "space", ("schedule", "peak_lr"), {"low": 1e-4, "high": 1e-2, "log": 1}, "schedule.peak_lr.log"),
    ("warmup-inf", "space", ("schedule", "warmup_fraction"), math.inf, "schedule.warmup_fraction"),
    ("prior-share-nan", "space", ("mixture", "prior", "math"), math.nan, "mixture.prior"),
    ("bound-nan", "space", ("mixture", "code"), {"max": math.nan}, "mixture.code.max"),
    ("extrapolate-tokens-inf", "space", ("extrapolate", "tokens"), math.inf, "extrapolate.tokens"),
    ("extrapolate-below-one-batch", "space", ("extrapolate", "tokens"), 100, "extrapolate.tokens"),
    ("available-tokens-true", "space", ("extrapolate", "available_tokens", "math"), True,
     "extrapolate.available_tokens.math"),
    ("constraint-to-infinity", "space", ("objective", "subject_to"), "general >= base - 1e999", "objective.subject_to"),
    ("proxy-seed-negative", "space", ("proxy", "seed"), -1, "proxy.seed"),
    ("search-seed-negative", "space", ("search", "seed"), -1, "search.seed"),
    ("tokens-huge", "space", ("proxy", "tokens"), 10**30, "proxy.tokens"),
    ("max-epochs-inf", "space", ("proxy", "max_epochs"), math.inf, "proxy.max_epochs"),
    ("compile-is-a-number", "space", ("proxy", "compile"), 1, "proxy.compile"),
    ("demo-lr-inf", "space", ("base_model",), {"peak_lr": math.inf}, "base_model.peak_lr"),
    ("heldout-nan", "space", ("domains", "math"), {"source": {"path": "x.jsonl", "heldout_fraction": math.nan},
                                                   "role": "target"}, "domains.math.source.heldout_fraction"),
    ("trial-timeout-inf", "space", ("search", "trial_timeout_s"), math.inf, "search.trial_timeout_s"),
]


@pytest.mark.parametrize("case,doc,path,value,field", REGRESSIONS, ids=[r[0] for r in REGRESSIONS])
def test_malformed_numbers_are_refused_naming_the_field(tmp_path, case, doc, path, value, field):
    space, suite = DEMO_SPACE, DEMO_SUITE
    if doc == "suite":
        suite = _set(suite, path, value)
    else:
        space = _set(space, path, value)
    space_file = _write(tmp_path, space, suite)
    _refused(_invoke(tmp_path, "validate", str(space_file)), space_file, field)


def test_dry_run_builds_every_stage_and_writes_nothing(tmp_path):
    space, suite = DEMO_SPACE, DEMO_SUITE
    space = _set(space, ("ladder",), {"tokens": [1.5e5, 6.0e5], "top_k": 3})
    space_file = _write(tmp_path, space, suite)
    before = _files(tmp_path)
    result = _invoke(tmp_path, "search", str(space_file), "--dry-run", "--trials", "3")
    assert result.exit_code == 0, (result.output, result.exception)
    out = result.output
    for stage in ("suite demo", "storage sqlite", "sampler gp", "trainer, prior (seed 0)", "trainer, sampled",
                  "objective", "ladder: 2 rungs", "extrapolation", "dry run ok"):
        assert stage in out, (stage, out)
    assert _files(tmp_path) == before


def test_dry_run_parses_a_storage_url_without_connecting(tmp_path):
    """A PostgreSQL URL on a closed port: the dry run parses it and imports its driver, never connects
    (a real search fails there: tests/test_bad_input.py)."""
    space_file = _write(tmp_path, *_demo())
    result = _invoke(tmp_path, "search", str(space_file), "--dry-run",
                     "--storage", "postgresql+psycopg2://alice:s3cret@127.0.0.1:1/test")
    assert result.exit_code == 0, (result.output, result.exception)
    assert "postgresql+psycopg2://alice:***@127.0.0.1:1/test (not connected)" in result.output
    assert "s3cret" not in result.output
    bad = _invoke(tmp_path, "search", str(space_file), "--dry-run", "--storage", "nodb+nodriver://x@localhost/db")
    _refused(bad, space_file, "--storage")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "search_spaces").glob("*.yaml")))
def test_every_shipped_space_dry_runs(tmp_path, name, monkeypatch):
    from autotune.testing.vllm import vllm_test_python

    if (python := vllm_test_python()) is not None:  # the vLLM environment the README's test command makes
        monkeypatch.setenv("AUTOTUNE_VLLM_PYTHON", python)
    result = _invoke(tmp_path, "validate", str(REPO / "search_spaces" / name))
    if result.exit_code != 0:
        pytest.skip(f"does not validate here (data it needs is missing?): {result.output.strip()[:200]}")
    before = _files(tmp_path)
    result = _invoke(tmp_path, "search", str(REPO / "search_spaces" / name), "--dry-run")
    if result.exit_code == 2 and "which has no vLLM" in result.output:  # as a real search: it needs vLLM
        pytest.skip("its suite runs on vllm-server and this machine has no vLLM environment")
    assert result.exit_code == 0, (result.output, result.exception)
    assert _files(tmp_path) == before


def _bare_numbers(annotation: Any) -> list[Any]:
    """``int``, ``float`` or ``bool`` in an annotation outside an ``Annotated`` (so without the checks of
    ``autotune.config.base``: ``Int``, ``Float``, ``Bool``)."""
    if annotation in (int, float, bool):
        return [annotation]
    if typing.get_origin(annotation) is typing.Annotated:
        return []
    return [b for arg in typing.get_args(annotation) for b in _bare_numbers(arg)]


def test_every_number_of_every_config_section_is_checked():
    """The class fixed at its root: each numeric field of every section a user writes is an ``Int``,
    ``Float`` or ``Bool`` of ``autotune.config.base`` (a new bare ``int`` field would read ``true`` as 1)."""
    import autotune.config.gate
    import autotune.config.space
    import autotune.config.suite  # noqa: F401
    from autotune.config.base import Spec

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    models = set(subclasses(Spec))
    assert len(models) > 20
    bare = []
    for model in models:
        for name, info in model.model_fields.items():
            checked = any(isinstance(m, BeforeValidator | Strict) for m in info.metadata)
            if not checked and _bare_numbers(info.annotation):
                bare.append(f"{model.__name__}.{name}: {info.annotation}")
    assert not bare, bare


# ----------------------------------------------------------------------------------------------- the property
def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key and list index of a document, containers and leaves alike."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_paths(v, (*prefix, k)))
    return out


def _mappings(doc: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if isinstance(doc, dict) else []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for k, v in items:
        out.extend(_mappings(v, (*prefix, k)))
    return out


BAD_VALUES = [True, False, math.inf, -math.inf, math.nan, 1e308, -1e308, 10**30, -(10**30), 2**63, -1, 0, 1e-308,
              0.5, "", "   ", "x" * 10_000, "1e999", "nan", [], {}, None, [1, 2], {"zzz": 1}, [math.nan], "demo:none"]

MUTATIONS = st.one_of(
    st.tuples(st.just("space"), st.sampled_from(_paths(DEMO_SPACE)), st.sampled_from(BAD_VALUES)),
    st.tuples(st.just("suite"), st.sampled_from(_paths(DEMO_SUITE)), st.sampled_from(BAD_VALUES)),
    st.tuples(st.just("space"), st.sampled_from(_paths(DEMO_SPACE)), st.just(_DELETE)),
    st.tuples(st.just("suite"), st.sampled_from(_paths(DEMO_SUITE)), st.just(_DELETE)),
    st.tuples(st.just("space"), st.sampled_from([(*p, "zzz_unknown") for p in _mappings(DEMO_SPACE)]),
              st.sampled_from([1, "x", None])),
    st.tuples(st.just("suite"), st.sampled_from([(*p, "zzz_unknown") for p in _mappings(DEMO_SUITE)]),
              st.sampled_from([1, "x", None])),
)


def _describe(doc: str, path: tuple, value: Any) -> str:
    shown = "<deleted>" if value is _DELETE else repr(value)[:40]
    return f"{doc}:{'.'.join(map(str, path))}={shown}"


@pytest.mark.slow  # ~45 s on 2 shared cores: 160 examples, a third of them dry-run
def test_what_validate_accepts_every_stage_accepts(tmp_path):
    """Each mutation of the demo space or suite is refused by validate (exit 2, one line naming the file
    and the field) or accepted by the dry run (exit 0, nothing written). Counts the refused ones."""
    refused: set[str] = set()
    accepted: set[str] = set()
    counter = iter(range(10**6))

    @settings(max_examples=160, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(MUTATIONS)
    def check(mutation):
        doc, path, value = mutation
        space, suite = DEMO_SPACE, DEMO_SUITE
        if doc == "suite":
            suite = _set(suite, path, value)
        else:
            space = _set(space, path, value)
        folder = tmp_path / f"ex{next(counter)}"
        space_file = _write(folder, space, suite)
        result = _invoke(folder, "validate", str(space_file))
        assert result.exit_code in (0, 2), (mutation, result.output, result.exception)
        what = _describe(doc, path, value)
        if result.exit_code == 2:
            if value is _DELETE:  # a missing key may surface where it is used (a domain named by the mixture)
                _refused(result, space_file)
            else:
                named = [str(p) for p in path if isinstance(p, str)]
                _refused(result, space_file, *named)
            refused.add(what)
        else:
            _dry_run_ok(folder, space_file, allow_code="# note:" in result.output)
            accepted.add(what)

    check()
    print(f"\nmalformed inputs refused with exit 2: {len(refused)}; accepted and dry-run ok: {len(accepted)}")
    assert len(refused) >= 60, sorted(refused)
