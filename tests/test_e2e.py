"""The README's main job end to end: real CLI, real vLLM server, real HTTP, files checked for content."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.energy.steady import FLAG_SHORT_STEADY, STEADY_MIN_S
from tests.procs import run_cli

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = ("+variant=fp8",)  # the README's main command, exactly as written there
SUITE = 20  # conf/workload/synthetic.yaml limit
TRIALS = 3  # conf/config.yaml trials
IDLE_S = 5.0  # conf/energy/default.yaml idle_s


def harness(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return run_cli([sys.executable, "-m", "harness", *args], cwd=cwd, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def main_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """`python -m harness +variant=fp8` from an empty working folder, as the README runs it.

    No override: the default relative results/ and .cache/ (relative paths must reach the
    server, which runs elsewhere), the default suite and idle window. With no baseline yet,
    bf16 runs first; then fp8 is built, cached, served and gated against it.
    """
    work = tmp_path_factory.mktemp("work")
    proc = harness(*MAIN_JOB, cwd=work)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc


def _runs(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]


def _result(work: Path, row: dict) -> dict:
    return json.loads((work / "results" / "runs" / row["run_id"] / "result.json").read_text())


@pytest.mark.server
def test_baseline_runs_first_and_both_rows_are_recorded(main_job):
    work, _ = main_job
    rows = _runs(work / "results")
    assert [r["variant"] for r in rows] == ["bf16", "fp8"]
    assert all(r["status"] == "ok" and r["requests"] == SUITE for r in rows)
    assert all(r["energy_source"] == "modeled" for r in rows)  # no NVML or RAPL here
    assert all(r["suite_energy_j"] > 0 and r["output_tokens"] > 0 for r in rows)


@pytest.mark.server
def test_fp8_is_built_into_the_relative_cache_and_served_from_it(main_job):
    work, _ = main_job
    fp8 = _runs(work / "results")[1]
    vllm_cfg = yaml.safe_load((work / "results" / "runs" / fp8["run_id"] / "vllm_config.yaml").read_text())
    model = Path(vllm_cfg["model"])
    assert model.is_dir() and model.is_relative_to(work / ".cache" / "variants")
    quant = json.loads((model / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "compressed-tensors"
    weights = {g["weights"]["type"] for g in quant["config_groups"].values()}
    assert weights == {"float"} and all(g["weights"]["num_bits"] == 8 for g in quant["config_groups"].values())
    # What the CPU could not serve as asked is recorded, with the reason, not hidden.
    serve = _result(work, fp8)["serve"]
    fell_back = {f["setting"] for f in serve["fallbacks"]}
    assert "weights" in fell_back  # CPU vLLM has no per-tensor FP8 weight kernel
    assert serve["effective"]["kv_cache_dtype"] == vllm_cfg.get("kv-cache-dtype", "auto")


@pytest.mark.server
def test_run_directory_holds_every_artifact_with_content(main_job):
    work, _ = main_job
    run_dir = work / "results" / "runs" / _runs(work / "results")[1]["run_id"]
    vllm_cfg = yaml.safe_load((run_dir / "vllm_config.yaml").read_text())
    assert vllm_cfg["max-num-seqs"] == 32
    assert "api-key" not in vllm_cfg and "port" not in vllm_cfg
    assert (run_dir / "server.log").stat().st_size > 0
    requests = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert len(requests) == SUITE
    assert {r["task"] for r in requests} == {"colour", "corner", "tallest", "line"}
    assert all(r["error"] is None and r["output_tokens"] > 0 and r["ttft_ms"] <= r["latency_ms"] for r in requests)
    trace = (run_dir / "power_trace.csv").read_text().splitlines()
    assert len(trace) > 5
    result = json.loads((run_dir / "result.json").read_text())
    assert result["schema_version"] == 1 and result["provenance"]["git"]["sha"]
    windows = {w["name"]: w for w in result["energy"]["windows"]}
    assert set(windows) == {"idle", "suite", "steady"}
    assert all(w["source"] == "modeled" for w in windows.values())
    assert windows["idle"]["duration_s"] >= IDLE_S  # a sleep never ends early
    steady, suite = windows["steady"], windows["suite"]
    assert suite["start_s"] <= steady["start_s"] < steady["end_s"] <= suite["end_s"] + 1e-6
    # A short steady window is kept and flagged, never silently dropped (a fast CPU finishes quickly).
    assert (FLAG_SHORT_STEADY in steady["flags"]) == (steady["duration_s"] < STEADY_MIN_S)
    assert set(result["quality"]["per_task"]) == {"colour", "corner", "tallest", "line"}
    # Thinking is off by default: no answer of the run may open with a Gemma 4 thought block.
    assert result["thinking"]["enabled"] is False and result["thinking"]["answers"] == SUITE
    assert result["thinking"]["answers_with_thought"] == 0 and result["thinking"]["flags"] == []


@pytest.mark.server
def test_the_main_job_prints_no_line_per_request(main_job):
    """Each arm sends the suite once per trial, yet the console shows the run, not its requests."""
    _, proc = main_job
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines if "chat/completions" in line or "HTTP Request" in line]
    assert len(lines) < 2 * TRIALS * SUITE  # fewer lines than requests sent, whatever else is printed


@pytest.mark.server
def test_variant_is_gated_against_the_baseline_run(main_job):
    work, proc = main_job
    base, variant = _runs(work / "results")
    gate = _result(work, variant)["gate"]
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
    from harness.serve.capabilities import detect_platform

    if detect_platform().avx512:
        pytest.skip("this CPU has the AVX-512 int4 kernel")
    cache = tmp_path / "cache"
    proc = harness("+variant=w4a16_rtn", "trials=1", "workload.limit=12", f"results_dir={tmp_path}",
                   f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'hydra'}", cwd=REPO, timeout=600)
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


@pytest.mark.server
def test_int4_is_served_by_vllm_on_an_avx512_cpu(main_job, tmp_path):
    """The AVX-512 half of the int4 plan: built, served through vLLM, measured and gated (AVX2: the test above)."""
    from harness.serve.capabilities import detect_platform

    if not detect_platform().avx512:
        pytest.skip("this CPU has no AVX-512 int4 kernel: the offline path is tested instead")
    work, _ = main_job
    results = shutil.copytree(work / "results", tmp_path / "results")  # its bf16 run is the baseline
    proc = harness("+variant=w4a16_rtn", "trials=1", f"results_dir={results}", f"cache_dir={tmp_path / 'cache'}",
                   f"hydra.run.dir={tmp_path / 'hydra'}", cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = _runs(results)
    assert [r["variant"] for r in rows] == ["bf16", "fp8", "bf16", "w4a16_rtn"]  # its own baseline, alongside
    row = rows[-1]
    assert row["status"] == "ok" and row["requests"] == SUITE and row["request_errors"] == 0
    run_dir = results / "runs" / row["run_id"]
    model = Path(yaml.safe_load((run_dir / "vllm_config.yaml").read_text())["model"])
    quant = json.loads((model / "config.json").read_text())["quantization_config"]
    assert quant["format"] == "pack-quantized"
    result = json.loads((run_dir / "result.json").read_text())
    assert result["gate"]["baseline_run_id"] == rows[-2]["run_id"]
    assert {w["name"] for w in result["energy"]["windows"]} >= {"idle", "suite"}


@pytest.mark.server
def test_trials_interleave_with_the_baseline_from_cold_caches(main_job):
    """The default main job measures each side in TRIALS trials, B V V B B V, each from emptied caches."""
    work, proc = main_job
    base, variant = (_result(work, row) for row in _runs(work / "results"))
    positions = {(r["variant"], t["trial"]): t["position"] for r in (base, variant) for t in r["energy"]["trials"]}
    assert sorted(positions.values()) == list(range(2 * TRIALS))
    order = [name for name, _ in sorted(positions, key=positions.get)]
    assert order[:4] == ["bf16", "fp8", "fp8", "bf16"]
    for result in (base, variant):
        trials = result["energy"]["trials"]
        assert [t["trial"] for t in trials] == list(range(1, TRIALS + 1))
        assert all(t["suite"]["name"] == "suite" and t["suite"]["energy_j"] > 0 for t in trials)
        # Every trial looked up as much as the first and hit no more: the caches were really emptied.
        first = trials[0]["cache"]
        assert first["prefix_queries"] > 0 and first["mm_queries"] == SUITE
        assert all(t["cache"]["prefix_hits"] <= first["prefix_hits"] and t["cache"]["mm_hits"] == 0 for t in trials)
        assert result["serve"]["cache_config"]["enable_prefix_caching"] == "True"  # what vLLM used, not null
        assert all(t["active_j"] < t["suite"]["energy_j"] for t in trials)  # idle power x time taken off
    gate = variant["gate"]["energy"]
    assert gate["trials"] == TRIALS and gate["basis"] == "suite_window_per_trial"
    assert gate["variant_j"] == [t["suite"]["energy_j"] for t in variant["energy"]["trials"]]
    assert gate["ci_low"] <= gate["ratio"] <= gate["ci_high"]
    assert f"{TRIALS} trials" in proc.stdout and "interval over trials" in proc.stdout.replace("\n", " ")


@pytest.mark.server
def test_seeds_come_from_sample_ids_and_warm_up_stays_outside_the_suite(main_job):
    from harness.replay.client import sample_seed

    work, _ = main_job
    seeds = []
    for row in _runs(work / "results"):
        requests = [json.loads(line) for line in (work / "results" / "runs" / row["run_id"] / "requests.jsonl")
                    .read_text().splitlines()]
        assert all(r["seed"] == sample_seed(0, r["id"]) for r in requests)
        seeds.append({r["id"]: r["seed"] for r in requests})
    assert seeds[0] == seeds[1]  # baseline and variant sample alike
    assert len(set(seeds[0].values())) == SUITE
