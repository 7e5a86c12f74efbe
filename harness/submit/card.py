"""The submission's README.md model card, written only from measured results."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _num(value: Any, fmt: str = ".3g") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(row: Mapping[str, Any], name: str) -> str:
    if row.get(name) is None:
        return "-"
    return f"{row[name]:.3f} [{_num(row.get(name + '_ci_low'), '.3f')}, {_num(row.get(name + '_ci_high'), '.3f')}]"


def results_table(variant: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> list[str]:
    """Rows of the measured comparison: energy, speed, quality per family, ratios, gate."""
    base = baseline or {}
    source = variant["energy_source"]
    families = sorted(k for k in variant if k.startswith("quality_") and k != "quality_overall"
                      and not k.startswith("quality_ratio"))
    rows = [
        (f"suite energy (J, {source})", variant["suite_energy_j"], base.get("suite_energy_j")),
        (f"energy per request (J, {source})", _per(variant, "requests"), _per(base, "requests")),
        (f"energy per output token (J, {source})", _per(variant, "output_tokens"), _per(base, "output_tokens")),
        ("idle power (W)", variant["idle_power_w"], base.get("idle_power_w")),
        ("output tokens / s", variant["output_tok_per_s"], base.get("output_tok_per_s")),
        ("quality, overall (macro)", variant["quality_overall"], base.get("quality_overall")),
    ] + [(f"quality, {f.removeprefix('quality_')}", variant[f], base.get(f)) for f in families]
    lines = ["| measured | this model | baseline |", "|---|---|---|"]
    lines += [f"| {name} | {_num(v)} | {_num(b)} |" for name, v, b in rows]
    return lines


def _per(row: Mapping[str, Any], count: str) -> float | None:
    if not row or not row.get(count) or row.get("suite_energy_j") is None:
        return None
    return row["suite_energy_j"] / row[count]


def _recipe_lines(folder: Path) -> list[str]:
    path = folder / "recipe.json"
    if not path.is_file():
        return ["No compression: the base model's weights as they are."]
    recipe = json.loads(path.read_text(encoding="utf-8"))
    lines = []
    for step in recipe.get("steps", []):
        config = step.get("config", {})
        if step.get("files"):  # a GGUF export: what each file really holds
            lines += [f"- {step.get('step')}: scheme `{config.get('scheme')}` ({config.get('class')})",
                      *[f"  - `{name}`: {_gguf_file(d)}" for name, d in step["files"].items()]]
            continue
        lines.append(f"- {step.get('step', 'compress')}: scheme `{config.get('scheme')}` ({config.get('class')}), "
                     f"{step.get('quantized_modules', '?')} modules quantized, calibration: {step.get('calibration')}")
    lines.append("The full lineage (configs, library versions, base-model hash) is in recipe.json.")
    return lines


def _gguf_file(d: Mapping[str, Any]) -> str:
    """E.g. '1.2 MiB, 4.9 bits per weight, tensors: Q4_K 30, Q6_K 7, F32 34'."""
    types = ", ".join(f"{t} {n}" for t, n in (d.get("tensor_types") or {}).items())
    return f"{d.get('bytes', 0) / 2**20:.1f} MiB, {_num(d.get('bits_per_weight'))} bits per weight, tensors: {types}"


def _vllm_serve_section(folder: Path) -> list[str]:
    return ["## Serve settings (vllm_config.yaml)", "", "```yaml",
            (folder / "vllm_config.yaml").read_text(encoding="utf-8").rstrip(), "```", "",
            "Serve it from inside this folder: `vllm serve --config vllm_config.yaml --port 8000`.", ""]


def _engine_line(variant: Mapping[str, Any], baseline: Mapping[str, Any] | None) -> str:
    served = f"Served by: **{variant.get('engine') or 'vllm'}**"
    return served + (f"; the baseline by {baseline.get('engine') or 'vllm'}." if baseline else ".")


def _length_lines(result) -> list[str]:
    """Answer length per task (output tokens, trial 1): energy is summed over the suite, so length is energy."""
    lengths = result.lengths or {}
    if not lengths:
        return []
    lines = ["Answer length (output tokens per answer, trial 1; longer answers cost more energy):", "",
             "| task | n | mean | median | p90 | max | max_tokens (set by) |", "|---|---|---|---|---|---|---|"]
    for task, d in sorted(lengths.items(), key=lambda kv: kv[0] == "all"):
        low, high = d.get("max_tokens_min"), d.get("max_tokens_max")
        limit = "-" if low is None else f"{low}" if low == high else f"{low}-{high}"
        limit += f" ({', '.join(d['max_tokens_from'])})" if d.get("max_tokens_from") else ""
        lines.append(f"| {task} | {d.get('n')} | {_num(d.get('mean'))} | {_num(d.get('median'))} | "
                     f"{_num(d.get('p90'))} | {_num(d.get('max'))} | {limit} |")
    return [*lines, ""]


def model_card(*, folder: Path, result, variant_row: Mapping[str, Any], baseline_row: Mapping[str, Any] | None,
               overrides: list[str], size_bytes: int, built: Sequence[str] = (),
               validation: Sequence[str] | None = None, submit_args: Sequence[str] = (),
               changes: Sequence[str] = (), serve_section: Sequence[str] | None = None) -> str:
    """README.md text for the submission folder.

    Args:
        folder: the submission folder (recipe.json and vllm_config.yaml are read from it).
        result: the variant's RunResult the folder was made from.
        variant_row, baseline_row: `harness.leaderboard.data.run_row` of the run and of its
            baseline (None when the run has no gate).
        overrides: the Hydra overrides that reproduce the run.
        size_bytes: the folder's size on disk before this README.
        built: what the folder was built for and how it differs from what the run served.
        validation: what the check of the folder ran (None: not checked yet).
        submit_args: options of `python -m harness.submit` beyond the overrides (e.g. --target).
        changes: how the folder's generation config and chat template differ from the base
            model's, each with what it changes for requests that leave sampling out.
        serve_section: the "Serve settings" section's lines (None: vLLM's, from vllm_config.yaml).
    """
    cfg = result.config
    model, workload, sampling = cfg.get("model", {}), cfg.get("workload", {}), cfg.get("sampling", {})
    gate = result.gate
    repro = " ".join(overrides)
    lines = [
        f"# {result.variant}: {model.get('name')} for energy-efficient serving", "",
        f"Base model: `{model.get('name')}` ({model.get('dtype')}). Size on disk: {size_bytes / 2**20:.1f} MiB.", "",
        "## Compression recipe", "", *_recipe_lines(folder), "",
        *(_vllm_serve_section(folder) if serve_section is None else serve_section),
        "## Built for", "", *[f"- {line}" for line in built], "",
        "## Generation config and chat template against the base model", "",
        *([f"- {line}" for line in changes] or ["Unchanged: the judges' server decodes as it would the base model."]),
        "",
        "## Validation", "",
        *([f"- {line}" for line in validation] if validation is not None
          else ["Not validated yet: `python -m harness.submit` rewrites this section after its check."]), "",
        "## Measured results", "",
        _engine_line(variant_row, baseline_row),
        f"Hardware: {variant_row['hardware']}. Energy source: **{variant_row['energy_source']}** "
        "(measured = hardware energy counters; modeled = an estimate from CPU activity, not a measurement).",
        f"Suite: {workload.get('name')} {workload.get('split')} split, {variant_row['requests']} requests "
        f"({workload.get('mode')}), sampling temperature {sampling.get('temperature')}, top_p {sampling.get('top_p')}, "
        f"top_k {sampling.get('top_k')}, max_tokens {sampling.get('max_tokens')}.",
        f"Run `{result.run_id}`" + (f", baseline run `{gate.baseline_run_id}`." if gate else " (no baseline run)."),
        f"Trials: {len(result.energy.trials)} (suite energy is their mean). Energy integrity flags: "
        f"{variant_row.get('energy_flags') or 'none'}.", "",
        *results_table(variant_row, baseline_row), "",
        *_length_lines(result),
    ]
    if gate:
        lines += [
            f"Quality ratio to the baseline: {_ratio(variant_row, 'quality_ratio')} (95% CI); "
            f"energy ratio over paired trials: {_ratio(variant_row, 'energy_ratio')}"
            + (" (one trial: no gap claimed)." if (gate.energy or {}).get("gap") == "not_measured" else "."),
            f"Gate (>= {gate.threshold} of baseline quality, rule {gate.rule}): {gate.verdict} "
            f"on the interval, {'passes' if gate.point_pass else 'fails'} on the point estimate.", "",
        ]
    lines += [
        "## How to reproduce", "", "```bash",
        f"python -m harness +variant={result.variant} {repro}".rstrip(),
        " ".join(["python -m harness.submit", f"+variant={result.variant}", *overrides, *submit_args]), "```", "",
        "Every figure above was produced by these commands; none was edited by hand.",
    ]
    return "\n".join(lines) + "\n"
