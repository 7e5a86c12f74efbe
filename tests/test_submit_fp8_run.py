"""From a real fp8 run served by vLLM on this CPU, a submission built for the judges' GPU (starts servers)."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from harness.build.headers import read_tensors
from harness.serve.capabilities import detect_platform
from tests.procs import run_cli
from tests.real_runs import COMMON, REPO, run_harness

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def fp8_submission(tmp_path_factory):
    """The main job's fp8 (with its bf16 baseline) on this CPU, then `python -m harness.submit +variant=fp8`."""
    if detect_platform().device == "cuda":
        pytest.skip("a GPU serves per-tensor FP8 itself: there is no host fallback to undo")
    results = tmp_path_factory.mktemp("results-fp8")
    run_harness("+variant=fp8", results=results)
    out = results / "submission"
    proc = run_cli([sys.executable, "-m", "harness.submit", "+variant=fp8", *COMMON, f"results_dir={results}",
                    f"cache_dir={results / 'cache'}", "--out", str(out)], cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return results, out, proc.stdout


def test_the_cpu_run_served_the_fallback_and_the_folder_holds_per_tensor_fp8(fp8_submission):
    results, out, _ = fp8_submission
    run = json.loads(next((results / "runs").glob("*-fp8/result.json")).read_text())
    assert "weights" in {f["setting"] for f in run["serve"]["fallbacks"]}  # per-channel FP8 was measured here
    (group,) = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert group["weights"]["strategy"] == "tensor" and group["input_activations"] is None
    tensors = read_tensors(out)
    scales = [t for n, t in tensors.items() if n.endswith(".weight_scale")]
    assert scales and all(t.shape == (1,) for t in scales)


def test_the_folder_has_the_gpus_settings_and_the_card_says_how_it_was_validated(fp8_submission):
    results, out, stdout = fp8_submission
    served = yaml.safe_load(next((results / "runs").glob("*-fp8/vllm_config.yaml")).read_text())
    cfg = yaml.safe_load((out / "vllm_config.yaml").read_text())
    assert served["enforce-eager"] is True and cfg["enforce-eager"] is False
    assert cfg["kv-cache-dtype"] == "fp8"
    card = (out / "README.md").read_text()
    validation = card.split("## Validation")[1].split("## Measured results")[0]
    assert "static, for NVIDIA L4 (sm_89)" in validation and "not launched on this host" in validation
    assert "not measured on this host" in card and "ready to upload" in stdout
