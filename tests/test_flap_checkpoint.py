"""Pruned tiny checkpoints: the folder format, load_pruned, quantizing after pruning, CLI and harness build."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compress import compress_checkpoint, config_from_name
from compress.pruned_hf import PrunedLoadError, load_pruned
from harness.build.calibration import suite_source

torch.set_num_threads(1)
MLP = "model.language_model.layers.{i}.mlp.{p}"
SCHEDULE = {4: [0.25, 0.5, 0.25, 0.0]}


def _flap(**fields):
    base = {"mode": "schedule", "schedule": SCHEDULE, "multiple": 32, "protect_roles": [], "num_samples": 8}
    return config_from_name("flap", **{**base, **fields})


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(path)))
    return out


def _inputs(model_dir: Path) -> dict:
    from transformers import AutoProcessor

    from harness.replay.workloads.base import load_samples
    from harness.tiny.train import encode

    batch = encode(AutoProcessor.from_pretrained(model_dir), load_samples(0, "test", 1))
    batch.pop("labels")
    return batch


@pytest.fixture(scope="module")
def pruned(tiny_model_dir, tmp_path_factory) -> Path:
    return compress_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("flap") / "pruned", _flap(), suite_source())


def test_pruned_folder_follows_the_contract(pruned, tiny_model_dir):
    config = json.loads((pruned / "config.json").read_text())
    dense = _tensors(tiny_model_dir)
    stored = _tensors(pruned)
    assert config["text_config"]["intermediate_sizes"] == [192, 128, 192, 256]
    assert config["text_config"]["intermediate_size"] == 256
    assert config["flap_pruned"] is True and config["text_config"]["flap_pruned"] is True
    assert config["architectures"] == ["FlapGemma4ForConditionalGeneration"] and config["model_type"] == "gemma4"
    for i, width in enumerate(config["text_config"]["intermediate_sizes"]):
        gate, up = stored[MLP.format(i=i, p="gate_proj.weight")], stored[MLP.format(i=i, p="up_proj.weight")]
        down, bias = stored[MLP.format(i=i, p="down_proj.weight")], stored[MLP.format(i=i, p="down_proj.bias")]
        assert gate.shape == up.shape == (width, 128) and down.shape == (128, width) and bias.shape == (128,)
        assert bias.dtype == down.dtype == dense[MLP.format(i=i, p="down_proj.weight")].dtype
        assert bool(bias.any()) == (width < 256)  # compensation only where channels went
        dense_rows = {tuple(r.tolist()) for r in dense[MLP.format(i=i, p="gate_proj.weight")]}
        assert all(tuple(r.tolist()) in dense_rows for r in gate)  # rows kept, not altered
    untouched = [k for k in dense if ".mlp." not in k]
    assert all(torch.equal(dense[k], stored[k]) for k in untouched)


def test_recipe_records_the_prune_step(pruned):
    step = json.loads((pruned / "recipe.json").read_text())["steps"][-1]
    assert step["step"] == "prune" and step["config"]["scheme"] == "flap"
    assert step["calibration"]["num_samples"] == 8 and step["calibration"]["seed"] == 0
    assert [(s["kept"], s["removed"]) for s in step["layers"]] == [(192, 64), (128, 128), (192, 64), (256, 0)]
    assert step["device"] == {"requested": "auto", "used": "cuda" if torch.cuda.is_available() else "cpu",
                              **({"name": torch.cuda.get_device_name()} if torch.cuda.is_available() else {})}


def test_load_pruned_builds_per_layer_widths_with_the_stored_bias(pruned):
    model = load_pruned(pruned)
    stored = _tensors(pruned)
    assert type(model).__name__ == "Gemma4ForConditionalGeneration"  # the stock class, only MLPs resized
    for i, layer in enumerate(model.model.language_model.layers):
        assert torch.equal(layer.mlp.down_proj.bias, stored[MLP.format(i=i, p="down_proj.bias")])
        assert torch.equal(layer.mlp.up_proj.weight, stored[MLP.format(i=i, p="up_proj.weight")])
    with torch.no_grad():
        logits = model(**_inputs(pruned)).logits
    assert torch.isfinite(logits).all()


def test_pruning_nothing_gives_the_dense_logits(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    config = _flap(method="magnitude", bias_compensation=False, schedule={4: [0, 0, 0, 0]})
    folder = compress_checkpoint(tiny_model_dir, tmp_path / "zero", config)
    inputs = _inputs(tiny_model_dir)
    dense = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(load_pruned(folder)(**inputs).logits, dense(**inputs).logits, rtol=0, atol=1e-6)


def test_a_missing_bias_or_a_wrong_width_refuses_to_load(pruned, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pruned, broken)
    tensors = _tensors(broken)
    del tensors[MLP.format(i=3, p="down_proj.bias")]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(PrunedLoadError, match="missing.*layers.3.mlp.down_proj.bias"):
        load_pruned(broken)
    config = json.loads((pruned / "config.json").read_text())
    config["text_config"]["intermediate_sizes"][0] = 224
    shutil.copy(pruned / "model.safetensors", broken / "model.safetensors")
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(PrunedLoadError, match="layers.0.mlp"):
        load_pruned(broken)


def test_quantizing_a_pruned_checkpoint_keeps_bias_widths_and_flags(pruned, tmp_path):
    from harness.score.offline import load_model

    out = compress_checkpoint(pruned, tmp_path / "fp8", config_from_name("fp8_dynamic", include_qkv=False))
    config, before, after = json.loads((out / "config.json").read_text()), _tensors(pruned), _tensors(out)
    assert config["text_config"]["intermediate_sizes"] == [192, 128, 192, 256] and config["flap_pruned"] is True
    assert config["architectures"] == ["FlapGemma4ForConditionalGeneration"]
    for i in range(4):
        assert torch.equal(after[MLP.format(i=i, p="down_proj.bias")], before[MLP.format(i=i, p="down_proj.bias")])
        assert after[MLP.format(i=i, p="down_proj.weight")].dtype == torch.float8_e4m3fn
    assert after["model.language_model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32
    assert [s["step"] for s in json.loads((out / "recipe.json").read_text())["steps"]] == ["prune", "compress"]
    model, _ = load_model(out)
    assert model.model.language_model.layers[1].mlp.down_proj.in_features == 128


def test_prune_then_fp8_steps_build_one_folder_with_one_lineage(tiny_model_dir, pruned, tmp_path):
    from compress.readback import dequantized_weights
    from harness.score.offline import load_model

    steps = config_from_name("steps", steps=[{"scheme": "flap", "mode": "schedule", "schedule": SCHEDULE,
                                              "multiple": 32, "protect_roles": [], "num_samples": 8},
                                             {"scheme": "fp8_dynamic", "include_qkv": False}])
    out = compress_checkpoint(tiny_model_dir, tmp_path / "composite", steps, suite_source())
    assert not (tmp_path / "composite.partial").exists()
    recipe = json.loads((out / "recipe.json").read_text())
    assert [s["step"] for s in recipe["steps"]] == ["prune", "compress"]
    assert recipe["base_model"]["path"] == str(tiny_model_dir.resolve())
    bias = MLP.format(i=1, p="down_proj.bias")
    assert torch.equal(_tensors(out)[bias], _tensors(pruned)[bias])  # same calibration, same channels and bias
    model, _ = load_model(out)
    name = MLP.format(i=1, p="down_proj")
    assert torch.equal(model.get_submodule(name).weight, dequantized_weights(out)[name])


def test_cli_prunes_by_magnitude(tiny_model_dir, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "compress", str(tiny_model_dir), str(out), "--scheme", "flap", "--method", "magnitude",
           "--multiple", "32", "--ratio", "0.2"]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    sizes = json.loads((out / "config.json").read_text())["text_config"]["intermediate_sizes"]
    assert sizes[2] == sizes[3] == 256  # full-attention layers are protected by default
    assert all(s % 32 == 0 for s in sizes) and sum(sizes) < 4 * 256


def test_flap_scores_need_calibration_data_compress_does_not_invent(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="flap needs calibration data"):
        compress_checkpoint(tiny_model_dir, tmp_path / "none", _flap())
    assert not (tmp_path / "none").exists()


def test_cli_prunes_with_calibration_from_a_jsonl_file(tiny_model_dir, tmp_path):
    source = suite_source()
    rows = []
    for i, (image, prompt, answer) in enumerate(source.examples(4, 1)):
        image.save(tmp_path / f"{i}.png")
        rows.append(json.dumps({"image": f"{i}.png", "prompt": prompt, "answer": answer}))
    (tmp_path / "calibration.jsonl").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "compress", str(tiny_model_dir), str(out), "--scheme", "flap", "--multiple", "32",
           "--ratio", "0.2", "--num-samples", "4", "--calibration", str(tmp_path / "calibration.jsonl")]
    subprocess.run(cmd, check=True, capture_output=True, timeout=600)
    recipe = json.loads((out / "recipe.json").read_text())
    calibration = recipe["steps"][-1]["calibration"]
    assert calibration["source"] == "file calibration.jsonl" and calibration["num_samples"] == 4


def test_harness_builds_the_flap_global_variant(tmp_path):
    from harness.build.variant import build_variant
    from harness.config.schema import compose

    run = compose(["+variant=flap_global", "compress.num_samples=8", f"cache_dir={tmp_path}"])
    folder = build_variant(run, log=lambda msg: None)
    config = json.loads((folder / "config.json").read_text())
    sizes = config["text_config"]["intermediate_sizes"]
    assert config["flap_pruned"] and sizes[2] == sizes[3] == 256  # full attention kept
    assert 0.1 <= 1 - sum(sizes) / 1024 <= 0.3  # ratio 0.2 of all channels, rounded to 32 per layer


def test_harness_builds_the_flap_fp8_variant_in_two_steps(tmp_path):
    from harness.build.variant import build_variant
    from harness.config.schema import compose

    run = compose(["+variant=flap_fp8", "compress.steps.0.num_samples=8", f"cache_dir={tmp_path}"])
    folder = build_variant(run, log=lambda msg: None)
    config = json.loads((folder / "config.json").read_text())
    assert folder.name.startswith("flap_fp8-")
    assert config["text_config"]["intermediate_sizes"] == [256, 192, 256, 256]  # the tiny schedule
    assert config["quantization_config"]["config_groups"]["group_0"]["input_activations"]["dynamic"] is True
    steps = json.loads((folder / "recipe.json").read_text())["steps"]
    assert [s["config"]["scheme"] for s in steps] == ["flap", "fp8_dynamic"]
    assert _tensors(folder)["model.language_model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32  # no qkv


def test_calibration_statistics_count_the_chosen_token_positions(tiny_model_dir):
    from compress.calibration import as_model_inputs
    from compress.flap_stats import down_proj_stats

    inputs = as_model_inputs(suite_source().pairs(2, 0), tiny_model_dir)
    image_token = json.loads((tiny_model_dir / "config.json").read_text())["image_token_id"]
    total = sum(i["input_ids"].numel() for i in inputs)
    text = sum(int((i["input_ids"] != image_token).sum()) for i in inputs)
    assert 0 < text < total
    everything, text_only = down_proj_stats(tiny_model_dir, inputs), down_proj_stats(tiny_model_dir, inputs, "text")
    assert sorted(everything) == [0, 1, 2, 3]
    assert all(s.count == total for s in everything.values()) and all(s.count == text for s in text_only.values())
