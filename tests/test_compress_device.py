"""Where calibrated steps compute: the device choice, its checks and record, and the layer-by-layer runner."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import UserDict
from pathlib import Path

import pytest
import torch

from compress import W4A16GptqConfig, compress_, compress_checkpoint, config_from_name
from compress.device import check_device_name, resolve_device, to_device
from harness.build.calibration import suite_source
from tests.tiny_inputs import calibration_inputs

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a host without CUDA")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def calibration(tiny_model_dir):
    return calibration_inputs(tiny_model_dir, 4)


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_names_are_checked_without_torch(name):
    assert check_device_name(name) == name


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "mps", ""])
def test_unknown_device_names_are_refused_with_the_choices(name):
    with pytest.raises(ValueError, match="use auto .*cpu, cuda or cuda:N"):
        check_device_name(name)


def test_auto_is_cuda_exactly_when_torch_sees_a_gpu():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


def test_moving_arguments_keeps_shared_stores_and_tensors_shared():
    store, table = UserDict(), torch.ones(3)
    moved = to_device([((table, table), {"kv": store, "mask": None, "t": table})], "cpu", {})
    (args, kwargs), = moved
    assert kwargs["kv"] is store and kwargs["mask"] is None
    assert args[0] is args[1] is kwargs["t"]


def test_layer_by_layer_replay_reproduces_the_models_own_forward(tiny_model, calibration):
    """Captured arguments (per-layer inputs, masks, rotary tables, the KV-shared store) are complete."""
    from compress.layerwise import capture, find_stack

    model = tiny_model()
    stack = find_stack(model, ["model.language_model.layers.0.mlp.down_proj"])
    assert stack.prefix == "model.language_model.layers" and len(stack.layers) == 4
    outputs = []
    handle = stack.layers[-1].register_forward_hook(lambda m, a, out: outputs.append(out))
    with torch.no_grad():
        for sample in calibration:
            model(**sample, use_cache=False)
    handle.remove()
    inputs = capture(model, stack, calibration, "cpu")
    for index, layer in enumerate(stack.layers):
        inputs.run(index, layer, "cpu")
    for sample, expected in zip(inputs.samples, outputs, strict=True):
        assert torch.equal(sample.hidden, expected)


def test_the_first_pass_places_everything_but_the_decoder_layers_on_the_device(tiny_model):
    # "meta" stands in for a GPU here: it shows where each tensor would go (and cannot go back).
    from compress.layerwise import _place, find_stack

    model = tiny_model()
    stack = find_stack(model, ["model.language_model.layers.2.mlp.up_proj"])
    _place(model, "meta", {id(stack.layers)})
    in_stack = {id(t) for t in [*stack.layers.parameters(), *stack.layers.buffers()]}
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    assert {t.device.type for _, t in tensors if id(t) in in_stack} == {"cpu"}
    elsewhere = {n: t.device.type for n, t in tensors if id(t) not in in_stack}
    assert set(elsewhere.values()) == {"meta"}, elsewhere
    assert any("embed_tokens_per_layer" in n for n in elsewhere) and any("vision_tower" in n for n in elsewhere)


@NO_CUDA
def test_explicit_cpu_gives_what_auto_gives_on_a_host_without_cuda(tiny_model, calibration, tiny_model_dir):
    from compress.flap_stats import down_proj_stats

    encoded = {d: compress_(tiny_model(), W4A16GptqConfig(), calibration, device=d) for d in ("auto", "cpu")}
    assert encoded["auto"].keys() == encoded["cpu"].keys()
    assert all(torch.equal(t, encoded["cpu"][name][k]) for name, ts in encoded["auto"].items() for k, t in ts.items())
    stats = {d: down_proj_stats(tiny_model_dir, calibration, device=d) for d in ("auto", "cpu")}
    assert all(torch.equal(s.m2, stats["cpu"][i].m2) and s.count == stats["cpu"][i].count
               for i, s in stats["auto"].items())


@NO_CUDA
@pytest.mark.parametrize("scheme", ["w4a16_gptq", "fp8", "flap", "steps"])
def test_cuda_asked_for_on_a_host_without_cuda_fails_before_any_work(scheme, tmp_path):
    # A source folder that does not exist: any work would fail on it first, with another error.
    config = (config_from_name("flap_fp8", steps=[{"scheme": "flap"}, {"scheme": "fp8_dynamic"}])
              if scheme == "steps" else config_from_name(scheme))
    with pytest.raises(ValueError, match=r"^device 'cuda' was asked for but .*: pass --device cpu") as err:
        compress_checkpoint(tmp_path / "missing", tmp_path / "out", config, device="cuda")
    assert "\n" not in str(err.value) and not (tmp_path / "out").exists()


@NO_CUDA
def test_cuda_asked_for_on_the_command_line_exits_2_with_one_line(tiny_model_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "compress", str(tiny_model_dir), str(tmp_path / "out"),
                           "--scheme", "w4a16_gptq", "--device", "cuda"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pass --device cpu" in proc.stderr
    assert not (tmp_path / "out").exists()


@NO_CUDA
def test_distillation_and_pruning_check_the_device_first(tmp_path):
    from compress.distill import distill_checkpoint
    from compress.distill_config import DistillConfig
    from compress.flap_config import FlapConfig
    from compress.prune import prune_checkpoint

    with pytest.raises(ValueError, match="pass --device cpu"):
        distill_checkpoint(tmp_path, tmp_path, tmp_path / "out", DistillConfig(), suite_source(), device="cuda:0")
    with pytest.raises(ValueError, match="pass --device cpu"):
        prune_checkpoint(tmp_path / "missing", tmp_path / "out", FlapConfig(), device="cuda")


def test_a_gptq_module_after_the_decoder_layers_is_refused_with_the_fix(tiny_model, calibration):
    config = W4A16GptqConfig(ignore=(r"re:.*vision_tower.*", r"re:.*embed_vision.*"),
                             targets=(r"re:.*layers\.0\.mlp\.down_proj$", "lm_head"), group_size=32)
    with pytest.raises(ValueError, match="lm_head does not run before the decoder layers.*data-free override"):
        compress_(tiny_model(), config, calibration[:1], device="cpu")


def test_the_device_is_recorded_in_the_recipe(tiny_model_dir, tmp_path):
    out = compress_checkpoint(tiny_model_dir, tmp_path / "fp8", config_from_name("fp8_dynamic"), device="cpu")
    step = json.loads((out / "recipe.json").read_text())["steps"][-1]
    assert step["device"] == {"requested": "cpu", "used": "cpu"}  # data-free schemes stream on the CPU
