"""load_pruned: a FLAP-pruned Gemma 4 checkpoint as a stock transformers model with per-layer MLP widths.

Stock transformers builds every MLP at config.intermediate_size with no down_proj bias, so the
model is built from the config as usual and each decoder layer's gate/up/down projections are
replaced by nn.Linear of the width in text_config.intermediate_sizes (down_proj with a bias).
Weights are then copied in by name, strictly: a tensor the model lacks or a parameter the
folder lacks raises. Nothing in the folder is executed (no trust_remote_code).
"""

from __future__ import annotations

import json
from pathlib import Path

_QUANT_SUFFIXES = ("weight", "weight_scale", "weight_packed", "weight_shape", "weight_zero_point")


class PrunedLoadError(RuntimeError):
    """The folder is not a loadable pruned checkpoint; the message says what is wrong."""


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise PrunedLoadError(f"{model_dir} has no config.json: pass a pruned checkpoint folder")
    config = json.loads(path.read_text())
    text = config.get("text_config") or {}
    if not config.get("flap_pruned") or "intermediate_sizes" not in text:
        raise PrunedLoadError(f"{model_dir} is not FLAP-pruned (no flap_pruned / text_config.intermediate_sizes): "
                              "load it with transformers' from_pretrained")
    if len(text["intermediate_sizes"]) != text["num_hidden_layers"]:
        raise PrunedLoadError(f"text_config.intermediate_sizes has {len(text['intermediate_sizes'])} entries for "
                              f"{text['num_hidden_layers']} layers: the config is corrupt; re-run the pruning")
    return config


def _resize_mlps(model, widths: list[int]) -> None:
    """Gives decoder layer i's MLP width widths[i] and a down_proj bias."""
    import torch

    layers = model.model.language_model.layers
    for layer, width in zip(layers, widths):
        mlp = layer.mlp
        dtype = mlp.down_proj.weight.dtype
        hidden = mlp.down_proj.out_features
        mlp.gate_proj = torch.nn.Linear(hidden, width, bias=False, dtype=dtype)
        mlp.up_proj = torch.nn.Linear(hidden, width, bias=False, dtype=dtype)
        mlp.down_proj = torch.nn.Linear(width, hidden, bias=True, dtype=dtype)
        mlp.intermediate_size = width


def _tensor_sources(model_dir: Path, quantized: bool) -> dict:
    """Tensor name -> a function reading it, so only one tensor is held at a time.

    Quantized linears (those with a weight_scale) appear once, as `<module>.weight`, read
    back dequantized through their codec.
    """
    from safetensors import safe_open

    from compress.export import source_files
    from compress.st_header import read_header

    files = {key: path for path in source_files(model_dir) for key in read_header(path)[0] if key != "__metadata__"}

    def read(key: str):
        with safe_open(str(files[key]), framework="pt") as f:
            return f.get_tensor(key)

    sources = {key: (lambda key=key: read(key)) for key in files}
    if quantized:
        for module in {k[: -len(".weight_scale")] for k in files if k.endswith(".weight_scale")}:
            parts = {s: f"{module}.{s}" for s in _QUANT_SUFFIXES if f"{module}.{s}" in files}
            for key in parts.values():
                sources.pop(key)
            sources[f"{module}.weight"] = lambda parts=parts: _dequantized({s: read(k) for s, k in parts.items()})
    return sources


def _dequantized(tensors: dict):
    import torch

    from compress.codecs import decode
    from compress.readback import spec_of

    if "weight_zero_point" in tensors and bool(tensors["weight_zero_point"].any()):
        raise PrunedLoadError("asymmetric (zero-point) quantized weights are not read here")
    return decode(tensors, spec_of(tensors), torch.float32)


def _expected_keys(model, stored: set[str]) -> dict:
    """State-dict entries the folder must provide: tied copies of a stored tensor are left out."""
    entries = model.state_dict()
    owner: dict[int, str] = {}
    for key, tensor in entries.items():
        if key in stored:
            owner.setdefault(tensor.data_ptr(), key)
    return {k: t for k, t in entries.items() if k in stored or owner.get(t.data_ptr(), k) == k}


def _copy_strict(model, sources: dict, model_dir: Path) -> None:
    import torch

    expected = _expected_keys(model, set(sources))
    missing, unexpected = sorted(set(expected) - set(sources)), sorted(set(sources) - set(expected))
    if missing or unexpected:
        raise PrunedLoadError(f"{model_dir} does not match its config: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]} (a pruned checkpoint needs every layer's "
                              "down_proj.bias); re-run the pruning")
    with torch.no_grad():
        for key, target in expected.items():
            source = sources[key]()
            if tuple(source.shape) != tuple(target.shape):
                raise PrunedLoadError(f"{key}: stored shape {tuple(source.shape)} but the config gives "
                                      f"{tuple(target.shape)}; intermediate_sizes and the weights disagree")
            target.copy_(source.to(target.dtype))


def _attach_activation_quant(model, quantization_config: dict, modules: set[str]) -> None:
    """Per-token fake quantization of the inputs of modules served with dynamic activations."""
    from compress.activation import attach_activation_quant
    from compress.plan import matches
    from compress.schemes import LayerSpec

    ignore = quantization_config.get("ignore") or []
    groups = list((quantization_config.get("config_groups") or {}).values())
    named = dict(model.named_modules())
    for name in sorted(modules):
        if any(matches(name, p) for p in ignore):
            continue
        group = next((g for g in groups if any(matches(name, t) for t in g.get("targets", []))), None)
        acts = (group or {}).get("input_activations")
        if acts and acts.get("dynamic"):
            attach_activation_quant(named[name], LayerSpec("", "fp8" if acts.get("type") == "float" else "int8"))


def load_pruned(model_dir: str | Path, dtype: str = "float32"):
    """A pruned Gemma 4 checkpoint as Gemma4ForConditionalGeneration (eval mode).

    Also reads pruned checkpoints quantized afterwards (compressed-tensors): quantized
    weights are loaded dequantized and layers with dynamic activation quantization
    quantize their inputs per token, as the serving kernels do.

    Args:
        model_dir: a folder written by compress.prune (optionally quantized after).
        dtype: "float32", "bfloat16", "float16", or "auto" (the checkpoint's dtype).

    Raises:
        PrunedLoadError: not a pruned checkpoint, or weights and config disagree
            (missing or unexpected tensors, wrong shapes).
    """
    import torch
    import transformers

    model_dir = Path(model_dir)
    raw = _read_config(model_dir)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    torch_dtype = getattr(torch, raw.get("dtype") or "float32") if dtype == "auto" else getattr(torch, dtype)
    model = transformers.AutoModelForImageTextToText.from_config(config, dtype=torch_dtype)
    _resize_mlps(model, list(raw["text_config"]["intermediate_sizes"]))
    quantization = raw.get("quantization_config")
    _copy_strict(model, _tensor_sources(model_dir, quantized=quantization is not None), model_dir)
    if quantization is not None:
        quantized = {k[: -len(".weight_scale")] for k in _scale_keys(model_dir)}
        _attach_activation_quant(model, quantization, quantized)
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(model_dir)
    return model.eval()


def _scale_keys(model_dir: Path) -> list[str]:
    from compress.export import source_files
    from compress.st_header import read_header

    return [k for path in source_files(model_dir) for k in read_header(path)[0] if k.endswith(".weight_scale")]
