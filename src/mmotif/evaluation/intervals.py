"""Intervals of evaluation results: mean ± s.e., Wilson's interval for success rates, and
how many episodes a target half-width takes. Plain math, shared by `evaluate` and the report."""

from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054     # the two-sided 95% quantile of the standard normal
TARGET_HALF_WIDTH = 0.03    # ±3 points: the paper's scale (about 1,000 episodes)


def mean_se(values) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for fewer than two values)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
    return float(v.mean()), se


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% with the default z).

    It is the set of rates p whose test |p̂ - p| <= z·sqrt(p(1-p)/n) passes: centred on p̂ pulled
    towards 1/2, inside [0, 1], and not of zero width at 0 or n successes (p̂ ± z·s.e. is both)."""
    if n <= 0:
        return math.nan, math.nan
    p, z2 = successes / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def episodes_for_half_width(half_width: float = TARGET_HALF_WIDTH, rate: float = 0.5) -> int:
    """Episodes for a 95% interval of ±half_width at `rate` (0.5: the widest case)."""
    return math.ceil(Z95 * Z95 * rate * (1 - rate) / half_width ** 2)


def interval95(values, unit: str) -> dict:
    """The 95% interval of per-episode values: Wilson's for 0/1 successes, mean ± 1.96 s.e. for counts."""
    v = [float(x) for x in values]
    if unit == "rate":
        low, high = wilson_interval(sum(v), len(v))
    else:
        mean, se = mean_se(v)
        low, high = mean - Z95 * se, mean + Z95 * se
    return {"low": low, "high": high, "half_width": (high - low) / 2}
