"""Reads any compressed-tensors checkpoint's quantized linears back as dense weights (ours or another tool's)."""

from __future__ import annotations

from pathlib import Path

import torch

from compress.codecs import decode
from compress.schemes import LayerSpec

_SCALE = ".weight_scale"
_CODEC_OF_DTYPE = {torch.float8_e4m3fn: "fp8_channel", torch.int8: "int8_channel"}


def _stored(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    """Module name -> {parameter suffix: tensor} for every module that has a weight_scale."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors files: pass a checkpoint folder")
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            scaled = {k[: -len(_SCALE)] for k in f.keys() if k.endswith(_SCALE)}
            for key in f.keys():
                module, _, suffix = key.rpartition(".")
                if module in scaled:
                    modules.setdefault(module, {})[suffix] = f.get_tensor(key)
    return modules


def spec_of(tensors: dict[str, torch.Tensor]) -> LayerSpec:
    """The codec the stored tensors were written with, read from their names and dtypes."""
    if "weight_packed" in tensors:
        in_features = int(tensors["weight_shape"][1])
        return LayerSpec("int4_group", None, in_features // tensors["weight_scale"].shape[-1])
    codec = _CODEC_OF_DTYPE.get(tensors["weight"].dtype)
    if codec is None:
        raise ValueError(f"stored weight dtype {tensors['weight'].dtype} is not a known quantized layout")
    return LayerSpec(codec)  # per-tensor and per-channel fp8 decode alike (the scale broadcasts)


def dequantized_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """Module name -> float32 dequantized weight of every quantized linear in `folder`.

    Zero points (asymmetric schemes) are not supported: such modules raise ValueError.
    """
    out = {}
    for module, tensors in _stored(Path(folder)).items():
        if "weight_zero_point" in tensors and bool(tensors["weight_zero_point"].any()):
            raise ValueError(f"{module} has non-zero zero points: asymmetric checkpoints are not read back here")
        out[module] = decode(tensors, spec_of(tensors), torch.float32)
    return out


def compare_checkpoints(a: str | Path, b: str | Path) -> dict:
    """How far two checkpoints' dequantized weights are apart, over the modules both quantize.

    Returns:
        {"modules_a", "modules_b", "common": counts; "max_abs_diff": max over common modules
        of max |w_a - w_b|; "max_abs_weight": max |w_a| over them (for scale);
        "differing_fraction": share of weight elements whose values differ at all}.
    """
    wa, wb = dequantized_weights(a), dequantized_weights(b)
    common = sorted(set(wa) & set(wb))
    diff = max_w = 0.0
    differing = total = 0
    for name in common:
        if wa[name].shape != wb[name].shape:
            raise ValueError(f"{name}: shapes differ, {tuple(wa[name].shape)} vs {tuple(wb[name].shape)}")
        delta = (wa[name] - wb[name]).abs()
        diff, max_w = max(diff, delta.max().item()), max(max_w, wa[name].abs().max().item())
        differing += int((delta > 0).sum())
        total += delta.numel()
    return {"modules_a": len(wa), "modules_b": len(wb), "common": len(common), "max_abs_diff": diff,
            "max_abs_weight": max_w, "differing_fraction": differing / total if total else 0.0}
