"""compress_checkpoint on the tiny Gemma 4: stored layout, config.json, lineage, SQNR per scheme."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from compress import compress_checkpoint, config_from_name
from compress.codecs import decode
from compress.plan import resolve
from compress.schemes import layer_spec
from harness.build.calibration import suite_source

# Floors on weight SQNR = 10 log10(sum w^2 / sum (w - dequant(w))^2) over each quantized
# layer. Rounding noise alone predicts ~29 dB for e4m3 (3 mantissa bits), ~40 dB for int8
# per channel and ~19 dB for int4 group 128 on Gaussian rows; floors leave room for outliers.
SQNR_FLOOR_DB = {"fp8": 25.0, "fp8_dynamic": 25.0, "w8a8_int8": 33.0, "w4a16_rtn": 12.0, "w4a16_gptq": 10.0}
SQNR_CEILING_DB = 60.0  # above this nothing was quantized
SUFFIXES = {"fp8": "weight", "fp8_dynamic": "weight", "w8a8_int8": "weight", "w4a16_rtn": "weight_packed",
            "w4a16_gptq": "weight_packed"}


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.fixture(scope="module")
def compressed(tiny_model_dir, tmp_path_factory):
    """Each scheme's checkpoint of the tiny model (GPTQ on 8 suite samples)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("compressed")
    params = {"w4a16_gptq": {"num_samples": 8}}
    return {s: compress_checkpoint(tiny_model_dir, root / s, config_from_name(s, **params.get(s, {})), suite_source())
            for s in SQNR_FLOOR_DB}


@pytest.mark.parametrize("scheme", list(SQNR_FLOOR_DB))
def test_every_decoder_linear_is_quantized_within_sqnr_floor(tiny_model_dir, compressed, scheme):
    source, stored = _tensors(tiny_model_dir), _tensors(compressed[scheme])
    config = config_from_name(scheme)
    modules = [k[: -len(".weight")] for k in source if k.endswith(".weight") and source[k].ndim == 2]
    quantized = [m for m in modules if resolve(m, config) is not None]
    assert len(quantized) >= 20 and all(".language_model.layers." in m for m in quantized)
    for module in quantized:
        parts = {k.rsplit(".", 1)[1]: v for k, v in stored.items() if k.rsplit(".", 1)[0] == module}
        assert SUFFIXES[scheme] in parts and "input_scale" not in parts
        original = source[f"{module}.weight"].float()
        error = original - decode(parts, layer_spec(scheme), torch.float32)
        sqnr_db = 10 * math.log10(original.pow(2).sum() / error.pow(2).sum())
        assert SQNR_FLOOR_DB[scheme] <= sqnr_db <= SQNR_CEILING_DB, (module, sqnr_db)


@pytest.mark.parametrize("scheme", ["fp8_dynamic", "w4a16_rtn"])
def test_towers_embeddings_and_ple_stay_bit_identical(tiny_model_dir, compressed, scheme):
    source, stored = _tensors(tiny_model_dir), _tensors(compressed[scheme])
    kept = [k for k in source if any(s in k for s in ("vision_tower", "embed_vision", "embed_tokens", "per_layer_"))]
    assert any("per_layer_input_gate" in k for k in kept) and any("vision_tower" in k for k in kept)
    for key in kept:
        assert torch.equal(stored[key], source[key]), key


def test_quantization_config_is_what_vllm_reads(compressed):
    qc = {s: json.loads((p / "config.json").read_text())["quantization_config"] for s, p in compressed.items()}
    assert {s: q["format"] for s, q in qc.items()} == {
        "fp8": "float-quantized", "fp8_dynamic": "float-quantized", "w8a8_int8": "int-quantized",
        "w4a16_rtn": "pack-quantized", "w4a16_gptq": "pack-quantized"}
    for q in qc.values():
        assert q["quant_method"] == "compressed-tensors" and q["quantization_status"] == "compressed"
        assert "lm_head" in q["ignore"] and "re:.*vision_tower.*" in q["ignore"]
    dynamic = qc["fp8_dynamic"]["config_groups"]["group_0"]["input_activations"]
    assert dynamic["dynamic"] is True and dynamic["strategy"] == "token" and dynamic["type"] == "float"
    assert qc["w4a16_rtn"]["config_groups"]["group_0"]["weights"]["group_size"] == 128
    assert qc["fp8"]["config_groups"]["group_0"]["input_activations"] is None


