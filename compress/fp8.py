"""FP8 (e4m3) quantization math: scales, quantize, dequantize, per-token fake quantization."""

from __future__ import annotations

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn value
_TINY = 1e-12  # floor on absmax so an all-zero row gets a usable scale


def fp8_scale(absmax: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scale mapping |x| <= absmax onto [-448, 448], rounded to the storage dtype."""
    return (absmax.float().clamp_min(_TINY) / FP8_MAX).to(dtype)


def per_tensor_absmax(w: torch.Tensor) -> torch.Tensor:
    """max |w| as a 1-element tensor (compressed-tensors stores per-tensor scales as [1])."""
    return w.detach().abs().amax().float().reshape(1)


def per_channel_absmax(w: torch.Tensor) -> torch.Tensor:
    """max |w| of each output row, shape [out, 1]."""
    return w.detach().abs().amax(dim=1, keepdim=True).float()


def quantize_fp8(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """w / scale, saturated to the e4m3 range and cast (round to nearest even)."""
    # One float32 copy, then in place: the weight can be a 100 MB tensor.
    x = w.detach().to(torch.float32, copy=True).div_(scale.float())
    return x.clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale in float32, cast to `dtype`."""
    return (q.float() * scale.float()).to(dtype)


def fake_quantize_fp8_per_token(x: torch.Tensor) -> torch.Tensor:
    """What dynamic per-token FP8 activation quantization does to x (one scale per row)."""
    scale = fp8_scale(x.detach().abs().amax(dim=-1, keepdim=True), torch.float32)
    return dequantize_fp8(quantize_fp8(x, scale), scale, x.dtype)
