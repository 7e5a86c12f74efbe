"""Configs, module selection and compress_ on in-memory models (tiny Gemma 4, hand-made names)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from compress import Fp8DynamicConfig, W4A16GptqConfig, W4A16RtnConfig, W8A8Int8Config, compress_, config_from_name
from compress.plan import plan_modules, resolve
from tests.tiny_inputs import calibration_inputs

GEMMA4 = "model.language_model.layers.3."
SHAPE = (256, 128)


def test_importing_compress_does_not_import_torch():
    code = "import sys, compress; compress.config_from_name('fp8'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", [
    "model.vision_tower.encoder.layers.0.self_attn.q_proj.linear",
    "model.embed_vision.embedding_projection",
    "model.audio_tower.layers.0.self_attn.q_proj",
    "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj",  # Gemma 3 tower
    "model.multi_modal_projector.mm_input_projection",
    "lm_head",
    GEMMA4 + "per_layer_input_gate",
    "model.language_model.per_layer_model_projection",
])
def test_towers_projections_head_and_ple_are_left_dense_by_default(name):
    assert all(resolve(name, config_from_name(s)) is None for s in ("fp8", "fp8_dynamic", "w4a16_rtn", "w8a8_int8"))


@pytest.mark.parametrize("name", [GEMMA4 + "self_attn.q_proj", GEMMA4 + "mlp.down_proj",
                                  "model.layers.0.self_attn.o_proj",  # Llama
                                  "model.language_model.layers.0.mlp.gate_proj"])  # Gemma 3
def test_decoder_linears_of_each_family_are_selected(name):
    assert resolve(name, W8A8Int8Config()).weight == "int8_channel"


def test_ple_linears_are_quantized_when_asked():
    config = W4A16RtnConfig(quantize_ple=True)
    assert resolve(GEMMA4 + "per_layer_projection", config).group_size == 128
    assert resolve("model.language_model.per_layer_model_projection", config) is not None


def test_fp8_dynamic_can_keep_attention_inputs_dense():
    config = Fp8DynamicConfig(include_qkv=False)
    assert resolve(GEMMA4 + "self_attn.k_proj", config) is None
    assert resolve(GEMMA4 + "self_attn.o_proj", config) is not None


def test_overrides_take_precedence_over_targets_but_not_over_ignore():
    config = W4A16RtnConfig(overrides=((r"re:.*mlp\.down_proj$", "w8a8_int8"), (r"re:.*o_proj$", "dense"),
                                       (r"re:.*vision_tower.*", "fp8")))
    assert resolve(GEMMA4 + "mlp.down_proj", config).weight == "int8_channel"
    assert resolve(GEMMA4 + "self_attn.o_proj", config) is None
    assert resolve(GEMMA4 + "mlp.up_proj", config).weight == "int4_group"
    assert resolve("model.vision_tower.encoder.layers.0.mlp.up_proj.linear", config) is None


def test_splitting_fused_shards_is_refused():
    config = W8A8Int8Config(overrides=((r"re:.*k_proj$", "dense"),))
    shapes = {GEMMA4 + f"self_attn.{p}_proj": SHAPE for p in "qkv"}
    with pytest.raises(ValueError, match="fused shards"):
        plan_modules(shapes, config)


def test_group_size_that_does_not_divide_in_features_is_refused_with_a_fix():
    with pytest.raises(ValueError, match="not a multiple of group_size"):
        plan_modules({GEMMA4 + "mlp.down_proj": (128, 200)}, W4A16RtnConfig())


def test_bad_configs_fail_at_construction():
    with pytest.raises(ValueError, match="use one of"):
        config_from_name("int3")
    with pytest.raises(ValueError, match="no field"):
        config_from_name("fp8", group_size=64)
    with pytest.raises(ValueError, match="override scheme"):
        W4A16RtnConfig(overrides=(("re:.*", "w4a16_gptq"),))
    assert config_from_name("w4a16_rtn", ignore=["lm_head"]).ignore == ("lm_head",)


@pytest.fixture(scope="module")
def calibration(tiny_model_dir):
    return calibration_inputs(tiny_model_dir, 8)


def test_compress_replaces_selected_weights_with_their_dequantized_values(tiny_model):
    model = tiny_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    encoded = compress_(model, W8A8Int8Config())
    after = dict(model.named_parameters())
    changed = {n[: -len(".weight")] for n in before if not torch.equal(before[n], after[n])}
    assert changed == set(encoded) and len(encoded) >= 20


@pytest.mark.parametrize("config", [W8A8Int8Config(), Fp8DynamicConfig()])
def test_dynamic_activation_schemes_quantize_layer_inputs_per_token(tiny_model, config):
    from compress.codecs import ACTIVATION_FAKE_QUANT
    from compress.plan import resolve as spec_of

    model = tiny_model()
    name = "model.language_model.layers.0.mlp.down_proj"
    compress_(model, config)
    layer = dict(model.named_modules())[name]
    x = torch.randn(3, 5, layer.in_features, generator=torch.Generator().manual_seed(0))
    fake = ACTIVATION_FAKE_QUANT[spec_of(name, config).activation]
    expected = torch.nn.functional.linear(fake(x), layer.weight)
    assert torch.equal(layer(x), expected)
    assert not torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight))


def _layer0_inputs(model, calibration, name):
    seen = []
    handle = dict(model.named_modules())[name].register_forward_pre_hook(
        lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        for sample in calibration:
            model(**sample)
    handle.remove()
    return torch.cat(seen)


def test_gptq_beats_rtn_on_layer_outputs_of_the_tiny_model(tiny_model, calibration):
    # Layer 0 reads the (unquantized) embeddings, so both methods see the same inputs.
    names = [f"model.language_model.layers.0.{m}" for m in ("self_attn.q_proj", "mlp.gate_proj")]
    dense = tiny_model()
    weights = {n: dict(dense.named_modules())[n].weight.detach().clone() for n in names}
    inputs = {n: _layer0_inputs(dense, calibration, n) for n in names}
    errors = {}
    for config in (W4A16RtnConfig(), W4A16GptqConfig()):
        model = tiny_model()
        compress_(model, config, calibration)
        for n in names:
            quantized = dict(model.named_modules())[n].weight.detach()
            errors[(type(config).__name__, n)] = torch.linalg.norm(inputs[n] @ (quantized - weights[n]).T).item()
    for n in names:
        assert errors[("W4A16GptqConfig", n)] < errors[("W4A16RtnConfig", n)], errors


def test_gptq_without_calibration_says_what_to_pass(tiny_model):
    with pytest.raises(ValueError, match="needs calibration"):
        compress_(tiny_model(), W4A16GptqConfig())
