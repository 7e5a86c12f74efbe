"""Hydra launchers: jobs side by side with one GPU each (joblib), SLURM and local submitit, composed and run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.config.schema import CONF_DIR
from tests.procs import run_cli

REPO = Path(__file__).resolve().parents[1]
GPU_LINE = re.compile(r"job (\d+) \(pid (\d+)\) runs on GPU (\S+) of")


def _compose(*overrides: str):
    """The full config (hydra node included) of a multirun job, as the CLI composes it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from harness.serve.gpu_slots import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True), cfg


def test_gpus_launcher_runs_one_job_per_gpu():
    launcher, cfg = _compose("hydra/launcher=gpus", "hydra.callbacks.gpu_pin.gpus=[0,1,2,3]", "+variant=fp8_dynamic")
    assert launcher["_target_"].endswith("JoblibLauncher")
    assert launcher["n_jobs"] == 4
    assert cfg.hydra.callbacks.gpu_pin._target_ == "harness.serve.gpu_slots.PinGpu"
    assert cfg.name == "fp8_dynamic"


def test_gpus_launcher_counts_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5,7")
    assert _compose("hydra/launcher=gpus")[0]["n_jobs"] == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert _compose("hydra/launcher=gpus")[0]["n_jobs"] == 1  # no GPU: one job at a time


def test_slurm_launcher_asks_one_gpu_per_job():
    launcher, cfg = _compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "+variant=w8a8_int8")
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1 and launcher["tasks_per_node"] == 1
    assert launcher["timeout_min"] >= 60 and launcher["mem_gb"] > 0
    assert cfg.name == "w8a8_int8"


def _sweep(tmp_path: Path, launcher: str, limits: str) -> tuple[subprocess.CompletedProcess, Path]:
    """A real multirun of jobs refused at configuration (workload.limit < 0): seconds per job."""
    sweep = tmp_path / "sweep"
    proc = run_cli([sys.executable, "-m", "harness", "-m", f"hydra/launcher={launcher}",
                    "hydra.callbacks.gpu_pin.gpus=[0,1]", "+variant=bf16", f"workload.limit={limits}",
                    f"results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={sweep}"],
                   cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, sweep


def _gpu_of_jobs(sweep: Path) -> dict[int, tuple[int, str]]:
    """job number -> (worker pid, GPU), from each job's own log."""
    found = {}
    for log in sweep.glob("*/__main__.log"):
        for job, pid, gpu in GPU_LINE.findall(log.read_text()):
            found[int(job)] = (int(pid), gpu)
    return found


def test_joblib_sweep_runs_jobs_in_parallel_workers_each_on_its_own_gpu(tmp_path):
    proc, sweep = _sweep(tmp_path, "gpus", "-1,-2,-3,-4")
    assert "n_jobs=2" in proc.stdout + proc.stderr
    jobs = _gpu_of_jobs(sweep)
    assert sorted(jobs) == [0, 1, 2, 3]
    assert {gpu for _, gpu in jobs.values()} <= {"0", "1"}
    gpu_of_pid = {}
    for pid, gpu in jobs.values():
        assert gpu_of_pid.setdefault(pid, gpu) == gpu  # a worker keeps its GPU for every job
    assert len(set(gpu_of_pid.values())) == len(gpu_of_pid)  # no two workers share one
    assert os.getpid() not in gpu_of_pid  # jobs ran in worker processes
    # The failure table is assembled from every worker's outcome.
    outcomes = [json.loads(line) for line in (sweep / "outcomes.jsonl").read_text().splitlines()]
    assert len(outcomes) == 4 and all(o["status"] == "failed" for o in outcomes)
    assert "0 ok, 4 failed" in proc.stdout


def test_submitit_local_sweep_runs_each_job_in_its_own_process(tmp_path):
    proc, sweep = _sweep(tmp_path, "submitit_local", "-1,-2")
    jobs = _gpu_of_jobs(sweep)
    assert sorted(jobs) == [0, 1] and {gpu for _, gpu in jobs.values()} <= {"0", "1"}
    assert "0 ok, 2 failed" in proc.stdout
    errors = sorted(json.loads(line)["error"] for line in (sweep / "outcomes.jsonl").read_text().splitlines())
    assert errors == ["ConfigError: workload.limit must be > 0, got -1",
                      "ConfigError: workload.limit must be > 0, got -2"]


LEASE_SCRIPT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.serve.gpu_slots import lease_gpu
    try:
        gpu = lease_gpu(["a", "b"], Path(sys.argv[1]), wait_s=float(sys.argv[2]))
    except TimeoutError as err:
        print("timeout:", err, flush=True)
        sys.exit(0)
    print(gpu, flush=True)
    time.sleep(float(sys.argv[3]))
""")


def test_gpu_leases_are_exclusive_between_processes(tmp_path):
    def start(wait_s: float, hold_s: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", LEASE_SCRIPT, str(tmp_path), str(wait_s), str(hold_s)],
                                cwd=REPO, stdout=subprocess.PIPE, text=True)

    first, second = start(0, 600), start(0, 600)  # they hold their leases until killed
    try:
        gpus = {first.stdout.readline().strip(), second.stdout.readline().strip()}
        assert gpus == {"a", "b"}
        third = start(0.5, 0)
        out, _ = third.communicate(timeout=120)
        assert out.startswith("timeout:") and "hydra.launcher.n_jobs" in out
    finally:
        for proc in (first, second):
            proc.kill()
            proc.wait()
    after = start(0, 0)  # the holders exited: their leases are free again
    assert after.communicate(timeout=120)[0].strip() in {"a", "b"}
