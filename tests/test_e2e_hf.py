"""A real task end to end: `python -m harness workload=chartqa workload.path=LOCAL` through the real stack."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hf_tasks import chartqa
from tests.test_e2e import REPO, harness

LIMIT = 4


@pytest.fixture(scope="module")
def chartqa_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    data, rows = chartqa(tmp_path_factory.mktemp("chartqa"))
    results = tmp_path_factory.mktemp("results")
    proc = harness("+variant=bf16", "trials=1", "workload=chartqa", f"workload.path={data}", f"workload.limit={LIMIT}",
                   "energy.idle_s=1", f"results_dir={results}", f"cache_dir={results / 'cache'}",
                   f"hydra.run.dir={results / 'hydra'}", cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results, data, rows


@pytest.mark.server
def test_result_carries_the_workload_metric_and_per_item_scores(chartqa_run) -> None:
    results, data, rows = chartqa_run
    [row] = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    assert row["status"] == "ok" and row["requests"] == LIMIT and row["quality_metric"] == "relaxed"
    run_dir = results / "runs" / row["run_id"]
    result = json.loads((run_dir / "result.json").read_text())
    workload = result["config"]["workload"]
    assert workload["name"] == "chartqa" and workload["dataset"] == "HuggingFaceM4/ChartQA"
    assert workload["path"] == str(data) and workload["metric"] == "relaxed"
    quality = result["quality"]
    assert quality["metric"] == "relaxed" and quality["counts"]["items"] == LIMIT
    requests = {r["id"]: r for r in map(json.loads, (run_dir / "requests.jsonl").read_text().splitlines())}
    items = quality["items"]
    assert {i["id"] for i in items} == set(requests) and len(items) == LIMIT
    assert all(i["task"] == "chartqa" and 0.0 <= i["score"] <= 1.0 for i in items)
    assert all(r["error"] is None and r["output_tokens"] > 0 for r in requests.values())
    assert quality["overall"] == pytest.approx(sum(i["score"] for i in items) / LIMIT)


def test_a_missing_column_stops_before_any_build(tmp_path) -> None:
    data, _ = chartqa(tmp_path / "chartqa")
    cache = tmp_path / "cache"
    proc = harness("+variant=bf16", "trials=1", "workload=chartqa", f"workload.path={data}",
                   "workload.columns.question=question",
                   f"results_dir={tmp_path}", f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'hydra'}",
                   cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "set workload.columns" in proc.stdout and "'query'" in proc.stdout
    assert not cache.exists() and not (tmp_path / "runs").exists()
