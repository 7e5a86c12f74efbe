"""Trials on the real server: trial_server=fresh starts a server per trial, each measured on its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.procs import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.server
def test_fresh_server_trials_each_have_their_own_idle_window_and_trace(tmp_path):
    results = tmp_path / "results"
    proc = run_cli([sys.executable, "-m", "harness", "+variant=bf16", "trials=2", "trial_server=fresh",
                    "workload.limit=4", "energy.idle_s=1", f"results_dir={results}", f"cache_dir={tmp_path / 'c'}",
                    f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (row,) = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    run_dir = results / "runs" / row["run_id"]
    result = json.loads((run_dir / "result.json").read_text())
    trials = result["energy"]["trials"]
    assert [t["trial"] for t in trials] == [1, 2] and row["trials"] == 2
    # Each trial ran on its own server: its own idle window before it, its own power trace.
    assert (run_dir / "power_trace.csv").is_file() and (run_dir / "power_trace.trial2.csv").is_file()
    assert trials[0]["suite"]["end_s"] < trials[1]["suite"]["start_s"]
    assert all(t["cache"]["prefix_hits"] <= trials[0]["cache"]["prefix_hits"] for t in trials)
    assert all(t["idle_w"] and t["idle_w"] > 0 for t in trials)
    # The baseline measured alone makes no comparison.
    assert result["gate"] is None and "Trials: 2" in proc.stdout
