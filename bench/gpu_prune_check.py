"""GPU check: what a pruned FFN width costs in joules, and why widths are rounded to 128.

Run on a CUDA machine from the repo root: `python -m bench.gpu_prune_check` (torch with CUDA and
nvidia-ml-py; not vLLM). For one E4B MLP (hidden 2560; gate and up [w, 2560], down [2560, w],
GELU-tanh gating) at widths 10240 (dense), 8192 (20% pruned, a multiple of 128), 8184 (a
multiple of 8 only) and 8190 (unaligned), in bf16 and with FP8 per-channel weights and dynamic
per-token FP8 activations (torch._scaled_mm; it needs widths divisible by 16), prints the
NVML-measured joules per MLP call (energy counter over >= 2 s of back-to-back calls, source
"measured") and the time per call, at a decode-like batch (8 tokens) and a prefill-like one
(2048 tokens). Writes $OUT/gpu_prune_check.json when OUT is set.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from compress import fp8  # noqa: E402
from harness.energy import make_meter  # noqa: E402

HIDDEN = 2560
WIDTHS = (10240, 8192, 8184, 8190)
TOKENS = (8, 2048)


def bf16_mlp(width: int):
    g, u, d = (torch.randn(*s, device="cuda", dtype=torch.bfloat16) * 0.02
               for s in ((width, HIDDEN), (width, HIDDEN), (HIDDEN, width)))

    def call(x):
        return (torch.nn.functional.gelu(x @ g.t(), approximate="tanh") * (x @ u.t())) @ d.t()
    return call


def _fp8_linear(w: torch.Tensor):
    scale = fp8.fp8_scale(fp8.per_channel_absmax(w), torch.float32)
    wq = fp8.quantize_fp8(w, scale)

    def call(x):
        x_scale = fp8.fp8_scale(x.abs().amax(dim=1, keepdim=True), torch.float32)
        xq = fp8.quantize_fp8(x, x_scale)
        return torch._scaled_mm(xq, wq.t(), scale_a=x_scale, scale_b=scale.t(), out_dtype=torch.bfloat16)
    return call


def fp8_mlp(width: int):
    g, u, d = (_fp8_linear(torch.randn(*s, device="cuda", dtype=torch.bfloat16) * 0.02)
               for s in ((width, HIDDEN), (width, HIDDEN), (HIDDEN, width)))

    def call(x):
        return d(torch.nn.functional.gelu(g(x), approximate="tanh") * u(x))
    return call


def measure(meter, fn, x, seconds: float = 2.0) -> dict:
    fn(x)
    torch.cuda.synchronize()
    t0, n = time.time(), 0
    while time.time() - t0 < seconds:
        for _ in range(20):
            fn(x)
        n += 20
        torch.cuda.synchronize()
    t1 = time.time()
    time.sleep(0.3)  # the counter updates about every 100 ms: let it pass the window's end
    w = meter.energy_between(t0, t1, name="mlp")
    return {"j_per_call": w.energy_j / n, "us_per_call": (t1 - t0) / n * 1e6, "avg_power_w": w.avg_power_w,
            "calls": n, "source": w.source, "flags": list(w.flags)}


def main() -> None:
    torch.manual_seed(0)
    rows = []
    with make_meter("nvml", hz=20) as meter:
        for kind, build in (("bf16", bf16_mlp), ("fp8_dynamic", fp8_mlp)):
            for width in WIDTHS:
                if kind == "fp8_dynamic" and width % 16:
                    rows.append({"kind": kind, "width": width, "skipped": "torch._scaled_mm needs multiples of 16"})
                    continue
                fn = build(width)
                for m in TOKENS:
                    x = torch.randn(m, HIDDEN, device="cuda", dtype=torch.bfloat16)
                    rows.append({"kind": kind, "width": width, "tokens": m, **measure(meter, fn, x)})
                    print(json.dumps(rows[-1]), flush=True)
                del fn
                torch.cuda.empty_cache()
    report = {"device": torch.cuda.get_device_name(), "rows": rows, "relative": relative(rows)}
    print(json.dumps(report["relative"], indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_prune_check.json").write_text(json.dumps(report, indent=2))


def relative(rows: list[dict]) -> list[dict]:
    """Joules and time per call of each width over the dense width's, same kind and batch."""
    dense = {(r["kind"], r["tokens"]): r for r in rows if r.get("width") == WIDTHS[0] and "tokens" in r}
    out = []
    for r in rows:
        base = dense.get((r["kind"], r.get("tokens")))
        if base is None or "tokens" not in r:
            continue
        out.append({"kind": r["kind"], "tokens": r["tokens"], "width": r["width"],
                    "energy_vs_dense": r["j_per_call"] / base["j_per_call"],
                    "time_vs_dense": r["us_per_call"] / base["us_per_call"]})
    return out


if __name__ == "__main__":
    main()
