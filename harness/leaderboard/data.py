"""Runs from results/ as tables: one row per run, then one ranked row per comparable variant."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.record.result import setup_section
from harness.replay.stats import length_stats
from harness.replay.tokens import joules_per_output_token

# Sections of a run's resolved config that must match for energies to be compared; the
# energy source and the hardware are added on top (see `setup_key`). The serving engine is not
# one of them: the competition ranks vLLM and llama.cpp entries together, so they share a group.
SETUP_SECTIONS = ("model", "workload", "sampling")
CI_CONFIDENCE = 0.95
# Columns a variant's row takes from its newest run rather than averaging over repeats.
NEWEST_RUN_COLUMNS = ("variant", "engine", "group", "model", "hardware", "workload", "energy_source", "energy_flags",
                      "is_baseline", "gate_threshold", "gate_verdict", "gate_point_pass", "quality_ratio",
                      "quality_ratio_ci_low", "quality_ratio_ci_high", "energy_ratio", "energy_ratio_ci_low",
                      "energy_ratio_ci_high")


@dataclass(frozen=True)
class Board:
    """What the leaderboard shows.

    Attributes:
        runs: one row per successful run (pandas DataFrame), with its group label.
        table: one row per (group, variant): means over repeats, ranked within each group.
        failed: one row per failed run (variant, run_id, started_at, error).
        groups: group label -> its setup description; runs of different groups are never
            ranked together.
        lengths: one row per (group, variant, task): the output-token distribution of its
            answers (`length_table`).
    """

    runs: Any
    table: Any
    failed: Any
    groups: Mapping[str, str]
    lengths: Any = None


def hardware_of(provenance: Mapping[str, Any]) -> str:
    """The metered hardware in words: the GPUs when there are any, else the CPU."""
    gpus = provenance.get("gpus") or []
    if gpus:
        names = sorted({str(g.get("name", "GPU")) for g in gpus})
        return f"{len(gpus)}x {' + '.join(names)}"
    host = provenance.get("host") or {}
    return f"CPU {host.get('cpu_model', '?')} ({host.get('cpus_usable', '?')} cores)"


def setup_key(result) -> str:
    """A canonical string of everything that must match for two runs to be compared."""
    setup = {k: setup_section(result.config, k) for k in SETUP_SECTIONS}
    setup["hardware"] = hardware_of(result.provenance)
    setup["energy_source"] = result.energy.source
    return json.dumps(setup, sort_keys=True, default=str)


def describe_setup(key: str) -> str:
    """One line naming the model, hardware, suite, sampling and energy source of a group."""
    s = json.loads(key)
    m, w, p = s.get("model") or {}, s.get("workload") or {}, s.get("sampling") or {}
    sampling = (f"sampling T={p.get('temperature')} top_p={p.get('top_p')} top_k={p.get('top_k')} "
                f"max_tokens={p.get('max_tokens')}" if p.get("send", "explicit") == "explicit" else
                "requests carry messages only (sampling and max_tokens from the served generation config)")
    return (f"model {m.get('name')} ({m.get('path') or 'default path'}, {m.get('dtype')}); hardware {s['hardware']}; "
            f"suite {w.get('name')}/{w.get('split')} seed {w.get('seed')} limit {w.get('limit')} {w.get('mode')} "
            f"c={w.get('concurrency')}; {sampling}; energy {s['energy_source']}")


def _requests(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "requests.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_row(result, run_dir: Path) -> dict[str, Any]:
    """The leaderboard's figures for one successful run.

    Suite energy = the mean suite-window energy over the run's complete trials (trial 1's
    window for a run without trials). J/request = suite energy / requests sent; J/output token
    = suite energy / output tokens of successful requests. Idle power = idle window energy / its
    duration (model loaded, no request). p95s and answer lengths (output tokens per successful
    request, by task, with each request's effective max_tokens) come from requests.jsonl; the
    decode share (attributed by time) from result.json.
    """
    energy, quality, gate = result.energy, result.quality, result.gate
    suite, idle = energy.window("suite"), energy.window("idle")
    counts = result.counts
    reqs = _requests(run_dir)
    ok = [r for r in reqs if r.get("error") is None]
    trial_j = energy.trial_suite_j() or [suite.get("energy_j")]
    energy_j = sum(trial_j) / len(trial_j) if None not in trial_j else None
    tokens = counts.output_tokens if counts else None
    task_of = {r["id"]: r["task"] for r in reqs}
    row = {
        "run_id": result.run_id, "variant": result.variant, "started_at": result.started_at,
        "engine": engine_of(result.config),
        "model": (result.config.get("model") or {}).get("name"), "hardware": hardware_of(result.provenance),
        "workload": (result.config.get("workload") or {}).get("name"), "setup": setup_key(result),
        "energy_source": energy.source, "suite_energy_j": energy_j, "trial_suite_j": trial_j,
        "energy_flags": ", ".join(energy.flags()) or None,
        "suite_duration_s": suite.get("duration_s"),
        "idle_power_w": idle["energy_j"] / idle["duration_s"] if idle.get("duration_s") else None,
        "requests": counts.requests if counts else len(reqs), "output_tokens": tokens,
        "output_tok_per_s": result.throughput.output_tok_per_s if result.throughput else None,
        "quality_overall": quality.overall if quality else None,
        "gate_threshold": (result.config.get("quality") or {}).get("threshold"),
        "is_baseline": result.variant == (result.config.get("quality") or {}).get("baseline_variant"),
        "gate_verdict": gate.verdict if gate else None, "gate_point_pass": gate.point_pass if gate else None,
        "baseline_run_id": gate.baseline_run_id if gate else None,
        "ttft_ms_list": [r["ttft_ms"] for r in ok if r.get("ttft_ms") is not None],
        "latency_ms_list": [r["latency_ms"] for r in ok if r.get("latency_ms") is not None],
        "per_request_j": dict(energy.per_request_j), "task_of": task_of,
        "lengths_by_task": _lengths_by_task(ok), "decode_share": energy.decode_share(),
    }
    ratios = (("quality_ratio", gate.overall if gate else {}), ("energy_ratio", gate.energy_ratio() if gate else {}))
    for prefix, ratio in ratios:
        row.update({prefix: ratio.get("point"), f"{prefix}_ci_low": ratio.get("ci_low"),
                    f"{prefix}_ci_high": ratio.get("ci_high")})
    for task, value in (quality.per_task if quality else {}).items():
        row[f"quality_{task}"] = value
    return row


def engine_of(config: Mapping[str, Any]) -> str:
    """The engine that served a run (runs recorded before the engine group existed were all vLLM)."""
    return str((config.get("engine") or {}).get("name") or "vllm")


def _lengths_by_task(ok: list[dict[str, Any]]) -> dict[str, list[tuple[int, int | None]]]:
    """task -> (output tokens, effective max_tokens) of each successful request, and "all" for every one."""
    by_task: dict[str, list[tuple[int, int | None]]] = {"all": []}
    for r in ok:
        pair = (int(r.get("output_tokens") or 0), r.get("max_tokens"))
        by_task["all"].append(pair)
        by_task.setdefault(str(r.get("task")), []).append(pair)
    return by_task


def load_runs(results_dir: Path | str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows of successful runs and of failed ones, from runs.jsonl and each run's result.json.

    A row whose run directory lacks result.json counts as failed, with the reason; so does a
    resumed run, whose energy covers only part of the suite.
    """
    from harness.record.result import load_result, read_rows

    results_dir = Path(results_dir)
    ok, failed = [], []
    for row in read_rows(results_dir / "runs.jsonl"):
        run_dir = results_dir / "runs" / str(row.get("run_id"))
        result = load_result(run_dir) if (run_dir / "result.json").is_file() else None
        base = {"variant": row.get("variant"), "run_id": row.get("run_id"), "started_at": row.get("started_at"),
                **_setup_of(result)}
        if row.get("status") != "ok":
            # The headline only: a server failure carries its whole log tail in result.json.
            error = (row.get("error") or "no error recorded").strip().splitlines()[0]
            failed.append({**base, "error": error})
        elif result is None:
            failed.append({**base, "error": f"{run_dir}/result.json is missing"})
        elif result.provenance.get("resume"):
            # Its energy windows cover only the requests replayed after the resume.
            failed.append({**base, "error": "resumed run: energy covers part of the suite; rerun it whole to rank it"})
        else:
            ok.append(run_row(result, run_dir))
    return ok, failed


def _setup_of(result) -> dict[str, Any]:
    """Model, hardware and workload of a run (None each where its result.json is missing)."""
    if result is None:
        return {"model": None, "hardware": None, "workload": None}
    return {"model": (result.config.get("model") or {}).get("name"), "hardware": hardware_of(result.provenance),
            "workload": (result.config.get("workload") or {}).get("name")}


def _suite_energy_ci(runs) -> tuple[float | None, float | None, str]:
    """The CI_CONFIDENCE t-interval of the mean suite energy over every complete trial of the runs.

    Trials, not requests, are what vary between measurements of the whole suite; with fewer
    than 2 trials there is no interval (basis "none").
    """
    from harness.score.energy import mean_interval

    values = [float(j) for trials in runs["trial_suite_j"] for j in trials if j is not None]
    if len(values) < 2:
        return None, None, "none"
    _, low, high = mean_interval(values, CI_CONFIDENCE)
    return low, high, "trials"


def _percentile(lists, q: float) -> float | None:
    import numpy as np

    pooled = [v for values in lists for v in values]
    return float(np.percentile(pooled, q)) if pooled else None


def aggregate_variant(runs) -> dict[str, Any]:
    """One leaderboard row from one variant's comparable runs (repeats averaged).

    Means over repeats for energy, throughput and quality; latency percentiles over the
    pooled requests; the gate and ratios of the newest run (each gated against the
    baseline that existed when it ran).
    """
    runs = runs.sort_values("started_at")
    newest = runs.iloc[-1]
    low, high, basis = _suite_energy_ci(runs)
    energy = runs["suite_energy_j"].astype(float)
    total_requests, total_tokens = runs["requests"].sum(), runs["output_tokens"].sum()
    every = _length_stats([pair for by_task in runs["lengths_by_task"] for pair in by_task.get("all", ())])
    shares = [float(v) for v in runs["decode_share"] if v is not None and v == v]
    row = {k: newest[k] for k in NEWEST_RUN_COLUMNS}
    row.update({
        "n_runs": len(runs), "run_ids": " ".join(runs["run_id"]),
        "suite_energy_j": float(energy.mean()), "suite_energy_j_std": float(energy.std()) if len(runs) > 1 else None,
        "suite_energy_j_ci_low": low, "suite_energy_j_ci_high": high, "suite_energy_ci_basis": basis,
        "j_per_request": float(energy.sum() / total_requests) if total_requests else None,
        "j_per_output_token": joules_per_output_token(energy.sum(), total_tokens),
        "idle_power_w": float(runs["idle_power_w"].astype(float).mean()),
        "output_tokens_per_request": float(total_tokens / total_requests) if total_requests else None,
        "output_tok_per_s": float(runs["output_tok_per_s"].astype(float).mean()),
        "ttft_ms_p50": _percentile(runs["ttft_ms_list"], 50), "ttft_ms_p95": _percentile(runs["ttft_ms_list"], 95),
        "latency_ms_p50": _percentile(runs["latency_ms_list"], 50),
        "latency_ms_p95": _percentile(runs["latency_ms_list"], 95),
        "output_tokens_p50": every["median"], "output_tokens_p90": every["p90"], "output_tokens_max": every["max"],
        "decode_share": sum(shares) / len(shares) if shares else None,
    })
    for column in sorted(c for c in runs.columns if c.startswith("quality_") and "ratio" not in c):
        row[column] = float(runs[column].astype(float).mean())
    return row


def _length_stats(pairs: list[tuple[int, int | None]]) -> dict[str, Any]:
    return length_stats([t for t, _ in pairs], [limit for _, limit in pairs if limit is not None])


def length_table(runs):
    """One row per (group, variant, task) with the output-token distribution of its answers.

    Answers of every run of the variant in the group are pooled (trial 1 of each run, as
    scored); task "all" pools the tasks. Answer length is energy: the suite total is not
    normalised per token.
    """
    import pandas as pd

    rows = []
    for (group, variant), part in runs.groupby(["group", "variant"], sort=True):
        pooled: dict[str, list] = {}
        for by_task in part["lengths_by_task"]:
            for task, pairs in by_task.items():
                pooled.setdefault(task, []).extend(pairs)
        for task in sorted(pooled, key=lambda t: (t != "all", t)):
            rows.append({"group": group, "variant": variant, "task": task, **_length_stats(pooled[task])})
    return pd.DataFrame(rows)


def rank(table):
    """Orders each group as the competition ranks: variants keeping >= the gate threshold of
    the baseline's quality (point estimate, as a judge sees one run; the baseline keeps all
    of its own) by suite energy ascending, then the rest by suite energy. `rank` is set for
    the former only."""
    table = table.copy()
    point_pass = table["gate_point_pass"].astype(object).fillna(False).astype(bool)  # no gate: not ranked
    table["ranked"] = table["is_baseline"].astype(bool) | point_pass
    table = table.sort_values(["group", "ranked", "suite_energy_j"], ascending=[True, False, True], kind="stable")
    ranks = table[table["ranked"]].groupby("group").cumcount() + 1
    table["rank"] = ranks.reindex(table.index).astype("Int64")
    return table.reset_index(drop=True)


def build_board(results_dir: Path | str, *, model: str | None = None, hardware: str | None = None,
                workload: str | None = None) -> Board:
    """Loads, filters (exact model name, hardware substring, workload name), groups and ranks."""
    import pandas as pd

    ok, failed = load_runs(results_dir)
    runs, failed = (_filtered(pd.DataFrame(rows), model, hardware, workload) for rows in (ok, failed))
    if runs.empty:
        return Board(runs, pd.DataFrame(), failed, {}, pd.DataFrame())
    # Largest group first: G1 is the comparison most runs share.
    order = runs["setup"].value_counts(sort=True).index
    labels = {key: f"G{i + 1}" for i, key in enumerate(order)}
    runs["group"] = runs["setup"].map(labels)
    rows = [aggregate_variant(part) for _, part in runs.groupby(["group", "variant"], sort=True)]
    groups = {label: describe_setup(key) for key, label in labels.items()}
    return Board(runs, rank(pd.DataFrame(rows)), failed, groups, length_table(runs))


def _filtered(runs, model: str | None, hardware: str | None, workload: str | None):
    """The rows matching every given filter: exact model name, hardware substring, workload name."""
    import pandas as pd

    if runs.empty:
        return runs
    keep = pd.Series(True, index=runs.index)
    if model:
        keep &= runs["model"] == model
    if hardware:
        keep &= runs["hardware"].fillna("").str.contains(hardware, case=False, regex=False)
    if workload:
        keep &= runs["workload"] == workload
    return runs[keep].reset_index(drop=True)
