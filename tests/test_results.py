"""Run directory files and runs.jsonl: atomic, append-safe across processes, torn-line tolerant."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from harness.record.result import (
    RunResult,
    append_row,
    flat_row,
    load_result,
    new_run_dir,
    read_rows,
    write_json_atomic,
    write_result,
    write_text_atomic,
    write_yaml_atomic,
)
from harness.replay.stats import Counts, Latency, Percentiles, Throughput
from harness.score.gate import gate
from harness.score.quality import ItemScore, aggregate

REPO_ROOT = Path(__file__).resolve().parent.parent


def _gate_dict() -> dict:
    baseline = aggregate("exact", [ItemScore(f"i{i}", "colour", float(i % 10 < 9), "scored") for i in range(50)])
    variant = aggregate("exact", [ItemScore(f"i{i}", "colour", float(i % 10 < 8), "scored") for i in range(50)])
    return gate(variant, baseline, seed=0).to_dict()


def make_result(**changes) -> RunResult:
    values = dict(
        run_id="20261125T230000Z-fp8",
        variant="fp8",
        status="ok",
        started_at="2026-11-25T23:00:00+00:00",
        ended_at="2026-11-25T23:05:00+00:00",
        config={"variant": "fp8", "sampling": {"temperature": 1.0, "top_p": 0.95, "top_k": 64}},
        provenance={"git": {"sha": "abc123", "dirty": False}, "versions": {"vllm": "0.32.0"}},
        serve={"settings": {"enforce_eager": True}, "fallbacks": []},
        energy={
            "source": "measured",
            "windows": [
                {"name": "idle", "duration_s": 10.0, "energy_j": 500.0, "avg_power_w": 50.0, "source": "measured"},
                {"name": "suite", "duration_s": 60.0, "energy_j": 9000.0, "avg_power_w": 150.0, "source": "measured"},
            ],
        },
        quality={"metric": "exact", "overall": 0.9, "overall_micro": 0.91, "per_task": {"colour": 0.9}},
        latency=Latency(Percentiles(20.0, 30.0, 45.0), Percentiles(200.0, 300.0, 410.0), Percentiles(5.0, 6.0, 9.0)),
        throughput=Throughput(120.5, 2.5),
        counts=Counts(requests=150, ok=149, errors=1, truncated=3, prompt_tokens=12000, output_tokens=7230),
        gate=_gate_dict(),
    )
    values.update(changes)
    return RunResult(**values)


def test_atomic_json_write_keeps_the_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomic(path, {"energy_j": 1.5})
    with pytest.raises(ValueError, match="cannot write as JSON"):
        write_json_atomic(path, {"energy_j": object()})
    with pytest.raises(ValueError, match="NaN"):
        write_json_atomic(path, {"energy_j": float("nan")})
    assert json.loads(path.read_text()) == {"energy_j": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left


def test_atomic_text_write_keeps_the_old_file_when_the_write_fails(tmp_path):
    path = tmp_path / "server.log"
    write_text_atomic(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, "half written \udcff")  # a lone surrogate cannot be encoded mid-write
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["server.log"]


def test_yaml_write_round_trips(tmp_path):
    import yaml

    data = {"model": "tiny", "serve": {"max_model_len": 2048, "enforce_eager": True}}
    path = write_yaml_atomic(tmp_path / "config.yaml", data)
    assert yaml.safe_load(path.read_text()) == data
    assert list(yaml.safe_load(path.read_text())) == ["model", "serve"]


def test_rows_round_trip_and_a_torn_last_line_is_skipped_and_reported(tmp_path, caplog):
    path = tmp_path / "runs.jsonl"
    append_row(path, {"run_id": "a", "suite_energy_j": 10.0})
    append_row(path, {"run_id": "b", "suite_energy_j": 12.0})
    with path.open("ab") as handle:
        handle.write(b'{"run_id": "c", "suite_ene')  # a writer killed mid-line
    with caplog.at_level(logging.WARNING, logger="harness.record.result"):
        rows = read_rows(path)
    assert [row["run_id"] for row in rows] == ["a", "b"]
    assert "line 3 skipped" in caplog.text
    # The next append starts on a fresh line instead of gluing itself to the torn one.
    append_row(path, {"run_id": "d"})
    assert [row["run_id"] for row in read_rows(path)] == ["a", "b", "d"]


def test_read_rows_of_a_missing_file_is_empty(tmp_path):
    assert read_rows(tmp_path / "runs.jsonl") == []


def test_append_row_refuses_values_that_are_not_json(tmp_path):
    path = tmp_path / "runs.jsonl"
    with pytest.raises(ValueError, match="not plain JSON"):
        append_row(path, {"energy_j": float("inf")})
    assert not path.exists()


APPENDER = """
import sys
from harness.record.result import append_row
worker = int(sys.argv[2])
for i in range(int(sys.argv[3])):
    append_row(sys.argv[1], {"worker": worker, "i": i, "pad": "x" * 20000})
