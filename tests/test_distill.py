"""Distillation of a pruned tiny Gemma 4 toward the dense one: real checkpoints, real training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.build.calibration import suite_source
from tests.procs import run_cli

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pruned_and_distilled(tiny_model_dir: Path, tmp_path_factory) -> tuple[Path, Path, Path]:
    from compress.distill import distill_checkpoint
    from compress.distill_config import DistillConfig
    from compress.flap_config import FlapConfig
    from compress.prune import prune_checkpoint

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill")
    # Half the FFN channels, no layer protected: a pruning that visibly moves the outputs.
    pruned = prune_checkpoint(tiny_model_dir, root / "pruned",
                              FlapConfig(mode="global", ratio=0.5, multiple=32, max_layer_ratio=0.75,
                                         protect_roles=(), num_samples=32), suite_source())
    distilled = distill_checkpoint(tiny_model_dir, pruned, root / "distilled",
                                   DistillConfig(steps=40, batch_size=8, lr=1e-4, num_samples=96, eval_samples=24),
                                   source=suite_source(), log=lambda _: None)
    return tiny_model_dir, pruned, distilled


def test_distillation_brings_the_student_closer_to_the_teacher(pruned_and_distilled):
    _, _, distilled = pruned_and_distilled
    step = json.loads((distilled / "recipe.json").read_text())["steps"][-1]
    assert step["step"] == "distill" and step["config"]["scheme"] == "distill"
    assert step["device"]["used"] == ("cuda" if torch.cuda.is_available() else "cpu")
    kl = step["held_out_kl"]
    assert kl["before"] > 0.01, "the pruning should have moved the student away from the teacher"
    assert kl["after"] < 0.8 * kl["before"], kl


def test_distilled_checkpoint_keeps_the_pruned_format_and_frozen_towers(pruned_and_distilled):
    from safetensors.torch import load_file

    from compress.pruned_hf import load_pruned

    dense, pruned, distilled = pruned_and_distilled
    assert json.loads((distilled / "config.json").read_text()) == json.loads((pruned / "config.json").read_text())
    before, after = load_file(str(pruned / "model.safetensors")), load_file(str(distilled / "model.safetensors"))
    assert before.keys() == after.keys()
    frozen = [k for k in before if ".layers." not in k or "vision_tower" in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen), "only text decoder layers may train"
    trained = [k for k in before
               if k.startswith("model.language_model.layers.") and not torch.equal(before[k], after[k])]
    assert any(k.endswith("mlp.down_proj.bias") for k in trained) and any("self_attn" in k for k in trained)
    load_pruned(distilled)  # strict: every tensor present with the config's shapes
    steps = json.loads((distilled / "recipe.json").read_text())["steps"]
    assert [s["config"]["scheme"] for s in steps] == ["flap", "distill"]


def test_a_quantized_student_is_refused(pruned_and_distilled, tmp_path):
    from compress import compress_checkpoint
    from compress.configs import config_from_name
    from compress.distill import distill_checkpoint
    from compress.distill_config import DistillConfig

    dense, pruned, _ = pruned_and_distilled
    quantized = compress_checkpoint(pruned, tmp_path / "q", config_from_name("w8a8_int8"))
    with pytest.raises(ValueError, match="distil the pruned checkpoint before quantizing"):
        distill_checkpoint(dense, quantized, tmp_path / "out", DistillConfig(steps=1), source=suite_source())
    assert not (tmp_path / "out").exists()


def test_prune_distill_w4a16_variant_builds_three_steps_and_is_scored(tmp_path):
    """The variant end to end through the CLI: on an AVX2 CPU it is built and scored offline."""
    import sys

    from harness.serve.capabilities import detect_platform

    repo = Path(__file__).resolve().parents[1]
    cache = tmp_path / "cache"
    args = ["+variant=prune_distill_w4a16", "trials=1", "compress.steps.1.steps=4", "compress.steps.1.num_samples=32",
            "compress.steps.1.eval_samples=8", "compress.steps.0.num_samples=16", "workload.limit=8",
            f"results_dir={tmp_path}", f"cache_dir={cache}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    if detect_platform().avx512:
        pytest.skip("this CPU serves int4: the offline path is not taken")
    proc = run_cli([sys.executable, "-m", "harness", *args], cwd=repo, timeout=900)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Offline check" in proc.stdout
    (recipe,) = cache.rglob("recipe.json")
    steps = json.loads(recipe.read_text())["steps"]
    assert [s["config"]["scheme"] for s in steps] == ["flap", "distill", "w4a16_rtn"]
    config = json.loads((recipe.parent / "config.json").read_text())
    assert config["flap_pruned"] and config["quantization_config"]["format"] == "pack-quantized"
    (result,) = tmp_path.glob("runs/*-prune_distill_w4a16/result.json")
    data = json.loads(result.read_text())
    assert data["status"] == "offline" and len(data["quality"]["items"]) == 8
