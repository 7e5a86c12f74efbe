"""GPU check of the compress numerics on E4B-shaped layers, and the energy of each GEMM kind.

Run on a CUDA machine from the repo root: `python -m bench.gpu_compress_check` (needs torch
with CUDA and nvidia-ml-py; not vLLM). Prints, for E4B's MLP shapes (2560 <-> 10240):

- output SQNR (dB) against the bf16 GEMM of: FP8 per-tensor weight-only, FP8 per-channel
  weights with dynamic per-token FP8 activations on the real FP8 tensor-core GEMM
  (torch._scaled_mm), int8 W8A8 on the real int8 GEMM (torch._int_mm), int4 group-128 RTN;
- whether the real FP8/int8 kernels agree with our dequantized reference (same scales);
- int4 pack/unpack round trip on the GPU;
- NVML-measured joules per GEMM, bf16 vs FP8, at a decode-like batch (8 tokens) and a
  prefill-like batch (4096 tokens), from the harness's own NVML meter.
Writes $OUT/gpu_compress_check.json when OUT is set.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from compress import fp8, int4, int8  # noqa: E402
from harness.energy import make_meter  # noqa: E402

DEV = os.environ.get("CHECK_DEVICE", "cuda")


def sqnr_db(ref: torch.Tensor, test: torch.Tensor) -> float:
    ref, test = ref.float(), test.float()
    return float(10 * torch.log10(ref.pow(2).sum() / (ref - test).pow(2).sum().clamp_min(1e-30)))


def activations(m: int, k: int) -> torch.Tensor:
    """Heavy-tailed activations with a few outlier channels, as LLM activations have."""
    x = torch.randn(m, k, device=DEV)
    x[:, torch.randperm(k, device=DEV)[: k // 256]] *= 20
    return x.to(torch.bfloat16)


def fp8_gemm(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """Dynamic per-token FP8 activations times per-channel FP8 weights on tensor cores."""
    x_scale = fp8.fp8_scale(x.abs().amax(dim=1, keepdim=True), torch.float32)
    xq = fp8.quantize_fp8(x, x_scale)
    return torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=w_scale.t().float(), out_dtype=torch.bfloat16)


def int8_gemm(x: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    x_scale = int8.int8_scale(x.abs().amax(dim=1, keepdim=True), torch.float32)
    xq = int8.quantize_int8(x, x_scale)
    acc = torch._int_mm(xq, wq.t())  # int32 accumulate; wq.t() is the column-major [in, out]
    return (acc.float() * x_scale * w_scale.t().float()).to(torch.bfloat16)


def numerics(out_f: int, in_f: int) -> dict:
    torch.manual_seed(0)
    w = (torch.randn(out_f, in_f, device=DEV) * 0.02).to(torch.bfloat16)
    x = activations(256, in_f)
    ref = x @ w.t()
    res = {"shape": [out_f, in_f]}
    # FP8 per-tensor weight-only (W8A16): dequantize, bf16 GEMM.
    s_t = fp8.fp8_scale(fp8.per_tensor_absmax(w), torch.float32)
    res["fp8_w8a16_sqnr_db"] = sqnr_db(ref, x @ fp8.dequantize_fp8(fp8.quantize_fp8(w, s_t), s_t, torch.bfloat16).t())
    # FP8 per-channel weights + dynamic per-token activations, real kernel vs our reference.
    s_c = fp8.fp8_scale(fp8.per_channel_absmax(w), torch.float32)
    wq = fp8.quantize_fp8(w, s_c)
    real = fp8_gemm(x, wq, s_c)
    emulated = fp8.fake_quantize_fp8_per_token(x.float()) @ fp8.dequantize_fp8(wq, s_c, torch.float32).t()
    res["fp8_dynamic_sqnr_db"] = sqnr_db(ref, real)
    res["fp8_kernel_vs_reference_sqnr_db"] = sqnr_db(emulated, real)
    # int8 W8A8 dynamic per token, real int8 GEMM vs our reference.
    s8 = int8.int8_channel_scales(w, torch.float32)
    w8 = int8.quantize_int8(w, s8)
    real8 = int8_gemm(x, w8, s8)
    emulated8 = int8.fake_quantize_int8_per_token(x.float()) @ int8.dequantize_int8(w8, s8, torch.float32).t()
    res["w8a8_int8_sqnr_db"] = sqnr_db(ref, real8)
    res["int8_kernel_vs_reference_sqnr_db"] = sqnr_db(emulated8, real8)
    # int4 group 128 RTN, packed and unpacked on the GPU.
    s4 = int4.int4_group_scales(w, 128, torch.bfloat16)
    q4 = int4.quantize_int4(w, s4, 128)
    packed = int4.pack_int4(q4.cpu())
    res["int4_pack_roundtrip_exact"] = bool(torch.equal(int4.unpack_int4(packed, tuple(w.shape)), q4.cpu()))
    res["w4a16_rtn_sqnr_db"] = sqnr_db(ref, x @ int4.dequantize_int4(q4, s4, 128, torch.bfloat16).t())
    return res


def joules_per_gemm(meter, fn, seconds: float = 2.0) -> tuple[float, float, int]:
    fn()
    torch.cuda.synchronize()
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        for _ in range(20):
            fn()
        n += 20
        torch.cuda.synchronize()
    t1 = time.time()
    time.sleep(0.3)  # let the ~100 ms counter catch up before reading the window
    w = meter.energy_between(t0, t1, name="gemm")
    return w.energy_j / n, w.avg_power_w, n


def energy(meter) -> list[dict]:
    rows = []
    out_f, in_f = 10240, 2560
    w = (torch.randn(out_f, in_f, device=DEV) * 0.02).to(torch.bfloat16)
    s_c = fp8.fp8_scale(fp8.per_channel_absmax(w), torch.float32)
    wq = fp8.quantize_fp8(w, s_c)
    for m in (8, 4096):
        x = activations(m, in_f)
        bf16_j, bf16_w, n_b = joules_per_gemm(meter, lambda x=x: x @ w.t())
        fp8_j, fp8_w, n_f = joules_per_gemm(meter, lambda x=x: fp8_gemm(x, wq, s_c))
        rows.append({"tokens": m, "bf16_j_per_gemm": bf16_j, "fp8_j_per_gemm": fp8_j,
                     "fp8_over_bf16": fp8_j / bf16_j, "bf16_avg_w": bf16_w, "fp8_avg_w": fp8_w,
                     "gemms": [n_b, n_f], "source": meter.source})
    return rows


def main() -> None:
    report = {"device": torch.cuda.get_device_name(), "numerics": [numerics(10240, 2560), numerics(2560, 10240)]}
    with make_meter("nvml", hz=20) as meter:
        report["energy"] = energy(meter)
    print(json.dumps(report, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_compress_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
