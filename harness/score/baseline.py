"""Finds the baseline run comparable with a variant and gates the variant against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from harness.config.schema import RunConfig
from harness.record.result import runs_newest_first, same_setup

# Settings that must match for two runs to be compared: same base model, suite and sampling.


def find_baseline(results_dir: Path | str, baseline_variant: str, config: Mapping[str, Any]):
    """The newest successful run of `baseline_variant` with the same setup and quality engine, or None."""
    from harness.score.lmeval.settings import quality_source

    for _, result in runs_newest_first(results_dir, baseline_variant, status="ok"):
        same_quality = quality_source(result.config) == quality_source(config)  # same engine and tasks
        if same_quality and same_setup(result.config, config):
            return result
    return None


def gate_against_baseline(run_cfg: RunConfig, config: Mapping[str, Any], report, energy: Mapping[str, Any]):
    """The Gate (as a dict) of this run against its baseline; None for the baseline itself
    or when no comparable baseline run exists yet."""
    from harness.score.gate import compare_energy, gate
    from harness.score.quality import QualityReport

    q = run_cfg.quality
    if run_cfg.name == q.baseline_variant:
        return None
    base = find_baseline(run_cfg.results_dir, q.baseline_variant, config)
    if base is None:
        return None
    base_energy = base.energy
    comparison = None
    if energy.get("per_request_j") and base_energy.get("per_request_j"):
        comparison = compare_energy(energy["per_request_j"], base_energy["per_request_j"],
                                    variant_source=energy["source"], baseline_source=base_energy["source"],
                                    confidence=q.confidence, n_boot=q.bootstrap_n, seed=q.seed)
    result = gate(report, QualityReport.from_dict(base.quality), q.rule, q.threshold,
                  confidence=q.confidence, n_boot=q.bootstrap_n, seed=q.seed, energy=comparison)
    return {**result.to_dict(), "baseline_run_id": base.run_id}


def baseline_overrides(overrides: list[str]) -> list[str]:
    """The run's overrides that also apply to its baseline: model, workload, sampling, serve...

    The variant's own identity (variant, name) and compression stay with the variant.
    """
    return [o for o in overrides if not o.lstrip("+~").startswith(("variant=", "name=", "compress.", "compress="))]
