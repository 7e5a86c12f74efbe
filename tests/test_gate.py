"""The quality gate's verdicts (paired bootstrap over items) and the energy comparison over paired trials."""

from __future__ import annotations

import pytest

from harness.score.energy import compare_trials
from harness.score.gate import gate
from harness.score.quality import ItemScore, aggregate


def report(correct_per_ten: dict[str, int], n_per_task: int, prefix: str = "item", metric: str = "exact"):
    """A QualityReport where, per task, `k` of every 10 consecutive items are right."""
    items = [
        ItemScore(f"{prefix}-{task}-{i}", task, float(i % 10 < k), "scored")
        for task, k in correct_per_ten.items()
        for i in range(n_per_task)
    ]
    return aggregate(metric, items)


BASELINE = report({"colour": 9, "corner": 8}, 100)


def test_identical_runs_pass_with_a_tight_interval():
    result = gate(BASELINE, BASELINE, seed=1)
    assert result.verdict == "pass"
    assert result.overall.point == pytest.approx(1.0)
    assert result.overall.ci_low == pytest.approx(1.0) and result.overall.ci_high == pytest.approx(1.0)
    assert result.overall.paired


def test_a_much_worse_variant_fails():
    variant = report({"colour": 3, "corner": 2}, 100)
    result = gate(variant, BASELINE, seed=1)
    assert result.verdict == "fail"
    assert not result.point_pass
    assert result.overall.ci_high < 0.8


def test_a_variant_near_the_threshold_on_few_items_is_uncertain():
    small_baseline = report({"colour": 9, "corner": 9}, 20)
    variant = report({"colour": 7, "corner": 7}, 20)  # ratio 0.78: just under, but 20 items a task
    result = gate(variant, small_baseline, seed=3)
    assert result.verdict == "uncertain"
    assert result.overall.ci_low < 0.8 <= result.overall.ci_high


def test_every_task_rule_fails_on_one_bad_family_the_mean_hides():
    baseline = report({"colour": 8, "corner": 8}, 200)
    variant = report({"colour": 10, "corner": 4}, 200)  # mean ratio 0.875, corner ratio 0.5
    assert gate(variant, baseline, rule="mean", seed=0).verdict == "pass"
    strict = gate(variant, baseline, rule="every_task", seed=0)
    assert strict.verdict == "fail"
    assert strict.per_task["corner"].point == pytest.approx(0.5)


def test_bootstrap_is_deterministic_for_a_seed_and_contains_the_point():
    variant = report({"colour": 8, "corner": 7}, 50)
    first, again = gate(variant, BASELINE_50, seed=7), gate(variant, BASELINE_50, seed=7)
    other = gate(variant, BASELINE_50, seed=8)
    assert first == again
    assert (first.overall.ci_low, first.overall.ci_high) != (other.overall.ci_low, other.overall.ci_high)
    for ratio in [first.overall, *first.per_task.values()]:
        assert ratio.ci_low <= ratio.point <= ratio.ci_high


BASELINE_50 = report({"colour": 9, "corner": 8}, 50)


def test_different_item_ids_resample_unpaired():
    variant = report({"colour": 9, "corner": 8}, 100, prefix="other")
    result = gate(variant, BASELINE, seed=0)
    assert not result.overall.paired
    assert result.notes
    # Unpaired resampling of equal accuracies still spreads around 1.
    assert result.overall.ci_low < 1.0 < result.overall.ci_high


def test_gate_refuses_runs_that_are_not_comparable():
    with pytest.raises(ValueError, match="same suite"):
        gate(report({"colour": 9}, 10), BASELINE)
    with pytest.raises(ValueError, match="score both alike"):
        gate(report({"colour": 9, "corner": 8}, 100, metric="anls"), BASELINE)
    with pytest.raises(ValueError, match="unknown gate rule"):
        gate(BASELINE, BASELINE, rule="median")


def test_gate_to_dict_carries_the_energy_comparison():
    energy = compare_trials([10.0, 11.0, 10.5], [20.0, 21.0, 19.0], variant_source="measured",
                            baseline_source="measured")
    as_dict = gate(BASELINE, BASELINE, energy=energy).to_dict()
    assert as_dict["verdict"] == "pass"
    assert as_dict["energy"]["ratio"] == pytest.approx((10 / 20 * 11 / 21 * 10.5 / 19) ** (1 / 3))
    assert as_dict["energy"]["basis"] == "suite_window_per_trial"
    assert set(as_dict["per_task"]) == {"colour", "corner"}