"""


def test_concurrent_appends_from_several_processes_give_whole_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    workers, per_worker = 4, 40
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", APPENDER, str(path), str(w), str(per_worker)], cwd=REPO_ROOT, env=env)
        for w in range(workers)
    ]
    assert [proc.wait(timeout=120) for proc in procs] == [0] * workers
    lines = path.read_text().splitlines()
    assert len(lines) == workers * per_worker
    rows = [json.loads(line) for line in lines]  # raises if any two writes interleaved
    for w in range(workers):
        assert [row["i"] for row in rows if row["worker"] == w] == list(range(per_worker))


def test_result_round_trips_through_result_json(tmp_path):
    result = make_result()
    path = write_result(tmp_path, result)
    assert path == tmp_path / "result.json"
    assert json.loads(path.read_text())["schema_version"] == 1
    assert load_result(tmp_path) == result


def test_flat_row_has_headline_numbers_with_units_in_names():
    row = flat_row(make_result())
    assert row["suite_energy_j"] == 9000.0
    assert row["suite_duration_s"] == 60.0
    assert row["idle_energy_j"] == 500.0
    assert row["steady_energy_j"] is None  # no steady window in this run
    assert row["energy_source"] == "measured"
    assert row["quality_overall"] == 0.9
    gate = make_result().gate
    assert row["gate_verdict"] == gate.verdict
    assert row["gate_ratio"] == pytest.approx(8 / 9)
    assert row["gate_ratio_ci_low"] == gate.overall["ci_low"] < row["gate_ratio"]
    assert row["ttft_ms_p99"] == 45.0 and row["output_tok_per_s"] == 120.5
    assert row["git_sha"] == "abc123"
    json.dumps(row, allow_nan=False)


def test_flat_row_turns_nan_into_null_and_failed_runs_carry_their_error():
    failed = make_result(
        status="failed", error="server did not start: port 8000 in use",
        quality={}, gate=None, latency=None, throughput=Throughput(float("nan"), None), counts=None,
    )
    row = flat_row(failed)
    assert row["status"] == "failed" and row["error"].startswith("server did not start")
    assert row["output_tok_per_s"] is None and row["gate_verdict"] is None
    with pytest.raises(ValueError, match="needs `error`"):
        make_result(status="failed")
    with pytest.raises(ValueError, match="status must be one of"):
        make_result(status="done")


def test_load_result_refuses_other_schema_versions(tmp_path):
    data = make_result().to_dict() | {"schema_version": 2}
    write_json_atomic(tmp_path / "result.json", data)
    with pytest.raises(ValueError, match="schema_version 2"):
        load_result(tmp_path)
    with pytest.raises(FileNotFoundError, match="did not finish"):
        load_result(tmp_path / "nowhere")


def test_new_run_dir_never_reuses_a_directory(tmp_path):
    started = datetime(2026, 11, 25, 23, 0, 0, tzinfo=timezone.utc)
    first, second = new_run_dir(tmp_path, "fp8", started), new_run_dir(tmp_path, "fp8", started)
    assert first.root.name == "20261125T230000Z-fp8"
    assert second.root.name == "20261125T230000Z-fp8-1"
    assert first.result == first.root / "result.json"


def test_atomic_writes_are_readable_by_others(tmp_path):
    path = write_json_atomic(tmp_path / "result.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == 0o644
