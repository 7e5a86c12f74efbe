"""Variant vs baseline suite energy over paired trials: the ratio, its interval, and whether the gap is real.

Why this statistic. A trial is one replay of the whole suite (what the competition measures
once per entry); variant and baseline trials are interleaved, so trial k of each ran close in
time and shares the machine's state (temperature, clocks, background load, drift). The
quantity compared is the suite window's energy per trial: the total the judges rank, not the
sum of per-request shares (which leaves out time with no request in flight).

The interval is a Student-t interval on the mean of the paired log ratios
``log(variant_k / baseline_k)``, exponentiated. The log makes the ratio symmetric (0.9 and
1/0.9 are equally far from 1) and turns multiplicative run-to-run noise into additive noise;
pairing removes drift shared by neighbouring trials. With the 3-10 trials a run can afford, a
bootstrap over trials would resample from a handful of values and give intervals too narrow
(its coverage falls well short of 95% at n=5); the t-interval keeps its nominal coverage for
roughly log-normal noise, which simulation confirms (tests/test_trials_sim.py, bench
trials_power). With one trial no run-to-run variation was measured: a ratio is reported but no
interval and no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

GAPS = ("lower", "higher", "not_resolved", "not_measured")


@dataclass(frozen=True)
class EnergyComparison:
    """Variant suite energy over baseline suite energy, from paired trials.

    Attributes:
        variant_j, baseline_j: each trial's suite-window energy in joules, in trial order
            (trial k of the variant is paired with trial k of the baseline).
        ratio: geometric mean of the paired ratios variant_k / baseline_k.
        ci_low, ci_high: the `confidence` t-interval of that ratio; None with one trial.
        trials: number of pairs.
        source: "measured" only when both sides' energies are measured, else "modeled".
        gap: "lower" (whole interval below 1), "higher" (whole interval above 1),
            "not_resolved" (the interval contains 1) or "not_measured" (one trial: no
            run-to-run variation was measured, so no claim is made).
        basis: what was compared; always "suite_window_per_trial".
    """

    variant_j: tuple[float, ...]
    baseline_j: tuple[float, ...]
    ratio: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    trials: int
    source: str
    gap: str
    basis: str = "suite_window_per_trial"

    @property
    def variant_mean_j(self) -> float:
        return sum(self.variant_j) / len(self.variant_j)

    @property
    def baseline_mean_j(self) -> float:
        return sum(self.baseline_j) / len(self.baseline_j)

    def describe(self) -> str:
        """One line for a person: the ratio, what its interval covers, and the verdict."""
        head = f"energy ratio {self.ratio:.3f} ({self.source}, {self.trials} trial{'s' * (self.trials != 1)})"
        if self.gap == "not_measured":
            return f"{head}: one trial measures no run-to-run variation, so no gap is claimed"
        interval = f"{self.confidence:.0%} interval over trials [{self.ci_low:.3f}, {self.ci_high:.3f}]"
        verdict = {"lower": "variant uses less", "higher": "variant uses more",
                   "not_resolved": "no gap resolved"}[self.gap]
        return f"{head}, {interval}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "variant_mean_j": self.variant_mean_j, "baseline_mean_j": self.baseline_mean_j,
                "describe": self.describe()}


def t_quantile(p: float, df: int) -> float:
    """Student-t quantile (scipy's), e.g. t_quantile(0.975, 4) = 2.776."""
    from scipy import stats  # lazy: scipy is heavy for `import harness`

    return float(stats.t.ppf(p, df))


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high): the Student-t ``confidence`` interval of the mean of ``values``.

    low and high are None with fewer than 2 values (no spread was measured).
    """
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def compare_trials(
    variant_j: Sequence[float],
    baseline_j: Sequence[float],
    *,
    variant_source: str,
    baseline_source: str,
    confidence: float = 0.95,
) -> EnergyComparison:
    """Compares paired per-trial suite energies (see the module docstring for the statistic).

    Raises:
        ValueError: unequal trial counts, no trials, an energy that is not a positive
            finite number of joules, or an unknown source.
    """
    for source in (variant_source, baseline_source):
        if source not in ("measured", "modeled"):
            raise ValueError(f"energy source must be 'measured' or 'modeled', got {source!r}")
    if len(variant_j) != len(baseline_j) or not variant_j:
        raise ValueError(f"paired trials need the same number of trials a side, got {len(variant_j)} "
                         f"and {len(baseline_j)}")
    if not all(math.isfinite(j) and j > 0 for j in (*variant_j, *baseline_j)):
        raise ValueError("trial energies must be positive, finite joules; a zero suite energy means the meter "
                         "did not count (see the window's flags)")
    logs = [math.log(v / b) for v, b in zip(variant_j, baseline_j, strict=True)]
    mean, log_low, log_high = mean_interval(logs, confidence)
    source = "measured" if variant_source == baseline_source == "measured" else "modeled"
    common = dict(variant_j=tuple(map(float, variant_j)), baseline_j=tuple(map(float, baseline_j)),
                  ratio=math.exp(mean), confidence=confidence, trials=len(logs), source=source)
    if log_low is None or log_high is None:
        return EnergyComparison(ci_low=None, ci_high=None, gap="not_measured", **common)
    low, high = math.exp(log_low), math.exp(log_high)
    gap = "lower" if high < 1.0 else "higher" if low > 1.0 else "not_resolved"
    return EnergyComparison(ci_low=low, ci_high=high, gap=gap, **common)
