"""Runs GPTQ over a model one decoder layer at a time, on a compute device (compress.layerwise)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Iterable

import torch

from compress.activation import attach_activation_quant
from compress.codecs import decode, encode, int4_tensors
from compress.configs import W4A16GptqConfig
from compress.device import exact_float32
from compress.gptq import accumulate_hessian, gptq_quantize_int4
from compress.int4 import int4_group_scales
from compress.layerwise import capture, find_stack, home_device, on_device
from compress.schemes import LayerSpec


class _Hessians:
    """Running H = 2/N sum(x x^T) (float32, on the compute device) of the input of each named module."""

    def __init__(self, modules: dict, names: list[str], device: Any):
        self._modules = modules
        self._state = {n: [torch.zeros(modules[n].in_features, modules[n].in_features, device=device), 0]
                       for n in names}

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """Folds every input the modules see inside the block into their Hessians."""
        def fold(name):
            def hook(module, args):
                state = self._state[name]
                state[0], state[1] = accumulate_hessian(state[0], state[1], args[0])
            return hook

        handles = [self._modules[n].register_forward_pre_hook(fold(n)) for n in self._state]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def __bool__(self) -> bool:
        return bool(self._state)

    def get(self, name: str) -> torch.Tensor | None:
        return self._state[name][0] if name in self._state else None

    def unseen(self) -> list[str]:
        return [n for n, (_, count) in self._state.items() if count == 0]


def _quantize(module: torch.nn.Linear, hessian: torch.Tensor, config: W4A16GptqConfig, spec: LayerSpec) -> dict:
    weight = module.weight.data
    scales = int4_group_scales(weight, spec.group_size, weight.dtype)
    values = gptq_quantize_int4(
        weight, hessian, scales, spec.group_size, config.block_size, config.dampening_frac, config.act_order
    )
    return int4_tensors(weight, values, scales)


def _encode(module: torch.nn.Linear, spec: LayerSpec, config: W4A16GptqConfig, hessian: torch.Tensor | None) -> dict:
    """Stores the module's weight (GPTQ when a Hessian is given), replaces it by its decoded value; CPU tensors."""
    weight = module.weight
    tensors = _quantize(module, hessian, config, spec) if hessian is not None else encode(weight.data, spec)
    weight.data = decode(tensors, spec, weight.dtype)
    attach_activation_quant(module, spec)
    return {k: v.cpu() for k, v in tensors.items()}


def run_gptq(model, config: W4A16GptqConfig, plan: dict[str, LayerSpec], calibration: Iterable[dict],
             device: Any = "cpu") -> dict:
    """GPTQ-quantizes the planned int4 modules one decoder layer at a time, in place.

    The samples are carried through the decoder stack on `device`, one layer there at a time
    (compress.layerwise): layer i's Hessians are measured with the layers before it already
    quantized, so each layer corrects for the error of the ones it reads from; then layer i is
    quantized and the samples carried through it. Modules an override sends to another
    (data-free) scheme are encoded directly. Planned modules outside the stack that run before
    it (Gemma 4's per_layer_model_projection, with quantize_ple) are calibrated on the capture
    pass, i.e. on the dense model's activations, and quantized last.

    Raises:
        ValueError: empty calibration, no planned module in a decoder stack, or a GPTQ module
            that runs after the decoder layers (give it a data-free override).
    """
    samples = list(calibration)
    if not samples:
        raise ValueError("calibration is empty: GPTQ needs at least one sample (64 or more is usual)")
    modules = dict(model.named_modules())
    stack = find_stack(model, plan)
    if stack is None:
        raise ValueError("GPTQ here calibrates decoder-layer linears (named ...layers.N...) and none is planned: "
                         "use w4a16_rtn for these modules")
    by_layer: dict[int, list[str]] = {}
    outside = []
    for name in (n for n in modules if n in plan):
        index = stack.layer_of(name)
        if index is None:
            outside.append(name)
        else:
            by_layer.setdefault(index, []).append(name)
    home = home_device(model)
    encoded = {}
    with exact_float32():
        early = _Hessians(modules, [n for n in outside if plan[n].weight == "int4_group"], device)
        with early.hooks():
            inputs = capture(model, stack, samples, device)
        if early.unseen():
            raise ValueError(f"{early.unseen()[0]} does not run before the decoder layers, so GPTQ cannot calibrate "
                             "it here: give it a data-free override (e.g. overrides: [[NAME, w4a16_rtn]])")
        last = max(by_layer, default=-1)
        for index in range(last + 1):
            layer, names = stack.layers[index], by_layer.get(index, [])
            with on_device(layer, device, home):
                hessians = _Hessians(modules, [n for n in names if plan[n].weight == "int4_group"], device)
                if hessians:
                    with hessians.hooks():
                        inputs.run(index, layer, device, carry=False)
                for name in names:
                    encoded[name] = _encode(modules[name], plan[name], config, hessians.get(name))
                if index < last:
                    inputs.run(index, layer, device)
        for name in outside:
            with on_device(modules[name], device, home):
                encoded[name] = _encode(modules[name], plan[name], config, early.get(name))
    return encoded
