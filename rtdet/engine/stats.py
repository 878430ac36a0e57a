"""Statistics for ``rtdet compare``: mean +- std over seeds and a paired t-test against the baseline.

Each variant is trained with the same seeds as the baseline (seed k of both shares the data order and
the augmentation stream), so seed k's difference ``d_k = variant_k - baseline_k`` is one paired
observation. With n seeds:

    mean  = sum(d) / n,   sd = sqrt(sum((d - mean)^2) / (n - 1)),   se = sd / sqrt(n)
    t     = mean / se,    CI = mean +- t_{0.975, n-1} * se,         p = 2 * P(T_{n-1} > |t|)

and the difference is **significant at 95 %** when the CI excludes 0 (equivalently p < 0.05). With one
seed there is no spread to test against: the verdict is "n/a". A paired test over seeds measures what a
user can expect from re-training; a bootstrap over validation images would only measure the noise of
one validation set for fixed weights, which is why compare uses the former (docs/compare.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PairedTest", "mean_std", "paired_t_test"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


@dataclass(frozen=True)
class PairedTest:
    """Paired difference variant - baseline over seeds."""

    n: int
    mean: float
    sd: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    confidence: float = 0.95

    @property
    def significant(self) -> bool | None:
        """True / False at the confidence level; None when it cannot be tested (fewer than 2 seeds)."""
        if self.n < 2 or math.isnan(self.ci_low):
            return None
        return self.ci_low > 0 or self.ci_high < 0

    @property
    def verdict(self) -> str:
        if self.significant is None:
            return "n/a (1 seed)" if self.n == 1 else "n/a"
        if not self.significant:
            return "not significant"
        return "better" if self.mean > 0 else "worse"


def paired_t_test(baseline: Sequence[float], variant: Sequence[float], confidence: float = 0.95) -> PairedTest:
    """Paired t-test of ``variant - baseline`` (same seeds, same order); see the module docstring."""
    from scipy import stats

    if len(baseline) != len(variant):
        raise ValueError(f"paired test needs one value per seed on both sides, got {len(baseline)} and {len(variant)}")
    d = [float(v) - float(b) for b, v in zip(baseline, variant)]
    n = len(d)
    mean, sd = mean_std(d)
    if n < 2:
        return PairedTest(n, mean, sd, float("nan"), float("nan"), float("nan"), float("nan"), confidence)
    se = sd / math.sqrt(n)
    crit = float(stats.t.ppf(0.5 + confidence / 2, n - 1))
    if se == 0.0:  # identical differences on every seed: no spread, the sign decides
        t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0 else 0.0
    else:
        t = mean / se
        p = float(2 * stats.t.sf(abs(t), n - 1))
    return PairedTest(n, mean, sd, mean - crit * se, mean + crit * se, t, p, confidence)
