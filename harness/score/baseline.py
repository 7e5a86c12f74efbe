"""The baseline a variant is compared with, whether it is comparable, and the gate against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from harness.config.schema import RunConfig
from harness.record.parts import EnergyPart
from harness.record.result import RunResult, runs_newest_first, same_setup


def hardware(provenance: Mapping[str, Any]) -> str:
    """What ran the model: the GPU names when there are GPUs, else the CPU model."""
    gpus = provenance.get("gpus") or []
    if gpus:
        return " + ".join(str(g.get("name")) for g in gpus)
    return str((provenance.get("host") or {}).get("cpu_model"))


def incomparable(ours: Mapping[str, Any], theirs: RunResult) -> str | None:
    """Why ``theirs`` cannot be the baseline of a run described by ``ours``, or None when it can.

    ``ours`` holds the run's "config", "provenance" and "energy" (as result.json does). Two
    runs compare only on the same hardware, energy source and meter, measurement code, model,
    workload and sampling; a run whose energy is partial (a resume) compares with nothing.
    """
    if not same_setup(ours["config"], theirs.config):
        return "model, workload or sampling differ"
    mine, other = hardware(ours["provenance"]), hardware(theirs.provenance)
    if mine != other:
        return f"measured on other hardware ({other} vs {mine})"
    energy, their_energy = EnergyPart.from_dict(ours["energy"]), theirs.energy
    for key, what in (("source", "energy source"), ("meter", "meter"), ("measurement_version", "measurement code")):
        if getattr(energy, key) != getattr(their_energy, key):
            return f"{what} differs ({getattr(their_energy, key)} vs {getattr(energy, key)})"
    if energy.partial or their_energy.partial:
        return "a resumed run's energy is partial"
    return None


def find_baseline(results_dir: Path | str, baseline_variant: str, config: Mapping[str, Any],
                  provenance: Mapping[str, Any] | None = None, energy: Mapping[str, Any] | None = None):
    """The newest successful run of `baseline_variant` with the same setup and quality engine, or None.

    Given the run's provenance and energy, the baseline must also be comparable on hardware,
    meter and measurement code (``incomparable``), and not partial.
    """
    from harness.score.lmeval.settings import quality_source

    for _, result in runs_newest_first(results_dir, baseline_variant, status="ok"):
        if quality_source(result.config) != quality_source(config) or not same_setup(result.config, config):
            continue
        if result.energy.partial:
            continue
        if provenance is not None and energy is not None:
            ours = {"config": config, "provenance": provenance, "energy": {**energy, "partial": False}}
            if incomparable(ours, result) is not None:
                continue
        return result
    return None


def gate_against(run_cfg: RunConfig, config: Mapping[str, Any], report, energy: Mapping[str, Any],
                 baseline: RunResult | None = None) -> dict[str, Any] | None:
    """The Gate (as a dict) of this run against ``baseline`` (this session's) or the newest comparable one.

    None for the baseline itself or when no baseline exists. The energy comparison uses the
    paired trials' suite-window energies; it is left out, with the reason in "notes", when
    the baselines are not comparable or either side is partial. Whatever fails in gating is
    recorded as {"error": ...}: a result is always written.
    """
    from harness.record import provenance as prov

    q = run_cfg.quality
    if run_cfg.name == q.baseline_variant:
        return None
    try:
        ours = {"config": config, "provenance": prov.collect(), "energy": energy}
        base = baseline or find_baseline(run_cfg.results_dir, q.baseline_variant, config, ours["provenance"],
                                         {**energy, "partial": False})
        if base is None:
            return None
        return _gate(run_cfg, ours, report, base)
    except Exception as err:  # noqa: BLE001 - the result is written with the reason instead
        return {"error": f"{type(err).__name__}: {err}", "verdict": None}


def _gate(run_cfg: RunConfig, ours: Mapping[str, Any], report, base: RunResult) -> dict[str, Any]:
    from harness.score.energy import compare_trials
    from harness.score.gate import gate
    from harness.score.quality import QualityReport

    q = run_cfg.quality
    reason = incomparable(ours, base)
    comparison, notes = None, []
    if reason is None:
        mine, theirs = EnergyPart.from_dict(ours["energy"]).trial_suite_j(), base.energy.trial_suite_j()
        n = min(len(mine), len(theirs))
        if n:
            comparison = compare_trials(mine[:n], theirs[:n], variant_source=ours["energy"]["source"],
                                        baseline_source=base.energy.source, confidence=q.confidence)
        else:
            notes.append("no complete trial on one side: energy not compared")
    else:
        notes.append(f"energy not compared: {reason}")
    if base.quality is None:
        raise ValueError(f"baseline run {base.run_id} has no quality scores to gate against")
    result = gate(report, QualityReport.from_dict(base.quality.to_dict()), q.rule, q.threshold,
                  confidence=q.confidence, n_boot=q.bootstrap_n, seed=q.seed, energy=comparison)
    data = result.to_dict()
    data["notes"] = [*data["notes"], *notes]
    return {**data, "baseline_run_id": base.run_id}



def baseline_overrides(overrides: list[str]) -> list[str]:
    """The run's overrides that also apply to its baseline: model, workload, sampling, serve...

    The variant's own identity (variant, name) and compression stay with the variant.
    """
    return [o for o in overrides if not o.lstrip("+~").startswith(("variant=", "name=", "compress.", "compress="))]
