"""The leaderboard built from real runs of the tiny model: grouping, ranking, figures, files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harness.leaderboard.data import build_board
from harness.leaderboard.plots import pareto_front
from harness.leaderboard.report import gate_text
from tests.real_runs import LIMIT, REPO, real_runs  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.server


def _result(results: Path, run_id: str) -> dict:
    return json.loads((results / "runs" / run_id / "result.json").read_text())


def _competition_group(board) -> str:
    return board.table.loc[board.table["variant"] == "bf16_seqs4", "group"].item()


def test_runs_with_other_sampling_are_grouped_apart_and_never_ranked_together(real_runs):
    board = build_board(real_runs)
    assert len(board.groups) == 2
    group = _competition_group(board)
    assert set(board.table.loc[board.table["group"] == group, "variant"]) == {"bf16", "bf16_seqs4"}
    greedy = board.table[board.table["group"] != group]
    assert list(greedy["variant"]) == ["bf16"] and greedy["rank"].tolist() == [1]
    assert "T=0.0" in board.groups[greedy["group"].item()] and "T=1.0" in board.groups[group]


def test_ranking_follows_the_gate_then_suite_energy(real_runs):
    board = build_board(real_runs)
    rows = board.table[board.table["group"] == _competition_group(board)]
    for _, row in rows.iterrows():
        gate = _result(real_runs, row["run_ids"].split()[-1])["gate"]  # the newest run's gate
        expected = gate is None or gate["point_pass"]  # None: the baseline, which keeps all its quality
        assert bool(row["ranked"]) == expected
        assert gate_text(row) == ("baseline" if gate is None else f"{gate['verdict']} (CI); point "
                                  + (">= threshold" if gate["point_pass"] else "< threshold"))
    ranked = rows[rows["ranked"]]
    assert ranked["suite_energy_j"].is_monotonic_increasing
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    assert rows["ranked"].tolist() == sorted(rows["ranked"].tolist(), reverse=True)  # ranked ones first


def _suite(results: Path, run_id: str) -> dict:
    return next(w for w in _result(results, run_id)["energy"]["windows"] if w["name"] == "suite")


def _trial_energies(results: Path, run_id: str) -> list[float]:
    return [t["suite"]["energy_j"] for t in _result(results, run_id)["energy"]["trials"]]


def test_figures_of_one_run_are_those_of_its_files(real_runs):
    board = build_board(real_runs)
    row = board.table[(board.table["variant"] == "bf16") & (board.table["group"] != _competition_group(board))].iloc[0]
    run_dir = real_runs / "runs" / row["run_ids"]
    result, suite = _result(real_runs, row["run_ids"]), _suite(real_runs, row["run_ids"])
    energies = _trial_energies(real_runs, row["run_ids"])
    requests = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert row["n_runs"] == 1 and len(energies) == 2 and row["suite_energy_ci_basis"] == "trials"
    assert row["suite_energy_j"] == pytest.approx(np.mean(energies))  # the mean over its trials
    assert row["energy_source"] == suite["source"] == "modeled"
    assert row["j_per_request"] == pytest.approx(np.mean(energies) / LIMIT)
    tokens = sum(r["output_tokens"] for r in requests)
    assert row["j_per_output_token"] == pytest.approx(np.mean(energies) / tokens)
    assert row["latency_ms_p95"] == pytest.approx(np.percentile([r["latency_ms"] for r in requests], 95))
    assert row["quality_overall"] == pytest.approx(result["quality"]["overall"])
    assert row["suite_energy_j_ci_low"] < row["suite_energy_j"] < row["suite_energy_j_ci_high"]


def test_repeated_runs_of_a_variant_are_averaged_over_all_their_trials(real_runs):
    from scipy import stats

    row = build_board(real_runs).table.query("variant == 'bf16_seqs4'").iloc[0]
    run_ids = row["run_ids"].split()
    energies = [j for run_id in run_ids for j in _trial_energies(real_runs, run_id)]
    assert row["n_runs"] == 2 and len(energies) == 4 and row["suite_energy_ci_basis"] == "trials"
    assert row["suite_energy_j"] == pytest.approx(np.mean(energies))
    run_means = [np.mean(_trial_energies(real_runs, run_id)) for run_id in run_ids]
    assert row["suite_energy_j_std"] == pytest.approx(np.std(run_means, ddof=1))
    half = stats.t.ppf(0.975, 3) * np.std(energies, ddof=1) / 2  # t-interval over the 4 trials
    assert row["suite_energy_j_ci_low"] == pytest.approx(np.mean(energies) - half)
    assert row["suite_energy_j_ci_high"] == pytest.approx(np.mean(energies) + half)


def test_rank_puts_gate_passing_variants_first_by_energy():
    from harness.leaderboard.data import rank

    table = pd.DataFrame({
        "group": ["G1"] * 4, "variant": ["a", "b", "c", "base"], "suite_energy_j": [5.0, 9.0, 3.0, 10.0],
        "is_baseline": [False, False, False, True], "gate_point_pass": [True, True, False, None],
    })
    ranked = rank(table)
    assert ranked["variant"].tolist() == ["a", "b", "base", "c"]
    assert ranked["rank"].tolist()[:3] == [1, 2, 3] and pd.isna(ranked["rank"].iloc[3])


def test_cli_writes_table_markdown_and_plots(real_runs, tmp_path):
    out = tmp_path / "board"
    proc = subprocess.run([sys.executable, "-m", "harness.leaderboard", "--results", str(real_runs), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bf16_seqs4" in proc.stdout and "differs in sampling" in proc.stdout
    table = pd.read_csv(out / "leaderboard.csv")
    assert sorted(table["variant"]) == ["bf16", "bf16", "bf16_seqs4"]  # repeats of one variant share a row
    assert set(table["energy_source"]) == {"modeled"}
    assert {"quality_colour", "quality_corner", "quality_line", "quality_tallest", "ttft_ms_p95"} <= set(table.columns)
    assert (table.loc[table["variant"] == "bf16", "gate"] == "baseline").all()
    markdown = (out / "leaderboard.md").read_text()
    assert markdown.count("| rank | variant |") == 2 and "Not ranked with G1: differs in sampling" in markdown
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 5  # per group: energy vs quality, energy by family; one power trace
    for png in pngs:
        with Image.open(png) as image:
            assert image.format == "PNG" and image.size[0] > 300
        assert f"]({png.name})" in markdown


def test_failed_runs_are_listed_apart(real_runs, tmp_path):
    from harness.record.result import RunResult, append_row, flat_row, new_run_dir, write_result

    results = tmp_path / "results"
    shutil.copytree(real_runs, results, ignore=shutil.ignore_patterns("cache"))
    started = datetime.now(timezone.utc)
    paths = new_run_dir(results, "fp8", started)
    failed = RunResult(run_id=paths.root.name, variant="fp8", status="failed", started_at=started.isoformat(),
                       ended_at=started.isoformat(), config={}, provenance={}, serve={}, energy={}, quality={},
                       latency=None, throughput=None, counts=None, error="ServerError: vLLM exited with code 1")
    write_result(paths.root, failed)
    append_row(results / "runs.jsonl", flat_row(failed))
    board = build_board(results)
    assert board.failed["variant"].tolist() == ["fp8"] and "ServerError" in board.failed["error"].item()
    assert "fp8" not in set(board.table["variant"])


def test_filters_select_runs(real_runs):
    assert build_board(real_runs, model="no-such-model").table.empty
    assert len(build_board(real_runs, hardware="CPU").table) == 3
    assert len(build_board(real_runs, workload="synthetic").table) == 3


def test_pareto_front_keeps_only_undominated_points():
    points = [(10.0, 0.5), (12.0, 0.9), (11.0, 0.4), (15.0, 0.9), (20.0, 0.95)]
    assert pareto_front(points) == [(10.0, 0.5), (12.0, 0.9), (20.0, 0.95)]


