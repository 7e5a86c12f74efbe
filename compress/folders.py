"""Checkpoint folders: source and destination checks, atomic writes, and loading a source in transformers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
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


def fresh_partial(out_dir: Path) -> Path:
    """The work folder ``<out_dir>.partial``, emptied of an interrupted run's leftovers."""
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


@contextmanager
def atomic_folder(out_dir: Path) -> Iterator[Path]:
    """Yields a fresh work folder that becomes ``out_dir`` only when the block completes.

    A reader (or a build cache) sees the whole checkpoint or none; an interrupted block
    leaves ``<out_dir>.partial``, which the next write clears.
    """
    partial = fresh_partial(out_dir)
    yield partial
    partial.rename(out_dir)
