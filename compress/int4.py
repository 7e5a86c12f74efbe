"""Symmetric int4 group quantization math and the compressed-tensors int32 packing."""

from __future__ import annotations

import torch

INT4_MIN, INT4_MAX = -8, 7
_HALF_RANGE = (INT4_MAX - INT4_MIN) / 2  # 7.5: compressed-tensors' symmetric convention
_OFFSET = 8  # stored nibble = value + 8, so 0..15
_PER_INT32 = 8
_TINY = 1e-12


def int4_group_scales(w: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """absmax / 7.5 of each group of `group_size` input channels, shape [out, in / group_size]."""
    out_features, in_features = w.shape
    groups = w.detach().float().reshape(out_features, in_features // group_size, group_size)
    return (groups.abs().amax(dim=2).clamp_min(_TINY) / _HALF_RANGE).to(dtype)


def expand_scales(scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """Group scales repeated over their columns, shape [out, in], float32."""
    return scales.float().repeat_interleave(group_size, dim=1)


def quantize_int4(w: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """round(w / scale) clamped to [-8, 7], as int8 values."""
    q = torch.round(w.float() / expand_scales(scales, group_size))
    return q.clamp(INT4_MIN, INT4_MAX).to(torch.int8)


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """q * scale in float32, cast to `dtype`."""
    return (q.float() * expand_scales(scales, group_size)).to(dtype)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] int4 values -> [out, in / 8] int32; value j of a word sits in bits 4j..4j+3.

    Each value is stored as value + 8 (0..15); the first input channel of each run of eight
    goes in the lowest nibble. The word is reinterpreted as signed int32.
    """
    out_features, in_features = q.shape
    if in_features % _PER_INT32:
        raise ValueError(f"int4 packing needs in_features divisible by 8, got {in_features}")
    nibbles = (q.to(torch.int64) + _OFFSET).reshape(out_features, in_features // _PER_INT32, _PER_INT32)
    shifts = torch.arange(_PER_INT32, dtype=torch.int64) * 4
    words = (nibbles << shifts).sum(dim=2)
    # Words above 2**31 - 1 wrap to negative int32, the two's-complement view of the same bits.
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def unpack_int4(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of pack_int4: [out, in / 8] int32 -> [out, in] int8 values in [-8, 7]."""
    shifts = torch.arange(_PER_INT32, dtype=torch.int64) * 4
    words = packed.to(torch.int64) & 0xFFFFFFFF
    nibbles = (words.unsqueeze(2) >> shifts) & 0xF
    return (nibbles - _OFFSET).reshape(shape).to(torch.int8)
