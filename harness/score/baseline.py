"""Finds the baseline run comparable with a variant and gates the variant against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from harness.config.schema import RunConfig

# Settings that must match for two runs to be compared: same base model, suite and sampling.
SAME_SETUP = ("model", "workload", "sampling")


def find_baseline(results_dir: Path | str, baseline_variant: str, config: Mapping[str, Any]):
    """The newest successful run of `baseline_variant` with the same setup, or None."""
    from harness.record.result import load_result, read_rows
    from harness.score.lmeval.settings import quality_source

    runs = Path(results_dir) / "runs"
    for row in reversed(read_rows(Path(results_dir) / "runs.jsonl")):
        if row.get("variant") != baseline_variant or row.get("status") != "ok":
            continue
        run_dir = runs / row["run_id"]
        if not (run_dir / "result.json").is_file():
            continue
        result = load_result(run_dir)
        same_quality = quality_source(result.config) == quality_source(config)  # same engine and tasks
        if same_quality and all(result.config.get(k) == config.get(k) for k in SAME_SETUP):
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
