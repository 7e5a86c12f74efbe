"""Leaderboard figures: energy vs quality with the Pareto front, a power trace, energy by task family."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers or in tests
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower energy x, higher quality y), by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def energy_vs_quality(table, group: str, description: str, out: Path) -> Path:
    """Suite energy (x) against overall quality (y) for one group, the Pareto front joined,
    and the gate line at threshold x baseline quality when the group has a baseline."""
    plt = _pyplot()
    rows = table[table["group"] == group]
    source = rows["energy_source"].iloc[0]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for _, r in rows.iterrows():
        xerr = None
        if r["suite_energy_j_ci_low"] is not None and r["suite_energy_j_ci_high"] is not None:
            xerr = [[r["suite_energy_j"] - r["suite_energy_j_ci_low"]],
                    [r["suite_energy_j_ci_high"] - r["suite_energy_j"]]]
        ax.errorbar(r["suite_energy_j"], r["quality_overall"], xerr=xerr, fmt="o" if r["ranked"] else "x", capsize=3)
        ax.annotate(r["variant"], (r["suite_energy_j"], r["quality_overall"]), textcoords="offset points",
                    xytext=(4, 4))
    front = pareto_front(list(zip(rows["suite_energy_j"], rows["quality_overall"])))
    ax.plot(*zip(*front), "--", color="grey", label="Pareto front")
    base = rows[rows["is_baseline"].astype(bool)]
    if not base.empty:
        threshold = float(base["gate_threshold"].iloc[0])
        ax.axhline(threshold * base["quality_overall"].iloc[0], color="red", lw=1,
                   label=f"gate: {threshold:.0%} of baseline quality")
    ax.set_xlabel(f"suite energy [J, {source}] (bars: 95% CI)")
    ax.set_ylabel("quality, overall (macro mean)")
    ax.set_title(f"{group}: {description[:90]}", fontsize=8)
    ax.legend(fontsize=8)
    return _save(fig, out)


def _windows(result_path: Path) -> list[dict[str, Any]]:
    return json.loads(result_path.read_text(encoding="utf-8"))["energy"]["windows"]


def power_trace(run_dir: Path, out: Path) -> Path:
    """Power (W) over time from a run's power_trace.csv, idle, suite and steady windows shaded.

    Rows with an empty power (the first sample of each device) are skipped; several devices
    are drawn as separate lines.
    """
    plt = _pyplot()
    with (run_dir / "power_trace.csv").open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("power_w")]
    if not rows:
        raise ValueError(f"{run_dir / 'power_trace.csv'} has no power samples to plot")
    windows = _windows(run_dir / "result.json")
    t0 = min([float(r["t_wall_s"]) for r in rows] + [w["start_s"] for w in windows])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for device in sorted({r["device"] for r in rows}):
        mine = [r for r in rows if r["device"] == device]
        ax.plot([float(r["t_wall_s"]) - t0 for r in mine], [float(r["power_w"]) for r in mine], lw=1, label=device)
    colours = {"idle": "tab:blue", "suite": "tab:orange", "steady": "tab:green"}
    for window in windows:
        colour = colours.get(window["name"], "tab:grey")
        ax.axvspan(window["start_s"] - t0, window["end_s"] - t0, color=colour, alpha=0.2,
                   label=f"{window['name']}: {window['energy_j']:.1f} J ({window['source']})")
    ax.set_xlabel("time since first sample [s]")
    ax.set_ylabel("power [W]")
    ax.set_title(f"power trace of {run_dir.name}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, out)


def energy_by_family(runs, group: str, out: Path) -> Path:
    """Mean attributed energy per request (J) in each task family, one bar per variant."""
    import numpy as np

    plt = _pyplot()
    rows = runs[runs["group"] == group]
    per_variant: dict[str, dict[str, list[float]]] = {}
    for _, r in rows.iterrows():
        families = per_variant.setdefault(r["variant"], {})
        for rid, joules in r["per_request_j"].items():
            families.setdefault(r["task_of"].get(rid, "?"), []).append(joules)
    tasks = sorted({t for fam in per_variant.values() for t in fam})
    variants = sorted(per_variant)
    width = 0.8 / max(len(variants), 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, variant in enumerate(variants):
        means = [float(np.mean(per_variant[variant].get(t, [np.nan]))) for t in tasks]
        ax.bar(np.arange(len(tasks)) + i * width, means, width, label=variant)
    ax.set_xticks(np.arange(len(tasks)) + width * (len(variants) - 1) / 2, tasks)
    ax.set_ylabel(f"energy per request [J, {rows['energy_source'].iloc[0]}]")
    ax.set_title(f"{group}: attributed energy per request by task family", fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, out)


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return out
