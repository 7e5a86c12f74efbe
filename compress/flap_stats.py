"""Calibration statistics for FLAP: running mean/M2 of every decoder layer's down_proj input.

The dense model runs in transformers over chat-formatted image+prompt pairs, one decoder layer at
a time on the compute device (compress.layerwise); a forward pre-hook on each
`model.language_model.layers.{i}.mlp.down_proj` folds the input rows (every token position of
the sample: image soft tokens, chat scaffolding and prompt) into a float64 RunningStats on that
device. Memory: the model in its stored dtype on the CPU (Gemma 4 E4B in bf16: ~16 GB, most of it
the per-layer embedding table), every sample's input to the next layer there too (E4B, 64 samples
of ~300 tokens: ~0.6 GB); on the device one decoder layer, one sample's activations and
2 x 8 bytes per FFN channel of the layer, after a first pass that holds the modules before the
decoder layers there (embeddings, towers: ~8 GB for E4B).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from compress.flap import RunningStats

DOWN_PROJ = re.compile(r"(?:.*\.)?layers\.(\d+)\.mlp\.down_proj$")
LANGUAGE_PREFIX = "model.language_model.layers."


def down_proj_stats(src_dir: Path, calibration: Iterable, tokens: str = "all", *,
                    device: str = "auto") -> dict[int, RunningStats]:
    """Decoder layer index -> RunningStats (on the CPU) of its down_proj input over the calibration tokens.

    Args:
        src_dir: dense Gemma 4 checkpoint folder.
        calibration: (PIL image, prompt) pairs or processor-output dicts.
        tokens: "all" positions, or "text" (positions whose input id is not the image token).
        device: where the layers run (compress.device): "auto", "cpu", "cuda" or "cuda:N".
    """
    from compress.calibration import as_model_inputs
    from compress.device import resolve_device
    from compress.folders import load_model
    from compress.layerwise import capture, find_stack, home_device, on_device

    device = resolve_device(device)
    model = load_model(Path(src_dir))
    modules = dict(model.named_modules())
    down = [name for name in modules if DOWN_PROJ.match(name) and "language_model" in name]
    stack = find_stack(model, down)
    if stack is None:
        raise ValueError(f"{src_dir}: no language_model.layers.N.mlp.down_proj found; "
                         "FLAP here supports Gemma 4 checkpoints")
    by_layer = {stack.layer_of(name): name for name in down}
    image_token = getattr(model.config, "image_token_id", None)
    inputs = capture(model, stack, as_model_inputs(calibration, Path(src_dir)), device,
                     keep=("input_ids",) if tokens == "text" else ())
    keep: dict = {"rows": None}  # the current sample's kept positions

    def choose_rows(sample) -> None:
        keep["rows"] = (sample.extras["input_ids"] != image_token).reshape(-1) if tokens == "text" else None

    stats: dict[int, RunningStats] = {}
    home, last = home_device(model), max(by_layer)
    for index in range(last + 1):
        layer = stack.layers[index]
        with on_device(layer, device, home):
            handle = None
            if index in by_layer:
                module = modules[by_layer[index]]
                stats[index] = RunningStats(module.in_features, device=device)
                handle = module.register_forward_pre_hook(_folder(stats[index], keep))
            try:
                inputs.run(index, layer, device, carry=index < last, before_sample=choose_rows)
            finally:
                if handle is not None:
                    handle.remove()
    return {index: s.to("cpu") for index, s in stats.items()}


def _folder(stats: RunningStats, keep: dict):
    def hook(module, args):
        x = args[0].reshape(-1, args[0].shape[-1])
        stats.update(x if keep["rows"] is None else x[keep["rows"]])

    return hook
