"""A transformers decoder stack run one layer at a time on a compute device, over calibration samples.

The model stays where it was loaded (the "home" device, the CPU). `capture` runs, for every
sample, everything before the decoder layers (embeddings, vision tower, per-layer inputs, masks,
rotary tables) with each decoder layer replaced by a pass-through that records the arguments it
is called with, and stops the forward after the last one: no layer and no LM head runs. During
that pass every module but the decoder layers sits on the device (Gemma 4 E4B: about 8 GB of its
16, most of it embedding tables); the recorded arguments go home. Then `LayerInputs.run` carries
the samples through layer i, which the caller has moved to the device (`on_device`), one sample's
activations at a time, and keeps its outputs (at home) as the inputs of layer i + 1. So the
device never holds the decoder layers together, and never the whole model.

Layer i sees exactly what it sees in a full forward with layers 0..i-1 as they are when it runs
(a caller that quantizes layer i before carrying the samples on gives later layers quantized
inputs, as GPTQ wants). Keys and values that KV-shared layers reuse pass through the same per-sample
store the model's own forward uses. The forward runs without a KV cache (use_cache=False), so a
layer can be run twice on the same sample.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from compress.device import to_device

_IN_LAYER = re.compile(r"(.*layers)\.(\d+)\.")


class _StopForward(Exception):
    """Raised by the last decoder layer's pass-through: nothing after the stack is needed."""


@dataclass(frozen=True)
class DecoderStack:
    """The ModuleList of decoder layers that calibrated modules live in.

    Attributes:
        prefix: its module name, e.g. "model.language_model.layers".
        layers: the ModuleList.
    """

    prefix: str
    layers: torch.nn.ModuleList

    def layer_of(self, name: str) -> int | None:
        """Index of the layer module `name` lies in, or None when it lies outside the stack."""
        match = _IN_LAYER.match(name)
        return int(match.group(2)) if match and match.group(1) == self.prefix else None


def find_stack(model: torch.nn.Module, names: Iterable[str]) -> DecoderStack | None:
    """The `...layers` ModuleList holding most of the modules `names` (the text decoder), or None."""
    counts = Counter(m.group(1) for m in map(_IN_LAYER.match, names) if m)
    if not counts:
        return None
    prefix = counts.most_common(1)[0][0]
    layers = model.get_submodule(prefix)
    return DecoderStack(prefix, layers) if isinstance(layers, torch.nn.ModuleList) else None


