"""Disk space a build needs: the compressed checkpoint's size estimated from the source's headers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from harness.build.headers import DTYPE_BYTES, read_tensors
from harness.errors import BuildError

# Room for config.json, tokenizer and recipe files beside the weights of a built checkpoint.
SIDE_FILES_MARGIN_BYTES = 16 * 2**20


def require_space(src: Path, cache: Path, compress_config: Any, scheme: str) -> None:
    """Refuses a build whose estimated output does not fit in the free space under ``cache``.

    Raises:
        BuildError: how much is free, how much the build needs, and where to build instead.
    """
    need = estimate_checkpoint_bytes(src, compress_config)
    free = shutil.disk_usage(_existing_parent(cache)).free
    if free < need:
        raise BuildError(f"cache_dir {cache} has {free / 2**30:.2f} GiB free but the {scheme} checkpoint needs about "
                         f"{need / 2**30:.2f} GiB: free space there or set cache_dir to a larger disk")


def estimate_checkpoint_bytes(src: Path, compress_config: Any) -> int:
    """Bytes a compressed copy of ``src`` will take: quantized linears at the scheme's bytes per
    weight plus their scales, every other tensor as stored in the source, plus side files.
    Pruning and multi-step configs are bounded by the source's own size (they only shrink it).
    A 4-bit GGUF export holds a 16-bit intermediate beside its output until it finishes: bounded by
    twice the source (a 16-bit GGUF or Q8_0 is no larger than the source)."""
    from compress.configs import uses_llama_cpp
    from compress.plan import plan_modules  # lazy: compress's planning imports its configs

    tensors = read_tensors(src)
    if uses_llama_cpp(compress_config):
        return SIDE_FILES_MARGIN_BYTES + 2 * sum(t.nbytes for t in tensors.values())
    if not hasattr(compress_config, "effective_targets"):
        return SIDE_FILES_MARGIN_BYTES + sum(t.nbytes for t in tensors.values())
    shapes = {n[: -len(".weight")]: t.shape for n, t in tensors.items() if n.endswith(".weight")}
    try:
        plan = plan_modules(shapes, compress_config)
    except ValueError as err:
        raise BuildError(f"cannot compress {src}: {err}") from err
    total = SIDE_FILES_MARGIN_BYTES
    for name, info in tensors.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module in plan:
            total += _stored_bytes(info.shape, plan[module], DTYPE_BYTES[info.dtype])
        else:
            total += info.nbytes
    return total


def _stored_bytes(shape: tuple[int, ...], spec: Any, scale_bytes: int) -> int:
    """Bytes of one quantized [out, in] weight: its codes and its scales (in the source dtype)."""
    out_f, in_f = shape
    if spec.weight == "int4_group":
        return out_f * in_f // 2 + out_f * (in_f // spec.group_size) * scale_bytes + 2 * 8  # + weight_shape
    scales = 1 if spec.weight.endswith("_tensor") else out_f
    return out_f * in_f + scales * scale_bytes  # one byte per FP8 or int8 code


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path
