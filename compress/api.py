"""compress_(model, config): quantize a model in place, the handler chosen by the config's type."""

from __future__ import annotations

from typing import Any, Callable, Iterable

from compress.activation import attach_activation_quant
from compress.configs import (
    CompressConfig,
    Fp8Config,
    Fp8DynamicConfig,
    W4A16GptqConfig,
    W4A16RtnConfig,
    W8A8Int8Config,
)
from compress.plan import plan_modules
from compress.schemes import LayerSpec

Encoded = dict  # module name -> {parameter suffix: tensor} in compressed-tensors layout
# (model, config, plan, calibration, device) -> stored tensors
Handler = Callable[[Any, CompressConfig, dict[str, LayerSpec], "Iterable[dict] | None", str], Encoded]


def linear_weight_shapes(model) -> dict[str, tuple[int, ...]]:
    """Module name -> weight shape of every torch.nn.Linear in `model`."""
    import torch

    return {
        name: tuple(module.weight.shape)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def _data_free(model, config: CompressConfig, plan: dict[str, LayerSpec], calibration, device: str) -> Encoded:
    """Round-to-nearest: each planned weight is encoded, then replaced by its decoded value (where it is)."""
    import torch

    from compress.codecs import decode, encode

    modules = dict(model.named_modules())
    encoded = {}
    with torch.no_grad():
        for name, spec in plan.items():
            weight = modules[name].weight
            encoded[name] = encode(weight.data, spec)
            weight.data = decode(encoded[name], spec, weight.dtype)
            attach_activation_quant(modules[name], spec)
    return encoded


def _gptq(model, config: CompressConfig, plan: dict[str, LayerSpec], calibration, device: str) -> Encoded:
    from compress.gptq_runner import run_gptq

    if calibration is None:
        raise ValueError(
            "W4A16GptqConfig needs calibration: pass an iterable of processor outputs "
            "(see compress.calibration.processor_inputs) or use compress_checkpoint, which builds them"
        )
    return run_gptq(model, config, plan, calibration, device)


HANDLERS: dict[type, Handler] = {
    Fp8Config: _data_free,
    Fp8DynamicConfig: _data_free,
    W4A16RtnConfig: _data_free,
    W8A8Int8Config: _data_free,
    W4A16GptqConfig: _gptq,
}


def compress_(model, config: CompressConfig, calibration: Iterable[dict] | None = None, *,
              device: str = "auto") -> Encoded:
    """Quantizes the linears of `model` that `config` selects, in place.

    Each selected weight is replaced by its dequantized value and, for schemes with dynamic
    activations, a pre-hook quantizes the layer's input per token, so the model computes
    what the served checkpoint will. The stored tensors are returned for export.

    Args:
        model: a torch module (e.g. a transformers Gemma 4, Gemma 3 or Llama model).
        config: one of the configs in compress.configs; its type picks the handler.
        calibration: model keyword-argument dicts (processor outputs); GPTQ only.
        device: where GPTQ computes (compress.device): "auto" (CUDA when torch sees a GPU),
            "cpu", "cuda" or "cuda:N". The model stays where it is; one decoder layer at a
            time visits the device.

    Returns:
        Module name -> stored tensors ({"weight", "weight_scale"} or
        {"weight_packed", "weight_scale", "weight_shape"}).
    """
    handler = HANDLERS.get(type(config))
    if handler is None:
        known = ", ".join(c.__name__ for c in HANDLERS)
        raise TypeError(f"no compression handler for {type(config).__name__}; known configs: {known}")
    from compress.device import resolve_device

    used = resolve_device(device)
    plan = plan_modules(linear_weight_shapes(model), config)
    return handler(model, config, plan, calibration, used)
