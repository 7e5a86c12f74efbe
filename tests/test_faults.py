"""Faults: the server killed mid-replay, resuming the failed run, too many errors, a sweep with failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import group_alive, run_cli, spawn

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[1]
LIMIT = 12
KILL_AFTER = 3  # completed requests on disk before the server is killed


def _command(results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness", "+variant=bf16", f"workload.limit={LIMIT}", "energy.idle_s=1", "trials=1",
            f"results_dir={results}", f"cache_dir={results / 'cache'}", f"hydra.run.dir={results / 'hydra'}", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _rows(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _server_pgid(config_path: Path) -> int | None:
    """The process group of the process started with --config config_path, as `ps` would show it."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if str(config_path).encode() in argv:
                return os.getpgid(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return None


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory):
    """Runs bf16 through the CLI and SIGKILLs the server's process group after KILL_AFTER requests."""
    results = tmp_path_factory.mktemp("results")
    # Forced output length: the suite cannot finish before the kill, however fast the machine.
    slow = ("sampling.ignore_eos=true", "sampling.max_tokens=200")
    with spawn(_command(results, *slow), cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
               text=True) as proc:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            run_dirs = list((results / "runs").glob("*-bf16*"))
            if run_dirs and len(_lines(run_dirs[0] / "requests.jsonl")) >= KILL_AFTER:
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before the kill:\n{proc.stdout.read()[-3000:]}"
        pgid = _server_pgid(run_dirs[0] / "vllm_config.yaml")
        assert pgid is not None, "no vLLM server process found for the run"
        os.killpg(pgid, signal.SIGKILL)
        killed_at = time.monotonic()
        output, _ = proc.communicate(timeout=600)  # a hang guard, not a speed requirement
        stop_s = time.monotonic() - killed_at
    print(f"server killed -> harness exited in {stop_s:.2f} s")  # a figure for bench/, not an assertion
    return results, run_dirs[0], pgid, proc.returncode, output


def test_killed_server_stops_the_run_in_one_message(killed_run):
    results, run_dir, pgid, code, output = killed_run
    assert code == 2, output[-3000:]
    assert "vLLM server exited" in output and output.count("\n") < 80
    assert not group_alive(pgid)


def test_killed_run_is_recorded_failed_and_keeps_completed_work(killed_run):
    results, run_dir, *_ = killed_run
    (row,) = _rows(results)
    assert row["status"] == "failed" and "vLLM server exited" in row["error"] and "while serving" in row["error"]
    result = json.loads((run_dir / "result.json").read_text())
    assert "server.log" in result["error"]  # the reason carries the server log tail
    windows = {w["name"]: w for w in result["energy"]["windows"]}
    assert set(windows) == {"idle", "suite_partial"}
    assert windows["suite_partial"]["energy_j"] > 0
    requests = _lines(run_dir / "requests.jsonl")
    assert KILL_AFTER <= len(requests) < LIMIT
    assert all(r["error"] is None and r["output_tokens"] > 0 for r in requests)
    assert len({r["id"] for r in requests}) == len(requests)
    # Quality is scored over the answered samples only, every one of them scored.
    assert len(result["quality"]["items"]) == len(requests) and result["quality"]["counts"].get("missing", 0) == 0


def test_rerun_resumes_the_failed_run(killed_run):
    results, run_dir, *_ = killed_run
    done_before = [r["id"] for r in _lines(run_dir / "requests.jsonl")]
    proc = run_cli(_command(results, "sampling.ignore_eos=true", "sampling.max_tokens=200"), cwd=REPO, env=_env(),
                   timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"resuming failed run {run_dir.name}" in proc.stdout
    failed, resumed = _rows(results)
    assert resumed["status"] == "ok" and resumed["requests"] == LIMIT - len(done_before)
    new_dir = results / "runs" / resumed["run_id"]
    result = json.loads((new_dir / "result.json").read_text())
    assert result["provenance"]["resume"] == {"resumed_from": run_dir.name, "reused_requests": len(done_before),
                                              "replayed_requests": LIMIT - len(done_before)}
    requests = _lines(new_dir / "requests.jsonl")
    assert len(requests) == LIMIT and len({r["id"] for r in requests}) == LIMIT
    kept = {r["id"]: r for r in _lines(run_dir / "requests.jsonl")}
    assert all(r == kept[r["id"]] for r in requests if r["id"] in kept)  # reused as they were
    assert len(result["quality"]["items"]) == LIMIT  # scored over every sample


def test_sweep_goes_on_past_a_job_that_fails_at_run_time(tmp_path):
    # Job 0 asks for max_tokens beyond the model's context: its server starts, then refuses every
    # request, so the job fails at run time (workload.max_error_rate); job 1 must still run.
    sweep = tmp_path / "sweep"
    proc = run_cli([sys.executable, "-m", "harness", "-m", "+variant=bf16", "sampling.max_tokens=1000000,16",
                    "workload.limit=4", "workload.warmup_requests=0", "energy.idle_s=1", f"results_dir={tmp_path}",
                    f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"],
                   cwd=REPO, env=_env(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "job 0 (bf16) failed" in proc.stdout and "1 ok, 1 failed" in proc.stdout
    assert "workload.max_error_rate" in proc.stdout
    failed, done = _rows(tmp_path)
    assert failed["status"] == "failed" and failed["error"].startswith("RunFailed")
    assert failed["request_errors"] == 4 and failed["gate_verdict"] is None
    assert done["status"] == "ok" and done["requests"] == 4 and done["request_errors"] == 0


def test_sweep_goes_on_after_a_failed_job_and_lists_the_failures(tmp_path):
    proc = run_cli([sys.executable, "-m", "harness", "-m", "+variant=bf16", "workload.limit=-1,-2",
                    f"results_dir={tmp_path}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                   cwd=REPO, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "job 0 (bf16) failed" in proc.stdout and "job 1 (bf16) failed" in proc.stdout
    assert "0 ok, 2 failed" in proc.stdout
    assert "workload.limit must be > 0, got -2" in proc.stdout.replace("\n", " ").replace("│", " ")
