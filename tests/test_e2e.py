"""The main job end to end: real CLI, real vLLM server, real HTTP, files checked for content."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LIMIT = 20  # five items per family; the suite then lasts > 1 s, the shortest steady window


def harness(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`+variant=bf16_seqs4` with no baseline yet: the bf16 baseline runs first, then it.

    Run as the README runs the main job: from a working folder, with the default relative
    results/ and cache folders (relative paths must reach the server, which runs elsewhere).
    """
    work = tmp_path_factory.mktemp("work")
    proc = harness("+variant=bf16_seqs4", f"workload.limit={LIMIT}", "energy.idle_s=1", cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work / "results", proc


def _runs(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]


def test_baseline_runs_first_and_both_rows_are_recorded(two_runs):
    results, _ = two_runs
    rows = _runs(results)
    assert [r["variant"] for r in rows] == ["bf16", "bf16_seqs4"]
    assert all(r["status"] == "ok" and r["requests"] == LIMIT for r in rows)
    assert all(r["energy_source"] == "modeled" for r in rows)  # no NVML or RAPL here
    assert all(r["suite_energy_j"] > 0 and r["output_tokens"] > 0 for r in rows)


def test_run_directory_holds_every_artifact_with_content(two_runs):
    results, _ = two_runs
    run_dir = results / "runs" / _runs(results)[1]["run_id"]
    vllm_cfg = yaml.safe_load((run_dir / "vllm_config.yaml").read_text())
    assert vllm_cfg["max-num-seqs"] == 4 and Path(vllm_cfg["model"]).is_dir()
    assert "api-key" not in vllm_cfg and "port" not in vllm_cfg
    assert (run_dir / "server.log").stat().st_size > 0
    requests = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(requests) == LIMIT
    assert {r["task"] for r in requests} == {"colour", "corner", "tallest", "line"}
    assert all(r["error"] is None and r["output_tokens"] > 0 and r["ttft_ms"] <= r["latency_ms"] for r in requests)
    trace = (run_dir / "power_trace.csv").read_text().splitlines()
    assert len(trace) > 5
    result = json.loads((run_dir / "result.json").read_text())
    assert result["schema_version"] == 1 and result["provenance"]["git"]["sha"]
    windows = {w["name"]: w for w in result["energy"]["windows"]}
    assert set(windows) == {"idle", "suite", "steady"}
    assert all(w["source"] == "modeled" for w in windows.values())
    assert windows["idle"]["duration_s"] == pytest.approx(1.0, abs=0.3)
    assert windows["steady"]["duration_s"] <= windows["suite"]["duration_s"] + 1e-6
    assert set(result["quality"]["per_task"]) == {"colour", "corner", "tallest", "line"}


def test_variant_is_gated_against_the_baseline_run(two_runs):
    results, proc = two_runs
    base, variant = _runs(results)
    result = json.loads((results / "runs" / variant["run_id"] / "result.json").read_text())
    gate = result["gate"]
    assert gate["baseline_run_id"] == base["run_id"]
    assert gate["verdict"] in {"pass", "fail", "uncertain"}
    low, high = gate["overall"]["ci_low"], gate["overall"]["ci_high"]
    assert low <= gate["overall"]["point"] <= high
    assert "modeled" in proc.stdout  # the summary labels the energy source


def test_unknown_variant_lists_the_variants(tmp_path):
    proc = harness("+variant=nope", f"hydra.run.dir={tmp_path}", cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert "fp8" in proc.stdout + proc.stderr and "bf16" in proc.stdout + proc.stderr


def test_missing_kernel_stops_before_serving_and_scores_the_checkpoint_offline(tmp_path):
    from harness.platform import detect_platform

    if detect_platform().avx512:
        pytest.skip("this CPU has the AVX-512 int4 kernel")
    cache = tmp_path / "cache"
    proc = harness("+variant=w4a16_rtn", "workload.limit=12", f"results_dir={tmp_path}", f"cache_dir={cache}",
                   f"hydra.run.dir={tmp_path / 'hydra'}", cwd=REPO, timeout=600)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert "AVX-512" in last and "Offline check" in last and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("runs/*/vllm_config.yaml")), "no server may have been started"
    assert not list(tmp_path.glob("runs/*-bf16*")), "an offline score is not gated: no baseline run"
    (run_dir,) = tmp_path.glob("runs/*-w4a16_rtn")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "offline" and "cpu_gemm_wna16" in result["error"]
    assert result["energy"]["windows"] == [] and result["gate"] is None
    assert len(result["quality"]["items"]) == 12
    assert result["quality"]["overall"] > 0.6, "the int4 tiny model still answers the suite"
    assert list(cache.rglob("weight_packed*")) or list(cache.rglob("*.safetensors")), "the checkpoint was built"
