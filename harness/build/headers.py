"""Checks a local checkpoint folder from its config.json and safetensors headers alone (no weights loaded)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.st_header import HeaderError, read_header
from harness.errors import BuildError

INDEX = "model.safetensors.index.json"
# Bytes per element of each safetensors dtype.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
               "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8, "BOOL": 1}
# compressed-tensors format -> (stored weight parameter, its dtype or None for any).
_CT_STORAGE = {"pack-quantized": ("weight_packed", "I32"), "float-quantized": ("weight", "F8_E4M3"),
               "int-quantized": ("weight", "I8"), "naive-quantized": ("weight", None)}
_LAYER = re.compile(r"language_model\.layers\.(\d+)\.")
_FIX = "re-export or re-download the checkpoint (or rebuild it: delete the cached folder)"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its safetensors header describes it."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def check_headers(folder: Path | str) -> dict[str, TensorInfo]:
    """Refuses a folder that is not a usable vision-language checkpoint; returns its tensors.

    Checks: config.json parses and names an image-text model; weights exist as safetensors;
    each header is whole and consistent with its file; embedding and projection shapes agree
    with config.json; a compressed-tensors quantization_config matches the stored tensors.

    Raises:
        BuildError: one sentence naming the file, the problem and the fix.
    """
    folder = Path(folder)
    config = read_config(folder)
    check_vlm(folder, config)
    tensors = read_tensors(folder)
    check_shapes(folder, config, tensors)
    check_quantization(folder, config, tensors)
    return tensors


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BuildError(f"{folder} has no config.json: point model.path at a transformers checkpoint folder") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BuildError(f"{path} is not valid JSON ({err}): {_FIX}") from err
    if not isinstance(config, dict):
        raise BuildError(f"{path} holds a JSON {type(config).__name__}, not an object: {_FIX}")
    return config


def check_vlm(folder: Path, config: Mapping[str, Any]) -> None:
    """An image-text model: a vision_config and a ...ForConditionalGeneration architecture."""
    archs = config.get("architectures") or []
    conditional = any(str(a).endswith("ForConditionalGeneration") for a in archs)
    if not isinstance(config.get("vision_config"), Mapping) or not conditional:
        raise BuildError(
            f"{folder} is not a vision-language model (config.json has {'a' if config.get('vision_config') else 'no'} "
            f"vision_config, architectures {archs}): set model.path to an image-text checkpoint such as "
            "Gemma 4 or Gemma 3 (…ForConditionalGeneration)")


def read_tensors(folder: Path) -> dict[str, TensorInfo]:
    """Every tensor of the folder's safetensors files (index order when an index exists)."""
    files = _weight_files(folder)
    tensors: dict[str, TensorInfo] = {}
    for path in files:
        for name, info in shard_tensors(path).items():
            tensors[name] = info
    index = folder / INDEX
    if index.is_file():
        wanted = _index_map(index)
        missing = sorted(n for n in wanted if n not in tensors)
        if missing:
            raise BuildError(f"{index} lists {len(missing)} tensors no shard holds (e.g. {missing[0]}): {_FIX}")
    return tensors


def _weight_files(folder: Path) -> list[Path]:
    index = folder / INDEX
    if index.is_file():
        names = dict.fromkeys(_index_map(index).values())
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise BuildError(f"{folder} lacks the shard {missing[0]} its {INDEX} names: {_FIX}")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    other = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".gguf"))
    hint = (f" (only {', '.join(other[:3])}: convert them with save_pretrained(safe_serialization=True))"
            if other else "")
    raise BuildError(f"{folder} has no weights (*.safetensors){hint}: point model.path at a complete checkpoint folder")


def _index_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise BuildError(f"{index} is not a valid safetensors index ({type(err).__name__}: {err}): {_FIX}") from err
    if not isinstance(weight_map, dict):
        raise BuildError(f"{index} weight_map is not an object: {_FIX}")
    return {str(k): str(v) for k, v in weight_map.items()}


