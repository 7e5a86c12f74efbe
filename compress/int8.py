"""Symmetric int8 quantization math: per-channel weights and per-token activations."""

from __future__ import annotations

import torch

INT8_MIN, INT8_MAX = -128, 127
_HALF_RANGE = (INT8_MAX - INT8_MIN) / 2  # 127.5: compressed-tensors' symmetric convention
_TINY = 1e-12


def int8_scale(absmax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """absmax / 127.5, rounded to the storage dtype."""
    return (absmax.float().clamp_min(_TINY) / _HALF_RANGE).to(dtype)


def int8_channel_scales(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One scale per output row, shape [out, 1]."""
    return int8_scale(w.detach().abs().amax(dim=1, keepdim=True), dtype)


def quantize_int8(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """round(w / scale) clamped to [-128, 127], as int8."""
    q = w.detach().to(torch.float32, copy=True).div_(scale.float())
    return q.round_().clamp_(INT8_MIN, INT8_MAX).to(torch.int8)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale in float32, cast to `dtype`."""
    return (q.float() * scale.float()).to(dtype)


def fake_quantize_int8_per_token(x: torch.Tensor) -> torch.Tensor:
    """What dynamic per-token int8 activation quantization does to x (one scale per row)."""
    scale = int8_scale(x.detach().abs().amax(dim=-1, keepdim=True), torch.float32)
    return dequantize_int8(quantize_int8(x, scale), scale, x.dtype)
