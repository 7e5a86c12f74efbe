"""`python -m harness ... quality=lm_eval` end to end: baseline and variant scored by lm-eval, gated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_e2e import REPO, harness

LIMIT = 8


@pytest.fixture(scope="module")
def lm_eval_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`+variant=bf16_seqs4 quality=lm_eval` with no baseline yet: bf16 runs first, the same way."""
    results = tmp_path_factory.mktemp("results")
    proc = harness("+variant=bf16_seqs4", "quality=lm_eval", f"workload.limit={LIMIT}", "energy.idle_s=1", "trials=1",
                   f"results_dir={results}", f"cache_dir={results / 'cache'}",
                   f"hydra.run.dir={results / 'hydra'}", cwd=REPO, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results


def _result(results: Path, index: int) -> tuple[Path, dict]:
    rows = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    run_dir = results / "runs" / rows[index]["run_id"]
    return run_dir, json.loads((run_dir / "result.json").read_text())


@pytest.mark.server
def test_result_holds_the_lm_eval_window_and_quality(lm_eval_runs):
    run_dir, result = _result(lm_eval_runs, 1)
    assert result["variant"] == "bf16_seqs4" and result["status"] == "ok"
    windows = {w["name"]: w for w in result["energy"]["windows"]}
    assert {"idle", "suite", "lm_eval"} <= set(windows)
    assert windows["lm_eval"]["source"] == "modeled" and windows["lm_eval"]["energy_j"] > 0
    assert windows["lm_eval"]["start_s"] >= windows["suite"]["end_s"]  # after the replay, same server
    quality = result["quality"]
    assert quality["engine"] == "lm_eval" and quality["counts"]["items"] == LIMIT
    assert quality["lm_eval"]["energy_j"] == windows["lm_eval"]["energy_j"]
    samples = (run_dir / quality["lm_eval"]["samples_file"]).read_text()
    assert len(samples.splitlines()) == LIMIT
    scores = [json.loads(line)["score"] for line in samples.splitlines()]
    assert quality["overall_micro"] == pytest.approx(sum(scores) / LIMIT)
    assert "Bearer" not in samples and "Bearer" not in json.dumps(result)


@pytest.mark.server
def test_variant_is_gated_against_the_lm_eval_baseline(lm_eval_runs):
    _, base = _result(lm_eval_runs, 0)
    _, variant = _result(lm_eval_runs, 1)
    assert base["variant"] == "bf16" and base["quality"]["engine"] == "lm_eval"
    gate = variant["gate"]
    assert gate["baseline_run_id"] == base["run_id"]
    assert gate["verdict"] in {"pass", "fail", "uncertain"}
    assert gate["overall"]["ci_low"] <= gate["overall"]["point"] <= gate["overall"]["ci_high"]
