"""Submission folders made from real runs, and the validator that serves them as the judges do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from harness.submit.check import check_folder
from tests.procs import run_cli
from tests.real_runs import COMMON, REPO, real_runs  # noqa: F401 - the shared fixture

pytestmark = pytest.mark.server


def submit(*args: str) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "harness.submit", *args], cwd=REPO, timeout=900)


@pytest.fixture(scope="module")
def submission(real_runs, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("submission") / "bf16_seqs4"
    proc = submit("+variant=bf16_seqs4", *COMMON, f"results_dir={real_runs}", "--out", str(out))
    return out, proc


def _newest(results: Path, variant: str) -> dict:
    rows = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    run_id = [r for r in rows if r["variant"] == variant][-1]["run_id"]
    return json.loads((results / "runs" / run_id / "result.json").read_text())


def test_submission_is_launched_the_judges_way_and_answers(submission):
    out, proc = submission
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ready to upload" in proc.stdout and "served answer to one suite image: '" in proc.stdout
    assert "served answer to one suite image: ''" not in proc.stdout
    cfg = yaml.safe_load((out / "vllm_config.yaml").read_text())
    assert cfg["model"] == "." and cfg["max-num-seqs"] == 4 and cfg["max-model-len"] > 0
    assert not {"host", "port", "api-key"} & set(cfg)
    assert cfg["enforce-eager"] is False  # built for the judges' GPU: CUDA graphs on, whatever served the run


def test_the_host_launch_adds_eager_mode_on_the_command_line_only(submission):
    """A CPU serves the folder with --enforce-eager given after --config; the folder and its card keep the GPU's."""
    out, proc = submission
    validation = (out / "README.md").read_text().split("## Validation")[1].split("## Measured results")[0]
    assert "static, for NVIDIA L4 (sm_89) with vLLM 0.33.0 (CUDA)" in validation
    assert "launched on CPU" in validation and "`vllm serve --config vllm_config.yaml` --enforce-eager" in validation
    assert "not in the folder" in validation and "started and answered one suite image request" in validation
    assert "validation: launched on CPU" in proc.stdout
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "processor_config.json"):
        assert (out / name).stat().st_size > 0
    assert not (out / "training_log.json").exists()  # not part of a servable checkpoint


def test_model_card_holds_the_measured_figures(real_runs, submission):
    out, _ = submission
    card = (out / "README.md").read_text()
    result = _newest(real_runs, "bf16_seqs4")
    base = json.loads((real_runs / "runs" / result["gate"]["baseline_run_id"] / "result.json").read_text())
    mine, theirs = result["energy"]["suite_j_mean"], base["energy"]["suite_j_mean"]  # means over trials
    assert f"| suite energy (J, modeled) | {mine:.3g} | {theirs:.3g} |" in card
    assert f"Trials: {len(result['energy']['trials'])} (suite energy is their mean)" in card
    assert result["provenance"]["host"]["cpu_model"] in card and "**modeled**" in card
    assert f"baseline run `{result['gate']['baseline_run_id']}`" in card
    assert "python -m harness +variant=bf16_seqs4 workload.limit=8" in card
    assert str(real_runs) not in card


def test_corrupted_copy_is_refused_with_file_and_fix_before_any_launch(submission, tmp_path):
    out, _ = submission
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    cfg = yaml.safe_load((broken / "vllm_config.yaml").read_text())
    del cfg["max-model-len"]
    cfg["model"] = str(out)
    (broken / "vllm_config.yaml").write_text(yaml.safe_dump(cfg))
    started = time.monotonic()
    report = check_folder(broken, launch=True)
    assert time.monotonic() - started < 30  # refused before a server start (which takes longer here)
    assert report.answer is None and not report.ok
    messages = {str(p) for p in report.problems}
    assert all(p.file == "vllm_config.yaml" for p in report.problems)
    assert any("max-model-len is not set" in m and "add `max-model-len: N`" in m for m in messages)
    assert any("not '.'" in m and "set `model: .`" in m for m in messages)
    assert any("absolute path" in m for m in messages)


def test_a_pruned_checkpoint_is_refused_as_needing_the_plugin(submission, tmp_path):
    """Judges run stock vLLM: a FLAP-pruned folder would not load there, whatever this host has."""
    out, _ = submission
    pruned = tmp_path / "pruned"
    shutil.copytree(out, pruned)
    config = json.loads((pruned / "config.json").read_text())
    config["flap_pruned"] = True
    (pruned / "config.json").write_text(json.dumps(config))
    report = check_folder(pruned, launch=False)
    assert [p.file for p in report.problems] == ["config.json"]
    assert "plugin" in str(report.problems[0]) and "stock" in str(report.problems[0])


def test_secrets_and_missing_files_are_named(submission, tmp_path):
    out, _ = submission
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "tokenizer_config.json").unlink()
    with (broken / "README.md").open("a") as card:
        card.write("key: sk-" + "a1B2" * 8 + "\n")
    report = check_folder(broken, launch=False)
    assert {p.file for p in report.problems} == {"tokenizer_config.json", "README.md"}
    assert report.size_bytes > (broken / "model.safetensors").stat().st_size


def test_quantization_must_leave_towers_embeddings_and_head_alone(tiny_model_dir, submission, tmp_path):
    from compress import compress_checkpoint
    from compress.configs import config_from_name

    out, _ = submission
    folder = compress_checkpoint(tiny_model_dir, tmp_path / "fp8", config_from_name("fp8"))
    for name in ("vllm_config.yaml", "README.md"):
        shutil.copy(out / name, folder / name)
    (folder / "recipe.json").unlink()  # holds the source's absolute path; submit rewrites it
    (folder / "training_log.json").unlink(missing_ok=True)
    assert check_folder(folder, launch=False).problems == ()
    config = json.loads((folder / "config.json").read_text())
    qc = config["quantization_config"]
    qc["ignore"] = [p for p in qc["ignore"] if "vision_tower" not in p]
    qc["config_groups"]["group_0"]["targets"].append("re:.*vision_tower.*")
    (folder / "config.json").write_text(json.dumps(config))
    problems = check_folder(folder, launch=False).problems
    assert {p.file for p in problems} == {"config.json", "*.safetensors"}  # the target's loader would fail too
    assert any("'re:.*vision_tower.*'" in p.message for p in problems)
    assert any("vision_tower module(s) would be quantized" in p.message for p in problems)
    assert any("targeted by quantization_config are stored unquantized" in p.message for p in problems)


def test_submit_without_a_run_says_how_to_make_one(tmp_path):
    proc = submit("+variant=fp8", f"results_dir={tmp_path}")
    assert proc.returncode == 2
    assert "no successful run of fp8" in proc.stdout and "python -m harness +variant=fp8" in proc.stdout