def home_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are (the device layers go back to)."""
    return next(model.parameters()).device


@contextmanager
def on_device(module: torch.nn.Module, device: Any, home: Any) -> Iterator[torch.nn.Module]:
    """`module` moved to `device` for the block, then back to `home` (no-ops when they are the same)."""
    module.to(device)
    try:
        yield module
    finally:
        module.to(home)


@dataclass
class _Sample:
    hidden: torch.Tensor  # the input of the next layer to run (home device)
    calls: list[tuple[tuple, dict]] = field(default_factory=list)  # per layer: (args after hidden, kwargs)
    extras: dict[str, Any] = field(default_factory=dict)  # what the caller asked to keep (e.g. input_ids)


class LayerInputs:
    """Every sample's input to the next decoder layer, and each layer's other arguments."""

    def __init__(self, samples: list[_Sample], home: torch.device):
        self.samples = samples
        self.home = home

    def run(self, index: int, layer: torch.nn.Module, device: Any, *, carry: bool = True,
            before_sample=None) -> None:
        """Runs layer `index` (already on `device`) over every sample, one at a time.

        Args:
            index: the layer's index in the stack (picks the recorded arguments).
            layer: the layer module.
            device: where it runs; each sample's inputs are moved there and its output back home.
            carry: keep the outputs as the next layer's inputs (False: a measuring pass).
            before_sample: called with the sample before it runs (e.g. to set a token mask).
        """
        with torch.no_grad():
            for sample in self.samples:
                if before_sample is not None:
                    before_sample(sample)
                args, kwargs = to_device(sample.calls[index], device)
                out = layer(sample.hidden.to(device), *args, **kwargs)
                out = out[0] if isinstance(out, tuple) else out
                if carry:
                    sample.hidden = out.to(self.home)


def capture(model: torch.nn.Module, stack: DecoderStack, samples: Iterable[dict], device: Any,
            keep: tuple[str, ...] = ()) -> LayerInputs:
    """Runs each sample up to the decoder stack on `device`; returns every layer's recorded arguments.

    Hooks the caller registered on modules before the stack (e.g. a Hessian on a PLE projection)
    fire as usual, on `device`. The model's modules are back home when this returns.

    Args:
        model: the model (eval mode), on its home device.
        stack: its decoder stack.
        samples: model keyword-argument dicts (processor outputs), floating tensors in any dtype.
        device: where the pass runs.
        keep: sample keys kept as `_Sample.extras` (on the device), e.g. "input_ids" for token masks.
    """
    home = home_device(model)
    dtype = next(model.parameters()).dtype
    recorded: list[_Sample] = []
    calls: list[tuple[tuple, dict]] = []
    first: dict[str, torch.Tensor] = {}

    def pass_through(index: int):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs.pop("hidden_states")
            calls.append((tuple(args[1:]), kwargs))
            if index == 0:
                first["hidden"] = hidden
            if index == len(stack.layers) - 1:
                raise _StopForward
            return hidden
        return forward

    with _placed_for_capture(model, stack, device), torch.no_grad():
        for i, layer in enumerate(stack.layers):
            layer.forward = pass_through(i)
        try:
            for sample in samples:
                inputs = {k: _model_input(v, dtype, device) for k, v in sample.items()}
                calls.clear()
                try:
                    model(**inputs, use_cache=False)
                except _StopForward:
                    pass
                if len(calls) != len(stack.layers):
                    raise ValueError(f"the model called {len(calls)} of the {len(stack.layers)} layers of "
                                     f"{stack.prefix}: layer-by-layer calibration needs every layer called once")
                memo: dict[int, Any] = {}
                recorded.append(_Sample(to_device(first["hidden"], home, memo), to_device(list(calls), home, memo),
                                        {k: inputs[k] for k in keep}))
        finally:
            for layer in stack.layers:
                del layer.forward
    return LayerInputs(recorded, home)


def _model_input(value: Any, dtype: torch.dtype, device: Any) -> Any:
    """Floating tensors (pixel values) cast to the model's dtype; all tensors moved to `device`."""
    if not torch.is_tensor(value):
        return value
    return value.to(device, dtype) if value.is_floating_point() else value.to(device)


@contextmanager
def _placed_for_capture(model: torch.nn.Module, stack: DecoderStack, device: Any) -> Iterator[None]:
    """Every module but the decoder stack on `device` for the block, then back home.

    All of them, embedding tables included: model code reads weights directly as well as through
    forward calls (Gemma 4 takes its pad token's row of embed_tokens.weight), so the parts that run
    before the stack must share one device. For Gemma 4 E4B in bf16 that is about 8 GB, most of it
    the embedding tables; the decoder layers (the other half) stay home.
    """
    home = home_device(model)
    if torch.device(device) == home:
        yield
        return
    stay = {id(stack.layers)}
    _place(model, device, stay)
    try:
        yield
    finally:
        _place(model, home, stay)


def _place(module: torch.nn.Module, device: Any, stay: set[int]) -> None:
    """Moves `module` to `device`, except the submodules whose ids are in `stay`."""
    if id(module) in stay:
        return
    if not any(id(m) in stay for m in module.modules()):
        module.to(device)
        return
    for param in module.parameters(recurse=False):
        param.data = param.data.to(device)
    for name, buffer in module.named_buffers(recurse=False):
        setattr(module, name, buffer.to(device))
    for child in module.children():
        _place(child, device, stay)