def test_paired_trials_find_a_real_gap():
    baseline = [100.0, 103.0, 98.0, 101.0, 99.0]  # joules per trial, drifting
    variant = [0.6 * j for j in baseline]
    result = compare_trials(variant, baseline, variant_source="measured", baseline_source="measured")
    assert result.ratio == pytest.approx(0.6) and result.ci_high < 1.0
    assert result.gap == "lower" and result.trials == 5
    assert result.variant_mean_j == pytest.approx(0.6 * sum(baseline) / 5)
    assert result.source == "measured"
    assert "variant uses less" in result.describe()


def test_overlapping_trials_leave_the_gap_unresolved_and_modeled_taints_the_source():
    result = compare_trials([100.0, 96.0, 104.0], [101.0, 95.0, 103.0], variant_source="modeled",
                            baseline_source="measured")
    assert result.gap == "not_resolved"
    assert result.source == "modeled"
    assert result.ci_low <= result.ratio <= result.ci_high


def test_one_trial_gives_a_ratio_but_no_interval_and_no_verdict():
    result = compare_trials([90.0], [100.0], variant_source="measured", baseline_source="measured")
    assert result.ratio == pytest.approx(0.9)
    assert (result.ci_low, result.ci_high, result.gap) == (None, None, "not_measured")
    assert "no gap is claimed" in result.describe()


def test_energy_comparison_refuses_what_it_cannot_compare():
    with pytest.raises(ValueError, match="same number of trials"):
        compare_trials([100.0, 101.0], [120.0], variant_source="measured", baseline_source="measured")
    with pytest.raises(ValueError, match="positive, finite"):
        compare_trials([0.0, 1.0], [1.0, 2.0], variant_source="measured", baseline_source="measured")
    with pytest.raises(ValueError, match="'measured' or 'modeled'"):
        compare_trials([1.0, 2.0], [1.0, 2.0], variant_source="estimated", baseline_source="measured")


def test_a_variant_at_exactly_the_threshold_passes():
    # 24 of 40 right against 30 of 40: exactly 80%, though 0.6 / 0.75 is 0.7999999999999999 in floats.
    def counted(right: int):
        return aggregate("exact", [ItemScore(f"i{i}", "colour", float(i < right), "scored") for i in range(40)])

    variant, baseline = counted(24), counted(30)
    assert variant.overall / baseline.overall < 0.8  # the float rounding this test is about
    result = gate(variant, baseline, threshold=0.8, seed=0)
    assert result.point_pass
    assert result.overall.point == pytest.approx(0.8)


def test_interval_bounds_are_stable_across_seeds():
    variant = report({"colour": 7, "corner": 6, "count": 8}, 20)
    baseline = report({"colour": 8, "corner": 7, "count": 9}, 20)
    runs = [gate(variant, baseline, seed=seed) for seed in range(5)]
    lows, highs = [r.overall.ci_low for r in runs], [r.overall.ci_high for r in runs]
    assert max(lows) - min(lows) < 0.002 and max(highs) - min(highs) < 0.002


def test_runs_with_different_sampling_are_not_gated():
    from harness.score.gate import require_same_setup

    base = {"model": {"name": "tiny"}, "workload": {"seed": 0, "limit": 40}, "sampling": {"temperature": 1.0}}
    require_same_setup({**base, "variant": "fp8"}, base)
    with pytest.raises(ValueError, match="differ in 'sampling'"):
        require_same_setup({**base, "sampling": {"temperature": 0.0}}, base)


def test_a_family_the_baseline_never_gets_right_cannot_fail_the_variant():
    baseline = report({"colour": 9, "corner": 0}, 40)
    variant = report({"colour": 9, "corner": 1}, 40)
    result = gate(variant, baseline, rule="every_task", seed=0)
    assert result.per_task["corner"].point == float("inf")
    assert result.per_task["corner"].ci_low == float("inf")
    assert result.verdict == "pass"
    both_zero = gate(report({"colour": 9, "corner": 0}, 40), baseline, rule="every_task", seed=0)
    assert both_zero.per_task["corner"].point == 1.0 and both_zero.verdict == "pass"
