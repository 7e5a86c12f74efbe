"""Bad input that used to print a traceback: every command answers it in one line with exit 2.

Each case is a real command line. The answer must name the fix, come before any build or
server start, and leave the results already written untouched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.procs import run_cli
from tests.test_bad_input import _tree, existing_results  # noqa: F401 - the shared fixture

REPO = Path(__file__).resolve().parents[1]


def _run(*command: str) -> tuple[int, str]:
    proc = run_cli([sys.executable, *command], cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=600)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _one_line_refusal(code: int, output: str, says: str) -> None:
    assert code == 2, output[-3000:]
    assert "Traceback" not in output and len(output.splitlines()) == 1, output[-3000:]
    assert output.startswith("error:") and says in output, output


def _harness(results: Path, *overrides: str) -> tuple[int, str]:
    return _run("-m", "harness", *overrides, f"results_dir={results}", f"cache_dir={results.parent / 'cache'}",
                f"hydra.run.dir={results.parent / 'hydra'}")


@pytest.mark.parametrize(("case", "says"), [
    ("unknown lm-eval task", "no_such_task_xyz"),
    ("log-likelihood lm-eval task", "arc_easy"),
    ("meter that cannot start", "energy.meter=nvml"),
    ("workload path with no data", "workload.path"),
])
def test_run_refuses_in_one_line_before_any_work(tmp_path, existing_results, case, says):
    if case == "meter that cannot start" and Path("/dev/nvidia0").exists():
        pytest.skip("this machine has an NVIDIA GPU: the NVML meter starts")
    (tmp_path / "empty").mkdir()
    overrides = {
        "unknown lm-eval task": ["quality=lm_eval", "quality.lm_eval.tasks=[no_such_task_xyz]"],
        "log-likelihood lm-eval task": ["quality=lm_eval", "quality.lm_eval.tasks=[arc_easy]"],
        "meter that cannot start": ["energy.meter=nvml"],
        "workload path with no data": ["workload=chartqa", f"workload.path={tmp_path / 'empty'}"],
    }[case]
    before = _tree(existing_results)
    _one_line_refusal(*_harness(existing_results, "+variant=bf16", *overrides), says)
    assert _tree(existing_results) == before  # no run folder, no row
    assert not (tmp_path / "cache").exists()


def test_results_dir_that_cannot_be_a_folder_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("not a folder\n")
    # As a user types it: Hydra's own run folder goes under results_dir too.
    _one_line_refusal(*_run("-m", "harness", "+variant=bf16", f"results_dir={tmp_path / 'a-file' / 'results'}"),
                      "results_dir")
    assert not (tmp_path / "cache").exists()


def test_offline_evaluation_of_a_missing_folder(tmp_path):
    _one_line_refusal(*_run("-m", "harness.offline_eval", str(tmp_path / "no-such-checkpoint")), "no-such-checkpoint")


@pytest.mark.parametrize(("args", "says"), [
    (["{missing}", "{out}", "--scheme", "fp8_dynamic"], "no config.json"),
    (["{model}", "{out}", "--scheme", "flap", "--method", "magnitude", "--ratio", "1.5"], "ratio"),
])
def test_compress_cli_refuses_in_one_line(tmp_path, tiny_model_dir, args, says):
    paths = {"missing": tmp_path / "missing", "out": tmp_path / "out", "model": tiny_model_dir}
    _one_line_refusal(*_run("-m", "compress", *(a.format(**paths) for a in args)), says)
    assert not (tmp_path / "out").exists()
