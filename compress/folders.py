"""Checkpoint folders: checking a source and destination pair, and loading a source as a transformers model."""

from __future__ import annotations

import json
from pathlib import Path


def check_paths(src_dir: Path, out_dir: Path) -> None:
    if not (src_dir / "config.json").is_file():
        raise FileNotFoundError(f"{src_dir} has no config.json: pass a saved transformers checkpoint folder")
    if "quantization_config" in json.loads((src_dir / "config.json").read_text()):
        raise ValueError(f"{src_dir} is already quantized: compress the dense (or pruned) checkpoint instead")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: remove it or choose another output folder")
    if out_dir.resolve() == src_dir.resolve():
        raise ValueError("the output folder must differ from the source folder")


def load_model(src_dir: Path):
    """The transformers model of a checkpoint: image-text-to-text when it has a vision config."""
    import transformers

    config = json.loads((src_dir / "config.json").read_text())
    if config.get("flap_pruned"):
        from compress.pruned_hf import load_pruned

        return load_pruned(src_dir, dtype="auto").eval()
    auto = transformers.AutoModelForImageTextToText if "vision_config" in config else transformers.AutoModelForCausalLM
    return auto.from_pretrained(src_dir, dtype="auto").eval()
