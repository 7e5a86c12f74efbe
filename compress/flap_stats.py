"""Calibration statistics for FLAP: running mean/M2 of every decoder layer's down_proj input.

The dense model runs in transformers over chat-formatted image+prompt pairs; a forward
pre-hook on each `model.language_model.layers.{i}.mlp.down_proj` folds the input rows
(every token position of the sample: image soft tokens, chat scaffolding and prompt) into a
float64 RunningStats. Memory: the model in its stored dtype (Gemma 4 E4B in bf16: ~16 GB,
most of it the per-layer embedding table) plus 2 x 8 bytes per FFN channel
(42 x 10240 channels: 6.9 MB) plus one sample's activations, so E4B fits in 24 GiB;
samples are run one at a time so activation memory does not grow with num_samples.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

from compress.flap import RunningStats

DOWN_PROJ = re.compile(r"(?:.*\.)?layers\.(\d+)\.mlp\.down_proj$")
LANGUAGE_PREFIX = "model.language_model.layers."


def down_proj_stats(src_dir: Path, calibration: Iterable, tokens: str = "all") -> dict[int, RunningStats]:
    """Decoder layer index -> RunningStats of its down_proj input over the calibration tokens.

    Args:
        src_dir: dense Gemma 4 checkpoint folder.
        calibration: (PIL image, prompt) pairs or processor-output dicts.
        tokens: "all" positions, or "text" (positions whose input id is not the image token).
    """
    import torch

    from compress.calibration import as_model_inputs
    from compress.folders import load_model

    model = load_model(Path(src_dir))
    stats: dict[int, RunningStats] = {}
    keep: dict[str, torch.Tensor | None] = {"rows": None}  # the current sample's kept positions
    handles = []
    for name, module in model.named_modules():
        match = DOWN_PROJ.match(name)
        if match and "language_model" in name:
            layer = int(match.group(1))
            stats[layer] = RunningStats(module.in_features)
            handles.append(module.register_forward_pre_hook(_folder(stats[layer], keep)))
    if not stats:
        raise ValueError(f"{src_dir}: no language_model.layers.N.mlp.down_proj found; "
                         "FLAP here supports Gemma 4 checkpoints")
    try:
        with torch.no_grad():
            image_token = getattr(model.config, "image_token_id", None)
            for inputs in as_model_inputs(calibration, Path(src_dir)):
                keep["rows"] = (inputs["input_ids"] != image_token).reshape(-1) if tokens == "text" else None
                model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _folder(stats: RunningStats, keep: dict):
    def hook(module, args):
        x = args[0].reshape(-1, args[0].shape[-1])
        stats.update(x if keep["rows"] is None else x[keep["rows"]])

    return hook