def test_fp8_with_dynamic_activations_declares_them_and_stores_the_same_weights(tiny_model_dir, compressed, tmp_path):
    out = compress_checkpoint(tiny_model_dir, tmp_path / "fp8a", config_from_name("fp8", dynamic_activations=True))
    group = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert group["input_activations"]["dynamic"] is True and group["weights"]["strategy"] == "tensor"
    theirs, ours = _tensors(out), _tensors(compressed["fp8"])
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_side_files_and_recipe_lineage(tiny_model_dir, compressed):
    out = compressed["w4a16_gptq"]
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (out / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["base_model"]["path"] == str(tiny_model_dir.resolve())
    assert len(recipe["base_model"]["sha256"]) == 64
    step = recipe["steps"][-1]
    assert step["config"]["scheme"] == "w4a16_gptq" and step["config"]["version"] == 1
    assert step["calibration"]["num_samples"] == 8 and step["calibration"]["seed"] == 0
    assert step["libraries"]["compressed-tensors"] == "0.17.0"
    assert step["device"]["requested"] == "auto"
    assert step["device"]["used"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_earlier_recipe_is_extended_not_replaced(tiny_model_dir, tmp_path):
    # A pruned checkpoint carries its own recipe.json; compressing it keeps the original base.
    import shutil

    pruned = tmp_path / "pruned"
    shutil.copytree(tiny_model_dir, pruned)
    base = {"path": "/models/gemma-4-e4b", "sha256": "ab" * 32}
    (pruned / "recipe.json").write_text(json.dumps({"base_model": base, "steps": [{"step": "prune"}]}))
    out = compress_checkpoint(pruned, tmp_path / "out", config_from_name("fp8"))
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["base_model"] == base
    assert [s["step"] for s in recipe["steps"]] == ["prune", "compress"]
    assert recipe["steps"][1]["input"]["path"] == str(pruned.resolve())


def test_an_already_quantized_source_is_refused(compressed, tmp_path):
    with pytest.raises(ValueError, match="already quantized"):
        compress_checkpoint(compressed["fp8_dynamic"], tmp_path / "again", config_from_name("fp8_dynamic"))


def test_existing_output_folder_is_refused_before_any_work(tiny_model_dir, compressed):
    with pytest.raises(FileExistsError, match="remove it"):
        compress_checkpoint(tiny_model_dir, compressed["fp8"], config_from_name("fp8"))


def test_cli_writes_the_same_checkpoint_as_the_function(tiny_model_dir, compressed, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "compress", str(tiny_model_dir), str(out), "--scheme", "w8a8_int8"],
                   check=True, capture_output=True, text=True)
    theirs, ours = _tensors(out), _tensors(compressed["w8a8_int8"])
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


@pytest.mark.parametrize("scheme", ["fp8_dynamic", "w4a16_gptq"])
def test_compressed_tensors_library_selects_exactly_the_modules_we_stored(compressed, scheme):
    # transformers hands config.json to compressed-tensors, whose own target/ignore matching
    # decides which modules are quantized; it must pick exactly the modules stored quantized.
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(compressed[scheme], dtype=torch.float32)
    theirs = {n for n, m in model.named_modules() if getattr(m, "quantization_scheme", None) is not None}
    ours = {k.rsplit(".", 1)[0] for k in _tensors(compressed[scheme]) if k.endswith(".weight_scale")}
    assert theirs == ours


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A random text-only Llama checkpoint (untied head) saved by transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def test_text_only_llama_is_compressed_including_gptq_on_token_inputs(tiny_llama, tmp_path):
    rtn = _tensors(compress_checkpoint(tiny_llama, tmp_path / "rtn", config_from_name("w4a16_rtn")))
    calibration = [{"input_ids": torch.randint(0, 256, (1, 64), generator=torch.Generator().manual_seed(i))}
                   for i in range(4)]
    gptq = _tensors(compress_checkpoint(tiny_llama, tmp_path / "gptq", config_from_name("w4a16_gptq"), calibration))
    for stored in (rtn, gptq):
        packed = {k.rsplit(".", 1)[0] for k in stored if k.endswith(".weight_packed")}
        assert len(packed) == 14 and "lm_head.weight" in stored and "model.embed_tokens.weight" in stored
    down = "model.layers.1.mlp.down_proj.weight_packed"
    assert not torch.equal(rtn[down], gptq[down])


@pytest.mark.parametrize("scheme", ["fp8", "w8a8_int8", "w4a16_rtn"])
def test_readback_gives_the_weights_compress_computes_in_memory(tiny_model_dir, compressed, scheme):
    from transformers import AutoModelForImageTextToText

    from compress import compress_
    from compress.readback import dequantized_weights

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32)
    encoded = compress_(model, config_from_name(scheme))
    read = dequantized_weights(compressed[scheme])
    assert set(read) == set(encoded)
    assert all(torch.equal(read[n], model.get_submodule(n).weight) for n in read)


def test_compare_checkpoints_is_zero_for_a_copy_and_positive_across_schemes(compressed):
    from compress.readback import compare_checkpoints

    same = compare_checkpoints(compressed["w4a16_rtn"], compressed["w4a16_rtn"])
    assert same["max_abs_diff"] == 0.0 and same["common"] == same["modules_a"] >= 20
    across = compare_checkpoints(compressed["w4a16_rtn"], compressed["w8a8_int8"])
    assert 0.0 < across["max_abs_diff"] < across["max_abs_weight"] and across["differing_fraction"] > 0.5
