"""Weight codecs: a registry from codec name to encode/decode in compressed-tensors layout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from compress import fp8, int4, int8
from compress.schemes import LayerSpec

Tensors = dict[str, torch.Tensor]  # parameter suffix ("weight_scale", ...) -> tensor


@dataclass(frozen=True)
class Codec:
    """How one weight kind is stored.

    Attributes:
        format: the compressed-tensors format of a checkpoint holding this kind.
        encode: (weight, spec) -> stored tensors, keyed by parameter suffix.
        decode: (stored tensors, spec, dtype) -> the dequantized weight.
    """

    format: str
    encode: Callable[[torch.Tensor, LayerSpec], Tensors]
    decode: Callable[[Tensors, LayerSpec, torch.dtype], torch.Tensor]


def _encode_fp8(w: torch.Tensor, absmax: torch.Tensor) -> Tensors:
    scale = fp8.fp8_scale(absmax, w.dtype)
    return {"weight": fp8.quantize_fp8(w, scale), "weight_scale": scale}


def _decode_fp8(t: Tensors, spec: LayerSpec, dtype: torch.dtype) -> torch.Tensor:
    return fp8.dequantize_fp8(t["weight"], t["weight_scale"], dtype)


def _encode_int8(w: torch.Tensor, spec: LayerSpec) -> Tensors:
    scale = int8.int8_channel_scales(w, w.dtype)
    return {"weight": int8.quantize_int8(w, scale), "weight_scale": scale}


def _decode_int8(t: Tensors, spec: LayerSpec, dtype: torch.dtype) -> torch.Tensor:
    return int8.dequantize_int8(t["weight"], t["weight_scale"], dtype)


def int4_tensors(w: torch.Tensor, values: torch.Tensor, scales: torch.Tensor) -> Tensors:
    """The stored int4 tensors for given values and group scales."""
    return {
        "weight_packed": int4.pack_int4(values),
        "weight_scale": scales,
        "weight_shape": torch.tensor(list(w.shape), dtype=torch.int64),
    }


def _encode_int4(w: torch.Tensor, spec: LayerSpec) -> Tensors:
    scales = int4.int4_group_scales(w, spec.group_size, w.dtype)
    return int4_tensors(w, int4.quantize_int4(w, scales, spec.group_size), scales)


def _decode_int4(t: Tensors, spec: LayerSpec, dtype: torch.dtype) -> torch.Tensor:
    shape = tuple(int(v) for v in t["weight_shape"])
    values = int4.unpack_int4(t["weight_packed"], shape)
    return int4.dequantize_int4(values, t["weight_scale"], spec.group_size, dtype)


CODECS: dict[str, Codec] = {
    "fp8_tensor": Codec("float-quantized", lambda w, s: _encode_fp8(w, fp8.per_tensor_absmax(w)), _decode_fp8),
    "fp8_channel": Codec("float-quantized", lambda w, s: _encode_fp8(w, fp8.per_channel_absmax(w)), _decode_fp8),
    "int8_channel": Codec("int-quantized", _encode_int8, _decode_int8),
    "int4_group": Codec("pack-quantized", _encode_int4, _decode_int4),
}


# Dynamic per-token activation quantization as vLLM applies it at serving time.
ACTIVATION_FAKE_QUANT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "fp8": fp8.fake_quantize_fp8_per_token,
    "int8": int8.fake_quantize_int8_per_token,
}


def encode(w: torch.Tensor, spec: LayerSpec) -> Tensors:
    """Stored tensors of weight `w` under `spec`."""
    return CODECS[spec.weight].encode(w, spec)


def decode(tensors: Tensors, spec: LayerSpec, dtype: torch.dtype) -> torch.Tensor:
    """The dequantized weight the stored tensors stand for."""
    return CODECS[spec.weight].decode(tensors, spec, dtype)
