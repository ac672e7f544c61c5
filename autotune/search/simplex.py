"""Mixture weights on the simplex, within per-domain bounds and per-role floors, from a unit cube.

A sampler proposes ``u`` in [0, 1]^(K-1); ``SimplexMap.to_weights`` turns it into shares that sum to 1,
respect ``min <= w_i <= max`` and ``sum of a role's shares >= floor``, for any number of domains, with
no rejection loop. Domains are filled in order; each share is placed inside the exact interval that
keeps the rest feasible (computed in closed form: roles are disjoint and only carry floors), through the
inverse CDF of Beta(1, m-1), the marginal of a uniform Dirichlet over the m domains still to fill, so that
the unconstrained case maps the uniform cube to the uniform simplex (stick-breaking).
``to_unit`` inverts it (used to enqueue a prior mixture as a trial).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_TOL = 1e-12


@dataclass(frozen=True)
class SimplexMap:
    domains: tuple[str, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    role: tuple[str, ...]
    floors: dict[str, float]

    @classmethod
    def from_space(cls, space) -> SimplexMap:  # space: autotune.config.space.SearchSpace
        names = tuple(space.domains)
        return cls(domains=names,
                   lo=tuple(space.bounds(n).min for n in names),
                   hi=tuple(space.bounds(n).max for n in names),
                   role=tuple(space.domains[n].role for n in names),
                   floors=dict(space.mixture.floors))

    @property
    def dims(self) -> int:
        return len(self.domains) - 1

    def _intervals(self, i: int, fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Feasible [a, b] for share i of each row, given the rows' shares 0..i-1 in ``fixed`` [N, i]."""
        k = len(self.domains)
        role = np.array(self.role)
        lo, hi = np.array(self.lo), np.array(self.hi)
        mass = 1.0 - fixed.sum(axis=1)
        others = np.arange(k) > i
        ri = self.role[i]
        # the rest must absorb mass - w_i within their bounds, and each role's floor; roles are disjoint
        need_other = np.zeros(len(fixed))
        a = np.maximum(self.lo[i], mass - hi[others].sum())
        own_lo = 0.0
        for r in set(self.role):
            in_r = role == r
            deficit = np.maximum(0.0, self.floors.get(r, 0.0) - fixed[:, in_r[:i]].sum(axis=1))
            lo_o, hi_o = lo[others & in_r].sum(), hi[others & in_r].sum()
            if r == ri:
                a = np.maximum(a, deficit - hi_o)
                own_lo = lo_o
            else:
                need_other += np.maximum(lo_o, deficit)
        b = np.minimum(self.hi[i], mass - own_lo - need_other)
        if np.any(a > b + 1e-9):
            bad = int(np.argmax(a - b))
            raise ValueError(f"no feasible share for {self.domains[i]!r}: [{a[bad]:.6g}, {b[bad]:.6g}]")
        return a, np.maximum(a, b)

    def to_weights_batch(self, u: np.ndarray) -> np.ndarray:
        """Rows of ``u`` in [0, 1]^(K-1) -> rows of shares [N, K] (vectorised over rows)."""
        u = np.clip(np.atleast_2d(np.asarray(u, dtype=float)), 0.0, 1.0)
        n, k = len(u), len(self.domains)
        if u.shape[1] != self.dims:
            raise ValueError(f"expected {self.dims} coordinates, got {u.shape[1]}")
        w = np.zeros((n, k))
        for i in range(k - 1):
            a, b = self._intervals(i, w[:, :i])
            m = k - i  # domains still to fill, this one included
            t = 1.0 - (1.0 - u[:, i]) ** (1.0 / (m - 1))
            w[:, i] = a + t * (b - a)
        w[:, -1] = np.maximum(0.0, 1.0 - w[:, :-1].sum(axis=1))
        return w

    def to_weights(self, u: list[float]) -> dict[str, float]:
        return dict(zip(self.domains, (float(x) for x in self.to_weights_batch([u])[0]), strict=True))

    def to_unit(self, weights: dict[str, float]) -> list[float]:
        k = len(self.domains)
        w = np.array([[weights[n] for n in self.domains]], dtype=float)
        u: list[float] = []
        for i in range(k - 1):
            a, b = (float(x[0]) for x in self._intervals(i, w[:, :i]))
            m = k - i
            t = 0.5 if b - a < _TOL else min(max((w[0, i] - a) / (b - a), 0.0), 1.0)
            u.append(1.0 - (1.0 - t) ** (m - 1))
        return u
