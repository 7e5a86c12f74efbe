"""A GGUF variant's submission: made from a real llama.cpp run on the tiny model (gated against the bf16
baseline served by vLLM), and validated by llama-server itself picking the files the `-hf` way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.submit.gguf_check import check_gguf_folder
from tests.procs import leftovers, run_cli
from tests.real_runs import REPO

pytestmark = pytest.mark.server

VARIANT = "gguf_q4_k_m"
SETUP = ("workload.limit=4",)  # two a family would take longer; one request each is enough to card
FILES = {"model-Q4_K_M.gguf", "mmproj-model-F16.gguf", "recipe.json", "llama_config.yaml", "README.md"}


def _cli(module: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return run_cli([sys.executable, "-m", module, *args], cwd=REPO, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """(results, submission folder, the submit command's outcome) after one real run of the variant."""
    results = tmp_path_factory.mktemp("results-gguf")
    run = _cli("harness", f"+variant={VARIANT}", *SETUP, "trials=1", "energy.idle_s=1", f"results_dir={results}",
               f"cache_dir={results / 'cache'}", f"hydra.run.dir={results / 'hydra'}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = results / "submission"
    proc = _cli("harness.submit", f"+variant={VARIANT}", *SETUP, f"results_dir={results}", "--out", str(out))
    return results, out, proc


def _result(results: Path, variant: str) -> dict:
    return json.loads(next((results / "runs").glob(f"*-{variant}/result.json")).read_text())


def _llama_servers() -> list[str]:
    return [cmd for _, cmd in leftovers() if "llama-server" in cmd]


def test_the_folder_holds_what_llama_server_hf_takes_and_nothing_of_vllm(made):
    results, out, proc = made
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert {p.name for p in out.iterdir()} == FILES  # no vllm_config.yaml, no preset.ini
    served = Path(_result(results, VARIANT)["serve"]["model_dir"])
    for name in ("model-Q4_K_M.gguf", "mmproj-model-F16.gguf"):  # the very files the run measured
        assert (out / name).read_bytes() == (served / name).read_bytes()
    # What the run was measured with, and nothing else: the tiny model's image size (conf/model/tiny.yaml).
    measured = _result(results, VARIANT)["config"]["engine"]["llama_config"]
    assert yaml.safe_load((out / "llama_config.yaml").read_text()) == measured == {"image-min-tokens": 64,
                                                                                    "image-max-tokens": 70}
    assert str(results) not in (out / "recipe.json").read_text() + (out / "README.md").read_text()


def test_the_card_gives_the_engine_the_labelled_energy_and_the_gate_against_vllm_bf16(made):
    results, out, _ = made
    card = (out / "README.md").read_text()
    ours, base = _result(results, VARIANT), _result(results, "bf16")
    assert base["config"]["engine"]["name"] == "vllm" and ours["gate"]["baseline_run_id"] == base["run_id"]
    assert "Served by: **llama_cpp**; the baseline by vllm." in card
    flags = "--image-min-tokens 64 --image-max-tokens 70"  # the measured llama config, and only it
    assert f"The judges' command: `llama-server -hf <repo> {flags}`." in card
    assert "the judges pass no other flag" in card
    assert "Energy source: **modeled**" in card
    mine, theirs = ours["energy"]["suite_j_mean"], base["energy"]["suite_j_mean"]
    assert f"| suite energy (J, modeled) | {mine:.3g} | {theirs:.3g} |" in card
    assert f"baseline run `{base['run_id']}`" in card
    assert f"rule {ours['gate']['rule']}): {ours['gate']['verdict']} on the interval" in card
    assert "| all | 4 |" in card  # answer lengths, one row per task and one for all
    engine = ours["serve"]["engine"]
    assert f"context {engine['n_ctx']} tokens per slot, {engine['total_slots']} slots" in card
    assert "python -m harness +variant=gguf_q4_k_m workload.limit=4\n" in card


def test_the_validation_launched_llama_server_which_chose_the_files_and_answered(made):
    _, out, proc = made
    assert "ready to upload" in proc.stdout
    assert "served answer to one suite image: '" in proc.stdout
    assert "served answer to one suite image: ''" not in proc.stdout
    validation = (out / "README.md").read_text().split("## Validation")[1].split("## Measured results")[0]
    assert "`llama-server -hf <repo> --offline --image-min-tokens 64 --image-max-tokens 70`" in validation
    assert ("llama-server chose model-Q4_K_M.gguf and mmproj-model-F16.gguf itself: started and answered one "
            "suite image request") in validation
    # Again in this process: the server it starts is this test's child, and gone when the check returns.
    report = check_gguf_folder(out, expect_tag="Q4_K_M")
    assert report.ok and report.answer.strip(), report.problems
    assert _llama_servers() == []


def _copy_asking(out: Path, folder: Path, llama_config: str) -> Path:
    """A copy of the submission folder whose llama_config.yaml reads ``llama_config``."""
    shutil.copytree(out, folder)
    (folder / "llama_config.yaml").write_text(llama_config)
    return folder


def test_the_folders_llama_config_is_all_the_launch_adds(made, tmp_path):
    asked = _copy_asking(made[1], tmp_path / "asked", "ctx-size: 1024\n")
    report = check_gguf_folder(asked)
    assert report.ok and report.answer.strip(), report.problems
    assert "`llama-server -hf <repo> --offline --ctx-size 1024` with this folder" in report.validation[-1]
    assert {p.name for p in asked.iterdir()} == FILES  # the check writes nothing into the folder


def test_a_launch_that_fails_names_the_log_and_leaves_no_server(made, tmp_path):
    # A known option with a value it cannot parse.
    broken = _copy_asking(made[1], tmp_path / "broken", "n-gpu-layers: lots\n")
    report = check_gguf_folder(broken)
    assert not report.ok and report.answer is None
    message = str(report.problems[0])
    assert "`llama-server -hf <repo> --offline --n-gpu-layers lots` exited" in message
    assert "lines of the server log" in message and "--n-gpu-layers" in message.split("server log")[1]
    assert report.validation[-1].endswith(": failed")
    assert _llama_servers() == []


def test_what_would_mislead_the_judges_is_refused_before_any_launch(made, tmp_path):
    broken = _copy_asking(made[1], tmp_path / "broken", "port: 8080\n")
    (broken / "vllm_config.yaml").write_text("model: .\n")
    (broken / "preset.ini").write_text("[*]\nctx-size = 0\n")
    (broken / "model-Q4_K_M.gguf").rename(broken / "model-Q8_0.gguf")  # a name -hf would pick by the wrong tag
    report = check_gguf_folder(broken, expect_tag="Q4_K_M")
    messages = [str(p) for p in report.problems]
    assert report.answer is None and report.validation[-1] == "not launched: the static checks found problems"
    assert {p.file for p in report.problems} == {"vllm_config.yaml", "preset.ini", "model-Q8_0.gguf",
                                                 "llama_config.yaml"}
    assert any("holds Q4_K_M, but its name ends in Q8_0" in m and "model-Q4_K_M.gguf" in m for m in messages)
    assert any("router mode" in m for m in messages) and any("the harness sets it" in m for m in messages)


@pytest.mark.parametrize(("args", "says"), [
    ((), "no successful run of gguf_q4_k_m"),
    (("--target", "h100"), "drop --target"),
    (("engine=vllm",), "run it with engine=llama_cpp"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, says):
    proc = _cli("harness.submit", f"+variant={VARIANT}", f"results_dir={tmp_path}", *args, timeout=300)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and len(output.splitlines()) == 1 and says in output, output[-2000:]
    assert list(tmp_path.iterdir()) == []  # nothing written
