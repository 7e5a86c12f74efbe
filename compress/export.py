"""Writes a compressed checkpoint folder: streamed weights, config.json, tokenizer files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from compress.schemes import LayerSpec

# Files rewritten here or by lineage; everything else at the top level is copied as is.
_REWRITTEN = {"config.json", "model.safetensors.index.json", "recipe.json"}
INDEX = "model.safetensors.index.json"


def source_files(src_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder, in index order when there is an index."""
    index = src_dir / INDEX
    if index.is_file():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [src_dir / n for n in names]
    files = sorted(src_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{src_dir} holds no *.safetensors: point at a saved transformers checkpoint folder")
    return files


def weight_shapes(src_dir: Path) -> dict[str, tuple[int, ...]]:
    """Module name -> shape of its `.weight`, read from the safetensors headers only."""
    from compress.st_header import read_header

    shapes = {}
    for path in source_files(src_dir):
        header, _ = read_header(path)
        for key, info in header.items():
            if key.endswith(".weight"):
                shapes[key[: -len(".weight")]] = tuple(info["shape"])
    return shapes


def write_weights(src_dir: Path, out_dir: Path, plan: dict[str, LayerSpec], precomputed: dict | None = None) -> None:
    """Streams every source tensor to out_dir, planned weights replaced by their encodings.

    Args:
        src_dir: source checkpoint folder.
        out_dir: destination folder (exists).
        plan: module name -> spec of the weights to encode.
        precomputed: module name -> stored tensors already made (GPTQ); others are
            encoded here one tensor at a time.
    """
    from compress.codecs import encode
    from compress.st_stream import ShardWriter, source_tensors

    precomputed = precomputed or {}
    writer = ShardWriter(out_dir)
    for t in source_tensors(source_files(src_dir)):
        module = t.key[: -len(".weight")] if t.key.endswith(".weight") else None
        if module in plan:
            tensors = precomputed.get(module) or encode(t.load(), plan[module])
            for suffix, tensor in tensors.items():
                writer.add_tensor(f"{module}.{suffix}", tensor)
        else:
            writer.add_copy(t.key, t.info, t.path, t.data_start)
    write_index(out_dir, writer.finish())


def write_index(out_dir: Path, weight_map: dict[str, str]) -> None:
    """Writes model.safetensors.index.json when the weights span several shard files."""
    if len(set(weight_map.values())) > 1:
        total = sum((out_dir / n).stat().st_size for n in set(weight_map.values()))
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out_dir / INDEX).write_text(json.dumps(index, indent=2))


def write_config(src_dir: Path, out_dir: Path, quantization_config: dict) -> None:
    """config.json of the source with `quantization_config` set (replacing any earlier one)."""
    config = json.loads((src_dir / "config.json").read_text())
    config["quantization_config"] = quantization_config
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def copy_side_files(src_dir: Path, out_dir: Path) -> list[str]:
    """Copies tokenizer, processor, chat template and generation files; returns their names."""
    copied = []
    for path in sorted(src_dir.iterdir()):
        if path.is_file() and path.suffix != ".safetensors" and path.name not in _REWRITTEN:
            shutil.copy2(path, out_dir / path.name)
            copied.append(path.name)
    return copied
