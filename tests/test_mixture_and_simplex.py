"""Exact per-step mixture ratios, and mixture sampling on the simplex within bounds and floors."""

import random

import numpy as np
import pytest

from autotune.data.mixture import step_counts
from autotune.search.simplex import SimplexMap


@pytest.mark.parametrize("seed", range(20))
def test_cumulative_counts_stay_within_one_sequence(seed):
    rng = random.Random(seed)
    k = rng.randint(2, 9)
    raw = [rng.random() ** 3 for _ in range(k)]
    ratios = {f"d{i}": r / sum(raw) for i, r in enumerate(raw)}
    seqs, steps = rng.randint(1, 40), rng.randint(1, 200)
    plan = step_counts(ratios, seqs, steps)
    cum = dict.fromkeys(ratios, 0)
    for t, counts in enumerate(plan, 1):
        assert sum(counts.values()) == seqs
        for n in ratios:
            assert counts[n] >= 0
            cum[n] += counts[n]
            assert abs(cum[n] - ratios[n] * seqs * t) < 1.0 + 1e-9, (n, t)


def test_counts_are_exact_when_ratios_divide_the_batch():
    plan = step_counts({"a": 0.25, "b": 0.5, "c": 0.25}, 8, 50)
    assert all(c == {"a": 2, "b": 4, "c": 2} for c in plan)


def test_batches_carry_the_planned_tokens_per_domain():
    """Count the tokens of each domain in every batch the trainer builds."""
    from autotune.train.trainer import batch_for_step

    # domain d's tokens are all equal to d's id, so a row's tokens say where it came from
    domains = {n: np.full(5000, i, dtype=np.uint16) for i, n in enumerate(["math", "code", "prose"])}
    ratios = {"math": 0.3, "code": 0.2, "prose": 0.5}
    plan = step_counts(ratios, 16, 30)
    for step, counts in enumerate(plan):
        batch, names = batch_for_step(domains, counts, 32, seed=0, step=step)
        assert batch.shape == (16, 33)
        for i, n in enumerate(["math", "code", "prose"]):
            assert int((batch == i).sum()) == counts[n] * 33
            assert names.count(n) == counts[n]
    total = {n: sum(c[n] for c in plan) for n in ratios}
    assert total == {"math": 144, "code": 96, "prose": 240}  # 480 sequences, exactly 30/20/50


def test_batches_are_reproducible_per_step():
    from autotune.train.trainer import batch_for_step

    domains = {"a": np.arange(10_000, dtype=np.uint16), "b": np.arange(10_000, dtype=np.uint16)[::-1].copy()}
    x1, _ = batch_for_step(domains, {"a": 3, "b": 5}, 16, seed=7, step=11)
    x2, _ = batch_for_step(domains, {"a": 3, "b": 5}, 16, seed=7, step=11)
    x3, _ = batch_for_step(domains, {"a": 3, "b": 5}, 16, seed=7, step=12)
    assert np.array_equal(x1, x2) and not np.array_equal(x1, x3)


def _map(k: int, rng: random.Random, floors: bool = True) -> SimplexMap:
    lo, hi, role = [], [], []
    for i in range(k):
        a = rng.uniform(0, 0.6 / k)
        lo.append(a)
        hi.append(min(1.0, a + rng.uniform(1.5 / k, 1.0)))
        role.append("general" if i % 3 == 0 else "target")
    fl = {"general": min(0.3, sum(h for h, r in zip(hi, role, strict=True) if r == "general") * 0.9)} if floors else {}
    return SimplexMap(tuple(f"d{i}" for i in range(k)), tuple(lo), tuple(hi), tuple(role), fl)


@pytest.mark.parametrize("k", [2, 3, 7, 17])
def test_simplex_map_honours_bounds_and_floors(k):
    rng = random.Random(k)
    m = _map(k, rng)
    for _ in range(300):
        u = [rng.random() for _ in range(k - 1)]
        w = m.to_weights(u)
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-9)
        for i, n in enumerate(m.domains):
            assert m.lo[i] - 1e-9 <= w[n] <= m.hi[i] + 1e-9
        gen = sum(w[n] for i, n in enumerate(m.domains) if m.role[i] == "general")
        assert gen >= m.floors.get("general", 0) - 1e-9
    # corners of the cube map inside too (no rejection, no stall)
    for corner in ([0.0] * (k - 1), [1.0] * (k - 1)):
        w = m.to_weights(corner)
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("k", [2, 3, 7, 17])
def test_simplex_map_round_trips(k):
    rng = random.Random(100 + k)
    m = _map(k, rng, floors=False)
    for _ in range(50):
        u = [rng.uniform(0.01, 0.99) for _ in range(k - 1)]
        w = m.to_weights(u)
        assert m.to_weights(m.to_unit(w)) == pytest.approx(w, abs=1e-9)


def test_unconstrained_simplex_is_uniform():
    """With no bounds the map is stick-breaking: each share's mean is 1/k, as for a uniform Dirichlet."""
    k = 4
    m = SimplexMap(tuple("abcd"), (0.0,) * k, (1.0,) * k, ("target",) * k, {})
    rng = random.Random(0)
    ws = np.array([list(m.to_weights([rng.random() for _ in range(k - 1)]).values()) for _ in range(20000)])
    assert ws.mean(axis=0) == pytest.approx([0.25] * k, abs=0.01)
    assert (ws[:, 0] > 0.5).mean() == pytest.approx((1 - 0.5) ** (k - 1), abs=0.01)  # Beta(1, k-1) tail


def test_ten_thousand_mixtures_over_17_domains_in_bounds():
    """Batch sampling: every one of 10,000 mixtures satisfies the bounds and floors (speed: benchmarks/)."""
    rng = random.Random(17)
    m = _map(17, rng)
    u = np.random.default_rng(0).random((10_000, 16))
    w = m.to_weights_batch(u)
    assert w.shape == (10_000, 17)
    assert np.allclose(w.sum(axis=1), 1.0, atol=1e-9)
    assert (w >= np.array(m.lo) - 1e-9).all() and (w <= np.array(m.hi) + 1e-9).all()
    gen = w[:, [i for i, r in enumerate(m.role) if r == "general"]].sum(axis=1)
    assert (gen >= m.floors["general"] - 1e-9).all()
    # the batch path and the one-row path agree
    assert m.to_weights(list(u[3])) == pytest.approx(dict(zip(m.domains, w[3], strict=True)))
