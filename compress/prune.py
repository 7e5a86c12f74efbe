"""prune_checkpoint: a dense Gemma 4 folder in, a FLAP-pruned folder (docs/INTERFACES.md format) out."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

from compress.flap_config import FlapConfig
from compress.prune_plan import MLP_KEY, LayerPrune, plan_pruning, read_text_config

ARCHITECTURE = "FlapGemma4ForConditionalGeneration"


def _tensor_locations(src_dir: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it."""
    from compress.export import source_files
    from compress.st_header import read_header

    return {key: path for path in source_files(src_dir) for key in read_header(path)[0] if key != "__metadata__"}


def _reader(locations: dict[str, Path]):
    """A function reading one tensor by name, opening its file only for that read."""
    from safetensors import safe_open

    def read(key: str):
        if key not in locations:
            raise KeyError(f"the checkpoint has no tensor {key}: is it a transformers-saved Gemma 4 folder?")
        with safe_open(str(locations[key]), framework="pt") as f:
            return f.get_tensor(key)

    return read


def _check_layers(locations: dict[str, Path], num_layers: int) -> None:
    for i in range(num_layers):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            if MLP_KEY.format(i=i, proj=proj) not in locations:
                raise ValueError(f"{MLP_KEY.format(i=i, proj=proj)} is missing: FLAP needs every layer's dense MLP")
        bias = MLP_KEY.format(i=i, proj="down_proj")[: -len("weight")] + "bias"
        if bias in locations:
            raise ValueError(f"{bias} already exists: the checkpoint looks pruned; prune the dense checkpoint")


def _pruned_tensor(key: str, tensor, layers: dict[str, tuple[LayerPrune, str]]):
    """The tensor as stored after pruning (rows of gate/up, columns of down), else unchanged."""
    if key not in layers:
        return tensor
    layer, proj = layers[key]
    return tensor[:, layer.kept] if proj == "down_proj" else tensor[layer.kept, :]


def _write_weights(src_dir: Path, out_dir: Path, plan: list[LayerPrune]) -> None:
    """Streams every tensor; pruned MLP weights are sliced and each down_proj gets its bias."""
    from compress.export import source_files, write_index
    from compress.st_stream import ShardWriter, source_tensors

    projections = ("gate_proj", "up_proj", "down_proj")
    layers = {MLP_KEY.format(i=p.index, proj=proj): (p, proj) for p in plan for proj in projections}
    writer = ShardWriter(out_dir)
    for t in source_tensors(source_files(src_dir)):
        if t.key not in layers:
            writer.add_copy(t.key, t.info, t.path, t.data_start)
            continue
        weight = t.load()
        writer.add_tensor(t.key, _pruned_tensor(t.key, weight, layers).contiguous())
        layer, proj = layers[t.key]
        if proj == "down_proj":
            writer.add_tensor(t.key[: -len("weight")] + "bias", layer.bias.to(weight.dtype))
    write_index(out_dir, writer.finish())


def _write_config(src_dir: Path, out_dir: Path, plan: list[LayerPrune]) -> None:
    """config.json with per-layer widths and the flags the loaders look for."""
    config = json.loads((src_dir / "config.json").read_text())
    config["text_config"]["intermediate_sizes"] = [len(p.kept) for p in plan]
    config["text_config"]["flap_pruned"] = True
    config["flap_pruned"] = True
    config["architectures"] = [ARCHITECTURE]
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def prune_checkpoint(src_dir: Path, out_dir: Path, config: FlapConfig, calibration: Iterable | None = None, *,
                     device: str = "auto") -> Path:
    """Prunes every decoder layer's MLP of a dense Gemma 4 checkpoint as `config` says.

    Calibration statistics (method "flap") come from the dense model in transformers; the
    weights are then streamed tensor by tensor. The folder appears atomically when complete.

    Args:
        src_dir: dense Gemma 4 transformers checkpoint folder.
        out_dir: destination; must not exist.
        config: the pruning config.
        calibration: (PIL image, prompt) pairs or processor-output dicts, or a
            CalibrationSource to draw config.num_samples from (method "magnitude" needs none).
        device: where the calibration statistics are gathered (compress.device), one decoder
            layer at a time; the pruning itself reads and writes tensors on the CPU.

    Returns:
        out_dir.
    """
    from compress.calibration import resolve
    from compress.device import device_record, resolve_device
    from compress.export import copy_side_files
    from compress.flap_stats import down_proj_stats
    from compress.folders import atomic_folder, check_paths
    from compress.lineage import write_recipe

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    used = resolve_device(device)  # an unusable device fails before any work
    used = used if config.needs_calibration else "cpu"  # magnitude scores read weights only
    check_paths(src_dir, out_dir)
    text_config = read_text_config(src_dir)
    num_layers = int(text_config["num_hidden_layers"])
    locations = _tensor_locations(src_dir)
    _check_layers(locations, num_layers)
    if config.mode == "schedule":
        config.shares_for(num_layers)  # a missing schedule entry fails before calibration
    started = time.perf_counter()
    stats, described = None, None
    if config.needs_calibration:
        items, described = resolve(calibration, config.num_samples, config.seed, "flap")
        stats = down_proj_stats(src_dir, items, config.calibration_tokens, device=used)
        described["tokens"] = config.calibration_tokens
    read = _reader(locations)
    plan = plan_pruning(lambda i: read(MLP_KEY.format(i=i, proj="down_proj")), num_layers, text_config, config, stats)
    with atomic_folder(out_dir) as partial:
        _write_weights(src_dir, partial, plan)
        _write_config(src_dir, partial, plan)
        copy_side_files(src_dir, partial)
        step = _step(config, described, plan, time.perf_counter() - started)
        write_recipe(src_dir, partial, {**step, "device": device_record(device, used)})
    return out_dir


def _step(config: FlapConfig, described: dict | None, plan: list[LayerPrune], duration_s: float) -> dict:
    from compress.configs import config_to_dict

    total = sum(p.width for p in plan)
    removed = sum(p.width - len(p.kept) for p in plan)
    return {"step": "prune", "config": config_to_dict(config), "calibration": described,
            "layers": [p.summary() for p in plan], "removed_channels": removed,
            "removed_share": round(removed / total, 6), "duration_s": round(duration_s, 3)}
