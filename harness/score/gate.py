"""The quality gate: variant quality over baseline quality, with paired bootstrap intervals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.score.energy import EnergyComparison
from harness.score.quality import QualityReport

RULES = ("mean", "every_task")
VERDICTS = ("pass", "fail", "uncertain")


@dataclass(frozen=True)
class Ratio:
    """A variant/baseline ratio with a percentile-bootstrap confidence interval.

    Attributes:
        name: what is compared ("overall" or a task family).
        point: the ratio on the data as observed; 0/0 counts as 1.0 and x/0 as +inf
            (written as null in JSON files).
        ci_low, ci_high: bounds of the central `confidence` interval over `n_boot`
            bootstrap replicates.
        paired: True when both runs were resampled with the same item indices.
        n_variant, n_baseline: items (or repeats) each side contributed.
    """

    name: str
    point: float
    ci_low: float
    ci_high: float
    confidence: float
    n_boot: int
    paired: bool
    n_variant: int
    n_baseline: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Gate:
    """Whether a variant keeps enough of the baseline's quality.

    Attributes:
        rule: "mean" (the overall, macro ratio decides) or "every_task" (each family's does).
        threshold: the ratio a variant must reach (the competition keeps >= 0.80).
        verdict: "pass" (lower CI bound >= threshold), "fail" (upper bound < threshold)
            or "uncertain"; under "every_task" all families must pass, and one failing
            family fails the gate.
        point_pass: whether the point estimate(s) alone meet the threshold, as a judge
            scoring this one run of the suite would see it.
        overall, per_task: quality ratios (variant / baseline) with CIs.
        energy: the energy comparison, when energies were given.
    """

    rule: str
    threshold: float
    metric: str
    verdict: str
    point_pass: bool
    overall: Ratio
    per_task: Mapping[str, Ratio]
    seed: int
    energy: EnergyComparison | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "threshold": self.threshold,
            "metric": self.metric,
            "verdict": self.verdict,
            "point_pass": self.point_pass,
            "overall": self.overall.to_dict(),
            "per_task": {task: ratio.to_dict() for task, ratio in self.per_task.items()},
            "seed": self.seed,
            "energy": None if self.energy is None else self.energy.to_dict(),
            "notes": list(self.notes),
        }


def _safe_ratio(numerator, denominator):
    """numerator / denominator, elementwise; 0/0 is 1.0 (nothing to lose), x/0 is +inf."""
    import numpy as np

    num, den = np.asarray(numerator, dtype=float), np.asarray(denominator, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    out = np.where((den == 0) & (num == 0), 1.0, out)
    return np.where((den == 0) & (num > 0), np.inf, out)


def _interval(replicates, confidence: float) -> tuple[float, float]:
    import numpy as np

    tail = (1.0 - confidence) / 2.0 * 100.0
    # "nearest" picks actual replicates: interpolating would turn an infinite ratio (a
    # replicate whose baseline scored 0) into NaN.
    low, high = np.percentile(replicates, [tail, 100.0 - tail], method="nearest")
    return float(low), float(high)


# Ratios are compared with the threshold allowing for float rounding: with 40-item suites,
# scores such as 0.6 / 0.75 land on 0.7999999999999999, which is exactly 80% in counts (24 of
# 40 against 30 of 40) and must pass. A relative 1e-9 is far below any difference one item makes.
THRESHOLD_RTOL = 1e-9


def meets(value: float, threshold: float) -> bool:
    """value >= threshold, counting a value within float rounding of it as equal."""
    return value >= threshold * (1.0 - THRESHOLD_RTOL)


def _verdict(ratio: Ratio, threshold: float) -> str:
    if meets(ratio.ci_low, threshold):
        return "pass"
    if not meets(ratio.ci_high, threshold):
        return "fail"
    return "uncertain"


def _task_scores(report: QualityReport) -> dict[str, dict[str, float]]:
    by_task: dict[str, dict[str, float]] = {}
    for item in report.items:
        by_task.setdefault(item.task, {})[item.id] = item.score
    return by_task


def _resampled_means(rng, variant: dict[str, float], baseline: dict[str, float], n_boot: int, paired: bool):
    """Bootstrap replicates of each side's mean score over one family's items.

    Replicates are drawn in chunks so memory stays bounded (n_boot x items indices at once
    would be 400 MB for 50,000 replicates of a 1,000-item family).
    """
    import numpy as np

    ids = sorted(variant)
    v = np.array([variant[i] for i in ids]) if paired else np.array(list(variant.values()))
    b = np.array([baseline[i] for i in ids]) if paired else np.array(list(baseline.values()))
    v_means, b_means = np.empty(n_boot), np.empty(n_boot)
    for lo in range(0, n_boot, _CHUNK):
        size = min(_CHUNK, n_boot - lo)
        v_draw = rng.integers(0, len(v), size=(size, len(v)))
        b_draw = v_draw if paired else rng.integers(0, len(b), size=(size, len(b)))
        v_means[lo:lo + size], b_means[lo:lo + size] = v[v_draw].mean(axis=1), b[b_draw].mean(axis=1)
    return v_means, b_means


_CHUNK = 5000


def _check_comparable(variant: QualityReport, baseline: QualityReport, rule: str, threshold: float) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown gate rule {rule!r}; choose one of {RULES}")
    if not 0.0 < threshold:
        raise ValueError(f"gate threshold must be positive (the competition uses 0.80), got {threshold}")
    if variant.metric != baseline.metric:
        raise ValueError(f"variant scored with {variant.metric!r} but baseline with {baseline.metric!r}; "
                         "score both alike")
    if set(variant.per_task) != set(baseline.per_task):
        raise ValueError(
            f"variant tasks {sorted(variant.per_task)} differ from baseline tasks {sorted(baseline.per_task)}; "
            "gate only runs of the same suite"
        )


def require_same_setup(
    variant_config: Mapping[str, Any],
    baseline_config: Mapping[str, Any],
    sections: Sequence[str] = ("model", "workload", "sampling"),
) -> None:
    """Refuses to gate runs whose resolved configs differ in base model, suite or sampling.

    Raises:
        ValueError: naming the first differing section, with both values.
    """
    for section in sections:
        ours, theirs = variant_config.get(section), baseline_config.get(section)
        if ours != theirs:
            raise ValueError(
                f"variant and baseline differ in {section!r} ({ours!r} vs {theirs!r}); "
                "re-run the baseline with the same settings before gating"
            )


def gate(
    variant: QualityReport,
    baseline: QualityReport,
    rule: str = "mean",
    threshold: float = 0.80,
    *,
    confidence: float = 0.95,
    n_boot: int = 50_000,
    seed: int = 0,
    energy: EnergyComparison | None = None,
) -> Gate:
    """Compares a variant's quality with the baseline's (same model, suite and sampling).

    Items are resampled within each task family (the suite's mix stays fixed); when both
    runs hold the same item ids the resampling is paired (the same draws for both), which
    removes item difficulty from the variance.

    Args:
        variant, baseline: the two runs' QualityReports, scored with the same metric.
        rule: "mean" or "every_task" (see Gate).
        threshold: minimum quality ratio.
        confidence: central interval width, e.g. 0.95.
        n_boot: bootstrap replicates.
        seed: numpy Generator seed; the same inputs and seed give the same Gate.
        energy: an EnergyComparison to carry along (see harness.score.energy.compare_trials).
    """
    import numpy as np

    _check_comparable(variant, baseline, rule, threshold)
    rng = np.random.default_rng(seed)
    v_tasks, b_tasks = _task_scores(variant), _task_scores(baseline)
    paired = all(set(v_tasks[t]) == set(b_tasks[t]) for t in v_tasks)
    per_task: dict[str, Ratio] = {}
    v_reps, b_reps = [], []
    for task in sorted(v_tasks):
        v_means, b_means = _resampled_means(rng, v_tasks[task], b_tasks[task], n_boot, paired)
        v_reps.append(v_means)
        b_reps.append(b_means)
        point = float(_safe_ratio(variant.per_task[task], baseline.per_task[task]))
        low, high = _interval(_safe_ratio(v_means, b_means), confidence)
        per_task[task] = Ratio(task, point, low, high, confidence, n_boot, paired,
                               len(v_tasks[task]), len(b_tasks[task]))
    overall_reps = _safe_ratio(np.mean(v_reps, axis=0), np.mean(b_reps, axis=0))
    low, high = _interval(overall_reps, confidence)
    overall = Ratio(
        "overall", float(_safe_ratio(variant.overall, baseline.overall)), low, high,
        confidence, n_boot, paired, len(variant.items), len(baseline.items),
    )
    deciding = [overall] if rule == "mean" else list(per_task.values())
    verdicts = {_verdict(ratio, threshold) for ratio in deciding}
    verdict = "fail" if "fail" in verdicts else "pass" if verdicts == {"pass"} else "uncertain"
    point_pass = all(meets(ratio.point, threshold) for ratio in deciding)
    notes = () if paired else ("item ids differ between runs: resampled unpaired",)
    return Gate(rule, threshold, variant.metric, verdict, point_pass, overall, per_task, seed, energy, notes)