def shard_tensors(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, after checking its header against the file size."""
    try:
        header, data_start = read_header(path)
    except HeaderError as err:
        raise BuildError(f"{err}: {_FIX}") from err
    tensors = {name: _entry(path, name, info) for name, info in header.items() if name != "__metadata__"}
    described = data_start + max((_offsets(header[n])[1] for n in tensors), default=0)
    size = path.stat().st_size
    if described != size:
        state = "truncated" if described > size else "longer than its header says"
        raise BuildError(f"{path} is {state}: its header describes {described} bytes, the file has {size}: {_FIX}")
    return tensors


def _offsets(info: Mapping[str, Any]) -> tuple[int, int]:
    begin, end = info["data_offsets"]
    return int(begin), int(end)


def _entry(path: Path, name: str, info: Any) -> TensorInfo:
    try:
        dtype, shape = info["dtype"], tuple(int(d) for d in info["shape"])
        begin, end = _offsets(info)
    except (KeyError, TypeError, ValueError) as err:
        raise BuildError(f"{path}: header entry {name} is malformed ({type(err).__name__}: {err}): {_FIX}") from err
    if dtype not in DTYPE_BYTES or any(d < 0 for d in shape) or not 0 <= begin <= end:
        raise BuildError(f"{path}: header entry {name} has dtype {dtype!r}, shape {list(shape)}, offsets "
                         f"[{begin}, {end}], which is impossible: {_FIX}")
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise BuildError(f"{path}: tensor {name} ({dtype} {list(shape)}) needs "
                         f"{math.prod(shape) * DTYPE_BYTES[dtype]} bytes but its offsets span {end - begin}: {_FIX}")
    return TensorInfo(path.name, dtype, shape, end - begin)


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) else config


def check_shapes(folder: Path, config: Mapping[str, Any], tensors: Mapping[str, TensorInfo]) -> None:
    """Embedding, decoder linears and layer count of the language model against config.json."""
    text = _text_config(config)
    hidden, vocab, layers = text.get("hidden_size"), text.get("vocab_size"), text.get("num_hidden_layers")
    for name, info in tensors.items():
        if "language_model" not in name and not name.startswith("model.layers."):
            continue
        expected = _expected_shape(name, info, hidden, vocab)
        if expected is not None:
            dim, value, key = expected
            raise BuildError(f"{folder}: tensor {name} has shape {list(info.shape)} but config.json says "
                             f"{key}={value} (dimension {dim}): the weights and config.json are from different "
                             f"models; {_FIX}")
    seen = {int(m.group(1)) for n in tensors if (m := _LAYER.search(n))}
    if isinstance(layers, int) and seen and seen != set(range(layers)):
        extra = sorted(seen - set(range(layers))) or sorted(set(range(layers)) - seen)
        raise BuildError(f"{folder}: config.json says num_hidden_layers={layers} but the weights hold decoder "
                         f"layers {min(seen)}..{max(seen)} ({len(seen)} layers; e.g. layer {extra[0]} differs): {_FIX}")


def _expected_shape(name: str, info: TensorInfo, hidden: Any, vocab: Any) -> tuple[int, Any, str] | None:
    """(dimension, config value, key) of the first dimension contradicting config.json, else None."""
    shape = info.shape
    if name.endswith("embed_tokens.weight") and len(shape) == 2:
        if shape[0] != vocab:
            return 0, vocab, "vocab_size"
        return (1, hidden, "hidden_size") if shape[1] != hidden else None
    if len(shape) != 2 or not name.endswith(".weight") or info.dtype not in ("F32", "F16", "BF16", "F8_E4M3", "I8"):
        return None  # packed int4 stores 8 values per element: its width is checked by weight_shape
    leaf = name.rsplit(".", 2)[-2]
    if leaf in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj") and shape[1] != hidden:
        return 1, hidden, "hidden_size"
    if leaf in ("o_proj", "down_proj") and shape[0] != hidden:
        return 0, hidden, "hidden_size"
    return None


def check_quantization(folder: Path, config: Mapping[str, Any], tensors: Mapping[str, TensorInfo]) -> None:
    """A compressed-tensors quantization_config must describe the tensors that are present."""
    qc = config.get("quantization_config")
    if not isinstance(qc, Mapping) or qc.get("quant_method") != "compressed-tensors":
        return
    formats = _ct_formats(qc)
    unknown = sorted(f for f in formats if f not in _CT_STORAGE and f != "dense")
    if unknown:
        raise BuildError(f"{folder}: quantization_config format {unknown[0]!r} is not one this harness checks "
                         f"({', '.join(_CT_STORAGE)}): {_FIX}")
    scaled = {n[: -len(".weight_scale")] for n in tensors if n.endswith(".weight_scale")}
    packed = {n[: -len(".weight_packed")] for n in tensors if n.endswith(".weight_packed")}
    if not scaled:
        raise BuildError(f"{folder}: config.json declares compressed-tensors quantization "
                         f"({', '.join(sorted(formats))}) but no tensor has a weight_scale: the weights are not "
                         f"quantized; {_FIX}")
    orphans = sorted(packed - scaled)
    if orphans:
        raise BuildError(f"{folder}: {orphans[0]}.weight_packed has no weight_scale beside it: {_FIX}")
    for module in sorted(scaled):
        _check_module_storage(folder, module, formats, tensors)


def _ct_formats(qc: Mapping[str, Any]) -> set[str]:
    top = qc.get("format")
    groups = qc.get("config_groups") or {}
    per_group = {g.get("format") for g in groups.values() if isinstance(g, Mapping) and g.get("format")}
    if top == "mixed-precision" or (per_group and top is None):
        return {str(f) for f in per_group}
    return {str(top)} if top else {"dense"}


def _check_module_storage(folder: Path, module: str, formats: set[str], tensors: Mapping[str, TensorInfo]) -> None:
    for fmt in formats:
        param, dtype = _CT_STORAGE.get(fmt, (None, None))
        stored = tensors.get(f"{module}.{param}") if param else None
        if stored is not None and (dtype is None or stored.dtype == dtype):
            if fmt == "pack-quantized" and f"{module}.weight_shape" not in tensors:
                raise BuildError(f"{folder}: {module} is pack-quantized but has no weight_shape: {_FIX}")
            return
    wanted = " or ".join(f"{_CT_STORAGE[f][0]} ({_CT_STORAGE[f][1] or 'any dtype'})" for f in sorted(formats)
                         if f in _CT_STORAGE)
    present = sorted(n.rsplit(".", 1)[1] + f" ({t.dtype})" for n, t in tensors.items() if n.startswith(module + "."))
    raise BuildError(f"{folder}: {module} has a weight_scale but not the {wanted} that quantization_config format "
                     f"{'/'.join(sorted(formats))} needs (present: {', '.join(present)}): {_FIX}")
