"""Leaderboard filters (--model, --hardware, --workload) and which runs are left out of the ranking.

Each filter is checked both ways: a run it must keep is kept and a run it must drop is dropped.
The results folder is written by the harness's own writers (new_run_dir, write_result,
append_row, flat_row) from composed configs, collected provenance and a real energy meter.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from harness.config.schema import compose
from harness.energy.attribution import per_request_energy_j
from harness.energy.modeled import ModeledMeter
from harness.leaderboard.data import build_board
from harness.leaderboard.report import main
from harness.record.provenance import collect, gpu_info
from harness.record.result import (
    RunResult,
    append_row,
    config_dict,
    flat_row,
    new_run_dir,
    write_jsonl_atomic,
    write_result,
)
from harness.replay.client import RequestRecord
from harness.replay.stats import summarize_requests
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, load_trace

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
H100 = "NVIDIA H100 80GB HBM3"

# key -> (overrides, hardware, how the run ended)
RUNS = {
    "tiny_cpu": (["+variant=bf16"], "cpu", "ok"),
    "tiny_h100": (["+variant=fp8"], "h100", "ok"),
    "gemma3_h100": (["+variant=bf16", "model=gemma3_4b"], "h100", "ok"),
    "tiny_cpu_chartqa": (["+variant=fp8", "workload=chartqa"], "cpu", "ok"),
    "failed": (["+variant=w8a8_int8"], "cpu", "failed"),
    "gemma3_failed": (["+variant=fp8", "model=gemma3_4b", "workload=chartqa"], "h100", "failed"),
    "resumed": (["+variant=fp8_dynamic"], "cpu", "resumed"),
    "result_missing": (["+variant=w4a16_rtn"], "cpu", "result_missing"),
}
OK = {"tiny_cpu", "tiny_h100", "gemma3_h100", "tiny_cpu_chartqa"}


def _measure(paths, n_requests: int = 4):
    """A real modeled meter around a few made-up requests: windows, per-request energy, trace."""
    with ModeledMeter(hz=50) as meter:
        times = []
        for _ in range(n_requests + 2):
            time.sleep(0.01)  # spaces the samples so each has a power reading; no timing is asserted
            times.append(meter.sample_now())
        records = [RequestRecord(id=str(i), task=("colour", "corner")[i % 2], prompt_tokens=20, output_tokens=8,
                                 ttft_ms=5.0, latency_ms=(times[i + 2] - times[i + 1]) * 1000, itl_ms=(1.0,) * 7,
                                 output_text="red", finish_reason="stop", error=None,
                                 start_s=times[i + 1], end_s=times[i + 2]) for i in range(n_requests)]
        idle = meter.energy_between(times[0], times[1], name="idle")
        suite = meter.energy_between(times[1], times[-1], name="suite")
        per_request = per_request_energy_j(meter, records)
    meter.write_trace(paths.power_trace)
    write_jsonl_atomic(paths.requests, [asdict(r) for r in records])
    energy = {"source": meter.source, "windows": [idle.to_dict(), suite.to_dict()], "per_request_j": per_request}
    return energy, summarize_requests(records, suite.duration_s)


def _write_run(results: Path, overrides: list[str], provenance: dict, status: str, started: datetime) -> str:
    """One run recorded as the pipeline records it; returns its run id."""
    run_cfg = compose(overrides)
    paths = new_run_dir(results, run_cfg.name, started)
    common = {"run_id": paths.root.name, "variant": run_cfg.name, "started_at": started.isoformat(),
              "ended_at": (started + timedelta(seconds=30)).isoformat(), "config": config_dict(run_cfg), "serve": {}}
    if status == "failed":
        result = RunResult(**common, status="failed", provenance=provenance, energy={"source": None, "windows": []},
                           quality={}, latency=None, throughput=None, counts=None,
                           error="ServerError: vLLM exited with code 1 before it was ready\n(log tail)")
    else:
        energy, (latency, throughput, counts) = _measure(paths)
        if status == "resumed":
            provenance = {**provenance, "resume": {"resumed_from": "earlier", "reused_requests": 2,
                                                   "replayed_requests": 2}}
        quality = {"metric": "exact_match", "overall": 0.75, "overall_micro": 0.75,
                   "per_task": {"colour": 1.0, "corner": 0.5}}
        result = RunResult(**common, status="ok", provenance=provenance, energy=energy, quality=quality,
                           latency=latency, throughput=throughput, counts=counts)
    write_result(paths.root, result)
    append_row(results / "runs.jsonl", flat_row(result))
    if status == "result_missing":
        paths.result.unlink()  # the run directory lost its result.json (e.g. cleaned by hand)
    return paths.root.name


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A results folder holding every run of RUNS; returns it and key -> run id."""
    folder = tmp_path_factory.mktemp("results")
    cpu = collect()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        gpus = gpu_info(FakeNvml([FakeGpu(load_trace())]))
    provenance = {"cpu": {**cpu, "gpus": None}, "h100": {**cpu, "gpus": gpus}}
    run_ids = {key: _write_run(folder, overrides, provenance[hw], status, T0 + timedelta(minutes=i))
               for i, (key, (overrides, hw, status)) in enumerate(RUNS.items())}
    return folder, run_ids


