"""Test helper: a FLAP-style pruned tiny Gemma 4 checkpoint, and a transformers reference that loads it.

The pruned folder follows the agreed format (docs/INTERFACES.md, FLAP section): gate/up rows
and down_proj columns kept per layer, down_proj.bias for every layer, per-layer widths in
text_config.intermediate_sizes, flap_pruned flags and the FlapGemma4ForConditionalGeneration
architecture. (compress.prune writes the same format from a FlapConfig; this helper takes
exact widths, so the test controls them.) Channel choice and bias follow the FLAP paper: score of channel j = variance
of down_proj's input j over calibration tokens * ||W_down[:, j]||^2; kept channels are the
top scores; bias = W_down[:, pruned] @ mean(x_pruned).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WEIGHTS = "model.safetensors"
MLP = "model.language_model.layers.{i}.mlp.{name}"


def down_proj_input_stats(model_dir: Path, samples) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per decoder layer: (mean, variance) of each down_proj input channel over every prompt token."""
    from harness.score.offline import load_model
    from harness.tiny.train import encode

    model, processor = load_model(model_dir, "float32")
    sums: dict[int, list[torch.Tensor]] = {}

    def hook(index):
        def record(module, args):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            acc = sums.setdefault(index, [torch.zeros(x.shape[1], dtype=torch.float64)] * 2 + [torch.zeros(())])
            sums[index] = [acc[0] + x.sum(0), acc[1] + (x * x).sum(0), acc[2] + x.shape[0]]
        return record

    layers = model.model.language_model.layers
    handles = [layer.mlp.down_proj.register_forward_pre_hook(hook(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        for sample in samples:
            batch = encode(processor, [sample], with_answers=False)
            batch.pop("labels")
            model(**batch)
    for handle in handles:
        handle.remove()
    out = []
    for index in range(len(layers)):
        total, total_sq, count = sums[index]
        mean = total / count
        out.append((mean, total_sq / count - mean * mean))
    return out


def make_pruned(src_dir: Path, out_dir: Path, widths: list[int], stats) -> Path:
    """Writes a pruned copy of `src_dir` keeping `widths[i]` MLP channels in layer i."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(src_dir / WEIGHTS)
    for i, (width, (mean, variance)) in enumerate(zip(widths, stats)):
        down = tensors[MLP.format(i=i, name="down_proj.weight")]
        score = variance * down.double().pow(2).sum(0)
        kept = torch.sort(torch.topk(score, width).indices).values
        pruned = torch.tensor(sorted(set(range(down.shape[1])) - set(kept.tolist())), dtype=torch.long)
        bias = (down.double()[:, pruned] @ mean[pruned]) if len(pruned) else torch.zeros(down.shape[0])
        for name in ("gate_proj.weight", "up_proj.weight"):
            key = MLP.format(i=i, name=name)
            tensors[key] = tensors[key][kept].contiguous()
        tensors[MLP.format(i=i, name="down_proj.weight")] = down[:, kept].contiguous()
        tensors[MLP.format(i=i, name="down_proj.bias")] = bias.to(down.dtype)
    shutil.copytree(src_dir, out_dir, ignore=shutil.ignore_patterns(WEIGHTS, "config.json", "training_log.json"))
    save_file(tensors, out_dir / WEIGHTS, metadata={"format": "pt"})
    config = json.loads((src_dir / "config.json").read_text())
    config["architectures"] = ["FlapGemma4ForConditionalGeneration"]
    config["flap_pruned"] = True
    config["text_config"].update(intermediate_sizes=list(widths), flap_pruned=True)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    return out_dir


def edit_weights(src_dir: Path, out_dir: Path, edit) -> Path:
    """A copy of checkpoint `src_dir` whose tensors dict went through `edit(tensors)` (in place)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(src_dir / WEIGHTS)
    edit(tensors)
    shutil.copytree(src_dir, out_dir, ignore=shutil.ignore_patterns(WEIGHTS))
    save_file(tensors, out_dir / WEIGHTS, metadata={"format": "pt"})
    return out_dir


def load_reference(model_dir: Path, zero_bias: bool = False):
    """The pruned checkpoint through the project's transformers loader (float32, eval) and its processor.

    `zero_bias` zeroes every down_proj bias: the model a loader dropping them would give.
    """
    import transformers

    from compress.pruned_hf import load_pruned

    model = load_pruned(model_dir, dtype="float32")
    if zero_bias:
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                layer.mlp.down_proj.bias.zero_()
    return model, transformers.AutoProcessor.from_pretrained(model_dir)
