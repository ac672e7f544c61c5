"""Reproducible studies (issue 12, item 8) on a real Optuna SQLite storage with synthetic scores (no
training): the same space and ``search.seed`` give the same proposals in a fresh study, in another process;
two workers of one study draw different proposals; a resumed study does not repeat its first draws."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.config.space import load_space
from autotune.objective import Score
from autotune.search.controller import Controller
from autotune.testing import tiny_space, write_space

# Runs the same study loop as _proposals in a separate process (the sampler seed used to mix in the pid).
_CHILD = """
import json, sys
sys.path.insert(0, {tests!r})
from test_reproducible import _proposals
print(json.dumps(_proposals({space!r}, {study!r}, {n})))
"""


def _space_file(tmp_path, sampler: str, seed: int = 0):
    spec = tiny_space("repro", trials=8)
    spec["search"].update(sampler=sampler, seed=seed)
    return write_space(tmp_path, spec)


def _fake_score(mix: dict[str, float]) -> Score:
    target, general = mix["math"] + 0.5 * mix["code"], mix["general"] - 0.5
    return Score(target=target, general=general, values=(target,), constraint=-0.05 - general)


def _proposals(space_file: str, study_dir: str, n: int) -> list[dict]:
    """Ask and tell ``n`` trials (prior replicates first) of a study; their proposals, rounded as printed."""
    ctl = Controller(load_space(space_file), Path(study_dir))
    ctl.enqueue_prior()
    out = []
    for _ in range(n):
        asked = ctl.ask()
        out.append(json.loads(json.dumps(asked.proposal.key())))
        ctl.tell_score(asked.trial, _fake_score(asked.proposal.mixture), {})
    return out


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp"])
def test_a_fresh_study_with_the_same_seed_proposes_the_same_trials(tmp_path, sampler):
    space = _space_file(tmp_path, sampler)
    first = _proposals(str(space), str(tmp_path / "a"), 6)
    child = subprocess.run([sys.executable, "-c", _CHILD.format(tests=str(Path(__file__).parent),
                                                                 space=str(space), study=str(tmp_path / "b"), n=6)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.strip().splitlines()[-1]) == first
    assert len({json.dumps(p["mixture"], sort_keys=True) for p in first[1:]}) == 5  # searched, not repeated


def test_another_seed_proposes_other_trials(tmp_path):
    a = _proposals(str(_space_file(tmp_path / "s0", "tpe", seed=0)), str(tmp_path / "a"), 4)
    b = _proposals(str(_space_file(tmp_path / "s1", "tpe", seed=1)), str(tmp_path / "b"), 4)
    assert a[0] == b[0]  # the prior (proxy.replicates: 1) is fixed
    assert a[1]["mixture"] != b[1]["mixture"]


def test_two_workers_of_one_study_draw_different_proposals(tmp_path):
    space = load_space(_space_file(tmp_path, "tpe"))
    one, two = Controller(space, tmp_path / "study"), Controller(space, tmp_path / "study")
    one.enqueue_prior()
    drawn = []
    for _ in range(3):  # interleaved, each holding its trial while the other asks (as concurrent workers do)
        a, b = one.ask(), two.ask()
        drawn += [a.proposal.mixture, b.proposal.mixture]
        one.tell_score(a.trial, _fake_score(a.proposal.mixture), {})
        two.tell_score(b.trial, _fake_score(b.proposal.mixture), {})
    searched = [json.dumps(m, sort_keys=True) for m in drawn[1:]]
    assert len(set(searched)) == len(searched)


def test_a_resumed_study_does_not_repeat_its_first_draws(tmp_path):
    space = _space_file(tmp_path, "random")
    first = _proposals(str(space), str(tmp_path / "study"), 5)
    resumed = _proposals(str(space), str(tmp_path / "study"), 3)  # a second session of the same study
    seen = {json.dumps(p["mixture"], sort_keys=True) for p in first}
    assert not seen & {json.dumps(p["mixture"], sort_keys=True) for p in resumed}
