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

_TOL = 1e-12


@dataclass(frozen=True)
class SimplexMap:
    domains: tuple[str, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    role: tuple[str, ...]
    floors: dict[str, float]

    @classmethod
    def from_space(cls, space) -> SimplexMap:  # space: autotune.spec.SearchSpace
        names = tuple(space.domains)
        return cls(domains=names,
                   lo=tuple(space.bounds(n).min for n in names),
                   hi=tuple(space.bounds(n).max for n in names),
                   role=tuple(space.domains[n].role for n in names),
                   floors=dict(space.mixture.floors))

    @property
    def dims(self) -> int:
        return len(self.domains) - 1

    def interval(self, i: int, fixed: list[float]) -> tuple[float, float]:
        """Feasible [a, b] for share i, given shares 0..i-1 fixed to ``fixed``."""
        k = len(self.domains)
        mass = 1.0 - sum(fixed)
        others = range(i + 1, k)
        roles = set(self.role)
        deficit = {r: max(0.0, self.floors.get(r, 0.0) - sum(w for j, w in enumerate(fixed) if self.role[j] == r))
                   for r in roles}
        lo_o = {r: sum(self.lo[j] for j in others if self.role[j] == r) for r in roles}
        hi_o = {r: sum(self.hi[j] for j in others if self.role[j] == r) for r in roles}
        ri = self.role[i]
        need_other_roles = sum(max(lo_o[r], deficit[r]) for r in roles if r != ri)
        a = max(self.lo[i], mass - sum(hi_o.values()), deficit[ri] - hi_o[ri])
        b = min(self.hi[i], mass - lo_o[ri] - need_other_roles)
        if a > b + 1e-9:
            raise ValueError(f"no feasible share for {self.domains[i]!r}: [{a:.6g}, {b:.6g}]")
        return a, max(a, b)

    def to_weights(self, u: list[float]) -> dict[str, float]:
        if len(u) != self.dims:
            raise ValueError(f"expected {self.dims} coordinates, got {len(u)}")
        k = len(self.domains)
        fixed: list[float] = []
        for i in range(k - 1):
            a, b = self.interval(i, fixed)
            m = k - i  # domains still to fill, this one included
            t = 1.0 - (1.0 - min(max(u[i], 0.0), 1.0)) ** (1.0 / (m - 1))
            fixed.append(a + t * (b - a))
        fixed.append(max(0.0, 1.0 - sum(fixed)))
        return dict(zip(self.domains, fixed, strict=True))

    def to_unit(self, weights: dict[str, float]) -> list[float]:
        k = len(self.domains)
        w = [weights[n] for n in self.domains]
        u: list[float] = []
        for i in range(k - 1):
            a, b = self.interval(i, w[:i])
            m = k - i
            t = 0.5 if b - a < _TOL else min(max((w[i] - a) / (b - a), 0.0), 1.0)
            u.append(1.0 - (1.0 - t) ** (m - 1))
        return u
