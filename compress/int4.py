"""Symmetric int4 group quantization math and the compressed-tensors int32 packing."""

from __future__ import annotations

import sys

import torch

INT4_MIN, INT4_MAX = -8, 7
_HALF_RANGE = (INT4_MAX - INT4_MIN) / 2  # 7.5: compressed-tensors' symmetric convention
_OFFSET = 8  # stored nibble = value + 8, so 0..15
_PER_INT32 = 8
_TINY = 1e-12


def int4_group_scales(w: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """absmax / 7.5 of each group of `group_size` input channels, shape [out, in / group_size]."""
    # abs and max are exact in any float dtype: take them before widening to float32.
    absmax = _grouped(w.detach(), group_size).abs().amax(dim=2)
    return (absmax.float().clamp_min(_TINY) / _HALF_RANGE).to(dtype)


def _grouped(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """[out, in] viewed as [out, in / group_size, group_size] (broadcasts against scales[..., None])."""
    return x.reshape(x.shape[0], x.shape[1] // group_size, group_size)


def quantize_int4(w: torch.Tensor, scales: torch.Tensor, group_size: int) -> torch.Tensor:
    """round(w / scale) clamped to [-8, 7], as int8 values."""
    # One float32 copy, then in place: the weight can be a 100 MB tensor.
    q = _grouped(w.detach().to(torch.float32, copy=True), group_size)
    q.div_(scales.float().unsqueeze(2)).round_().clamp_(INT4_MIN, INT4_MAX)
    return q.to(torch.int8).reshape(w.shape)


def dequantize_int4(q: torch.Tensor, scales: torch.Tensor, group_size: int, dtype: torch.dtype) -> torch.Tensor:
    """q * scale in float32, cast to `dtype`."""
    return (_grouped(q.float(), group_size) * scales.float().unsqueeze(2)).to(dtype).reshape(q.shape)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """[out, in] int4 values -> [out, in / 8] int32; value j of a word sits in bits 4j..4j+3.

    Each value is stored as value + 8 (0..15); the first input channel of each run of eight
    goes in the lowest nibble. The word is reinterpreted as signed int32 (a nibble shifted
    into bits 28..31 sets the sign bit: the two's-complement view of the same bits).
    """
    out_features, in_features = q.shape
    if in_features % _PER_INT32:
        raise ValueError(f"int4 packing needs in_features divisible by 8, got {in_features}")
    # value + 8 is 0..15, so the int8 sum cannot overflow and its bits read as uint8 unchanged.
    nibbles = (q.to(torch.int8) + _OFFSET).view(torch.uint8).reshape(out_features, in_features // 2, 2)
    if sys.byteorder == "little":
        # Two nibbles per byte (even channel low); four bytes read little-endian are one int32
        # word with channel 8k+j in bits 4j..4j+3: the same bits as the shifts below, 5x faster.
        pairs = nibbles[:, :, 0] | (nibbles[:, :, 1] << 4)
        return pairs.contiguous().view(torch.int32)
    nibbles = nibbles.to(torch.int32).reshape(out_features, in_features // _PER_INT32, _PER_INT32)
    words = nibbles[:, :, 0].clone()
    for j in range(1, _PER_INT32):
        words |= nibbles[:, :, j] << (4 * j)
    return words


def unpack_int4(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of pack_int4: [out, in / 8] int32 -> [out, in] int8 values in [-8, 7]."""
    nibbles = torch.stack([(packed >> (4 * j)) & 0xF for j in range(_PER_INT32)], dim=2)
    return (nibbles - _OFFSET).reshape(shape).to(torch.int8)
