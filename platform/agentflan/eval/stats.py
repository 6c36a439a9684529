"""Uncertainty of the eval numbers: Wilson intervals for rates, bootstrap intervals for scores built from
several rates, and the sample size it takes to tell two arms apart.

Every rate in a report is a count over a few dozen to a few hundred prompts, so its 95% interval is often
wider than the difference between two runs. The report prints each rate as ``0.250 [0.140, 0.405] (n=40)``.

- **Wilson score interval** for a proportion ``k/n`` (Wilson 1927): unlike the normal approximation it stays
  inside [0, 1] and is not degenerate at 0 or n, which small eval sets hit all the time.
- **Percentile bootstrap** for H_Score and the combined score: resample the replies of each case group with
  replacement (stratified, so the plain/call mix stays fixed), recompute the score, take the 2.5% and 97.5%
  quantiles. Seeded: the same replies give the same interval.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)  # 1.959964...


@dataclass(frozen=True)
class Interval:
    value: float | None
    low: float | None
    high: float | None
    n: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}

    def __str__(self) -> str:
        if self.value is None:
            return f"- (n={self.n})"
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"


def wilson(k: int, n: int, z: float = Z95) -> Interval:
    """``k`` successes of ``n`` with its Wilson score interval; ``n == 0`` gives no value."""
    if n == 0:
        return Interval(None, None, None, 0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def bootstrap(
    groups: Sequence[Sequence[object]],
    statistic: Callable[[Sequence[Sequence[object]]], float | None],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """``statistic`` of ``groups`` with a percentile interval from resampling each group with replacement."""
    value = statistic(groups)
    n = sum(len(g) for g in groups)
    if value is None or any(len(g) == 0 for g in groups):
        return Interval(value, None, None, n)
    rng = random.Random(seed)
    draws = []
    for _ in range(n_boot):
        resampled = [[g[rng.randrange(len(g))] for _ in range(len(g))] for g in groups]
        s = statistic(resampled)
        if s is not None:
            draws.append(s)
    draws.sort()
    tail = (1 - level) / 2
    low = draws[min(len(draws) - 1, int(math.floor(tail * len(draws))))]
    high = draws[min(len(draws) - 1, int(math.ceil((1 - tail) * len(draws))) - 1)]
    return Interval(value, low, high, n)


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t interval of the mean of ``values`` (seeds of one arm); None under two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    half = _t_quantile(1 - (1 - level) / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def _t_quantile(p: float, dof: int) -> float:
    """Student-t quantile (scipy-free): exact table for few degrees of freedom, normal beyond."""
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
    if abs(p - 0.975) < 1e-9 and dof in table:
        return table[dof]
    # Cornish-Fisher expansion around the normal quantile: accurate to ~1e-3 for dof >= 10.
    z = NormalDist().inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    return z + g1 / dof + g2 / dof**2


def prompts_to_separate(p1: float, p2: float, power: float = 0.8, alpha: float = 0.05) -> int:
    """Prompts per arm for a two-sided two-proportion z-test at ``alpha`` to detect ``p1`` vs ``p2`` with
    ``power``: how big an eval set must be before a difference of that size means anything."""
    za, zb = NormalDist().inv_cdf(1 - alpha / 2), NormalDist().inv_cdf(power)
    return math.ceil((za + zb) ** 2 * (p1 * (1 - p1) + p2 * (1 - p2)) / (p1 - p2) ** 2)