def _kept(board, run_ids: dict[str, str]) -> set[str]:
    """Keys of the runs on the ranked table."""
    by_id = {v: k for k, v in run_ids.items()}
    on_table = set() if board.table.empty else {r for ids in board.table["run_ids"] for r in ids.split()}
    assert on_table == set(board.runs["run_id"]) if not board.runs.empty else not on_table
    return {by_id[r] for r in on_table}


def _failed(board, run_ids: dict[str, str]) -> dict[str, str]:
    """Key -> error of the runs listed as failed."""
    by_id = {v: k for k, v in run_ids.items()}
    return {by_id[r["run_id"]]: r["error"] for _, r in board.failed.iterrows()}


def test_without_filters_every_successful_run_is_ranked_and_the_rest_listed_with_why(results):
    folder, ids = results
    board = build_board(folder)
    assert _kept(board, ids) == OK
    failed = _failed(board, ids)
    assert set(failed) == {"failed", "gemma3_failed", "resumed", "result_missing"}
    assert failed["failed"] == "ServerError: vLLM exited with code 1 before it was ready"  # the headline only
    assert failed["resumed"].startswith("resumed run: energy covers part of the suite")
    assert failed["result_missing"].endswith(f"{ids['result_missing']}/result.json is missing")


def test_model_filter_keeps_that_model_and_drops_the_others(results):
    folder, ids = results
    assert _kept(build_board(folder, model="gemma-3-4b-it"), ids) == {"gemma3_h100"}
    assert _kept(build_board(folder, model="tiny-gemma4"), ids) == {"tiny_cpu", "tiny_h100", "tiny_cpu_chartqa"}


def test_model_filter_is_an_exact_name_not_a_part_of_one(results):
    folder, ids = results
    board = build_board(folder, model="tiny")
    assert _kept(board, ids) == set() and board.groups == {}


def test_hardware_filter_keeps_matching_hardware_and_drops_the_rest(results):
    folder, ids = results
    assert _kept(build_board(folder, hardware="h100"), ids) == {"tiny_h100", "gemma3_h100"}  # any case
    assert _kept(build_board(folder, hardware="CPU"), ids) == {"tiny_cpu", "tiny_cpu_chartqa"}
    cpu_model = collect()["host"]["cpu_model"]
    assert _kept(build_board(folder, hardware=cpu_model), ids) == {"tiny_cpu", "tiny_cpu_chartqa"}
    assert _kept(build_board(folder, hardware="A100"), ids) == set()


def test_workload_filter_keeps_that_workload_and_drops_the_others(results):
    folder, ids = results
    assert _kept(build_board(folder, workload="chartqa"), ids) == {"tiny_cpu_chartqa"}
    assert _kept(build_board(folder, workload="synthetic"), ids) == {"tiny_cpu", "tiny_h100", "gemma3_h100"}


def test_filters_combine_as_and(results):
    folder, ids = results
    assert _kept(build_board(folder, model="tiny-gemma4", hardware="cpu", workload="synthetic"), ids) == {"tiny_cpu"}
    assert _kept(build_board(folder, model="gemma-3-4b-it", hardware="cpu"), ids) == set()


def test_filtered_runs_are_grouped_only_with_what_is_left(results):
    folder, ids = results
    board = build_board(folder, hardware="h100")
    assert set(board.table["group"]) == set(board.groups)  # no group without a row
    assert all("hardware 1x " + H100 in description for description in board.groups.values())
    assert len(board.groups) == 2  # the two models are never ranked together


@pytest.mark.parametrize(("flags", "expected"), [
    (["--model", "gemma-3-4b-it"], {"gemma3_h100"}),
    (["--hardware", "h100"], {"tiny_h100", "gemma3_h100"}),
    (["--workload", "chartqa"], {"tiny_cpu_chartqa"}),
], ids=["model", "hardware", "workload"])
def test_cli_flags_filter_the_written_table(results, tmp_path, flags, expected):
    folder, ids = results
    out = tmp_path / "board"
    assert main(["--results", str(folder), *flags, "--out", str(out)]) == 0
    table = pd.read_csv(out / "leaderboard.csv")
    assert sorted(table["run_ids"]) == sorted(ids[key] for key in expected)
    markdown = (out / "leaderboard.md").read_text()
    assert all((ids[key] in markdown) == (key in expected) for key in OK)  # dropped runs are nowhere in the file


@pytest.mark.parametrize("flag", [{"model": "tiny-gemma4"}, {"hardware": "cpu"}, {"workload": "synthetic"}],
                         ids=["model", "hardware", "workload"])
def test_filters_also_apply_to_the_failed_runs_list(results, flag):
    folder, ids = results
    failed = _failed(build_board(folder, **flag), ids)
    assert "failed" in failed  # tiny-gemma4 on this CPU with the synthetic suite: matches every flag
    assert "gemma3_failed" not in failed  # gemma-3-4b-it on an H100 with chartqa: matches none
