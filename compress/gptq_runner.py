"""Runs GPTQ over a model layer by layer, feeding calibration samples through it."""

from __future__ import annotations

import re
from typing import Iterable

import torch

from compress.activation import attach_activation_quant
from compress.codecs import decode, encode, int4_tensors
from compress.configs import W4A16GptqConfig
from compress.gptq import accumulate_hessian, gptq_quantize_int4
from compress.int4 import int4_group_scales
from compress.schemes import LayerSpec

_LAYER = re.compile(r"(.*layers\.\d+)\.")


class _StopForward(Exception):
    """Raised by a hook once the layer being calibrated has run: later layers are not needed."""


def _layer_groups(plan: dict[str, LayerSpec], model) -> dict[str, list[str]]:
    """Planned modules grouped by their decoder layer (or by themselves), in model order."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_modules():
        if name in plan:
            match = _LAYER.match(name)
            groups.setdefault(match.group(1) if match else name, []).append(name)
    return groups


def _as_model_inputs(sample: dict, dtype: torch.dtype) -> dict:
    """Floating tensors (pixel values) cast to the model's dtype; ids and masks unchanged."""
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sample.items()}


def _collect_hessians(model, modules: dict, stop_at: str, names: list[str],
                      samples: list[dict]) -> dict[str, torch.Tensor]:
    """H of each module in `names` over all samples, stopping each forward after `stop_at`."""
    state = {name: [torch.zeros(modules[name].in_features, modules[name].in_features), 0] for name in names}

    def pre_hook(name):
        def hook(module, args):
            state[name][0], state[name][1] = accumulate_hessian(state[name][0], state[name][1], args[0])
        return hook

    def stop(module, args, output):
        raise _StopForward

    handles = [modules[name].register_forward_pre_hook(pre_hook(name)) for name in names]
    handles.append(modules[stop_at].register_forward_hook(stop))
    dtype = next(model.parameters()).dtype
    try:
        with torch.no_grad():
            for sample in samples:
                try:
                    model(**_as_model_inputs(sample, dtype))
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: h for name, (h, _) in state.items()}


def _quantize(module: torch.nn.Linear, hessian: torch.Tensor, config: W4A16GptqConfig, spec: LayerSpec) -> dict:
    weight = module.weight.data
    scales = int4_group_scales(weight, spec.group_size, weight.dtype)
    values = gptq_quantize_int4(
        weight, hessian, scales, spec.group_size, config.block_size, config.dampening_frac, config.act_order
    )
    return int4_tensors(weight, values, scales)


def run_gptq(model, config: W4A16GptqConfig, plan: dict[str, LayerSpec], calibration: Iterable[dict]) -> dict:
    """GPTQ-quantizes the planned int4 modules one decoder layer at a time, in place.

    Layer i's Hessians are measured with layers before it already quantized, so each layer
    corrects for the error of the ones it reads from. Modules an override sends to another
    (data-free) scheme are encoded directly.
    """
    samples = list(calibration)
    if not samples:
        raise ValueError("calibration is empty: GPTQ needs at least one sample (64 or more is usual)")
    modules = dict(model.named_modules())
    encoded = {}
    for stop_at, names in _layer_groups(plan, model).items():
        gptq_names = [n for n in names if plan[n].weight == "int4_group"]
        hessians = _collect_hessians(model, modules, stop_at, gptq_names, samples) if gptq_names else {}
        for name in names:
            weight = modules[name].weight
            if name in hessians:
                encoded[name] = _quantize(modules[name], hessians[name], config, plan[name])
            else:
                encoded[name] = encode(weight.data, plan[name])
            weight.data = decode(encoded[name], plan[name], weight.dtype)
            attach_activation_quant(modules[name], plan[name])
    return encoded
