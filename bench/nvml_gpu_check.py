"""Check the NVML meter on a real GPU: idle, loaded, steady and too-short windows (< 60 s).

Run from the repository root on a GPU machine with torch (CUDA) and nvidia-ml-py:

    python -m bench.nvml_gpu_check

Prints each window's energy, duration, mean power, counter-vs-integrated-power agreement and
flags, plus GPU snapshots before and after; writes nvml_gpu_check.json and the power trace
to $OUT when that is set. Reads counters only: never changes clocks or power limits.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import torch  # noqa: E402

from harness.energy import Window, steady_window  # noqa: E402
from harness.energy.nvml import NvmlMeter, gpu_snapshot, load_pynvml  # noqa: E402

IDLE_S = 5.0
LOAD_S = 15.0
N = 8192  # bf16 N x N matmuls: 2 * N^3 FLOP each
CHUNK = 40  # matmuls per synchronised chunk: one "request" for the steady window


def matmul_chunks(a: torch.Tensor, b: torch.Tensor, seconds: float) -> list[tuple[float, float]]:
    """Run synchronised chunks of matmuls for `seconds`; returns each chunk's (start, end)."""
    chunks = []
    stop_s = time.time() + seconds
    while time.time() < stop_s:
        start_s = time.time()
        for _ in range(CHUNK):
            torch.matmul(a, b)
        torch.cuda.synchronize()
        chunks.append((start_s, time.time()))
    return chunks


def counter_update_period_s(index: int, a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Median time between changes of the energy counter, polled every 2 ms under load."""
    nvml = load_pynvml()
    nvml.nvmlInit()
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        for _ in range(CHUNK * 12):  # queued work keeps the GPU busy while we poll
            torch.matmul(a, b)
        changes, last = [], nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        stop_s = time.time() + 1.0
        while time.time() < stop_s:
            value = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            if value != last:
                changes.append(time.time())
                last = value
            time.sleep(0.002)
        torch.cuda.synchronize()
    finally:
        nvml.nvmlShutdown()
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    return statistics.median(gaps) if gaps else None


def describe(window: Window) -> dict:
    row = window.to_dict()
    integral = window.power_integral_j
    row["power_vs_counter_pct"] = (
        None if integral is None or window.energy_j <= 0 else 100.0 * (integral - window.energy_j) / window.energy_j
    )
    return row


def print_row(row: dict) -> None:
    agreement = row["power_vs_counter_pct"]
    print(
        f"{row['name']:>8}  {row['energy_j']:10.1f} J  {row['duration_s']:7.3f} s  "
        f"{row['avg_power_w']:7.1f} W  power-vs-counter "
        f"{'n/a' if agreement is None else f'{agreement:+6.2f} %'}  flags={list(row['flags'])}"
    )


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device visible to torch", file=sys.stderr)
        return 2
    t_begin = time.time()
    meter = NvmlMeter()
    before = [gpu_snapshot(i) for i in meter.indices]
    a = torch.randn(N, N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(N, N, dtype=torch.bfloat16, device="cuda")
    matmul_chunks(a, b, 0.5)  # cuBLAS warm-up, not measured
    time.sleep(1.0)  # let power settle back

    meter.begin_window("idle")
    time.sleep(IDLE_S)
    windows = [meter.end_window("idle")]

    meter.begin_window("loaded")
    chunks = matmul_chunks(a, b, LOAD_S)
    windows.append(meter.end_window("loaded"))
    # Steady state after the fact: chunks as sequential requests, the first one as warm-up.
    span = steady_window(chunks, concurrency=1, skip_first=1, max_gap_s=0.05)
    if span is not None:
        windows.append(meter.energy_between(*span, name="steady"))

    meter.begin_window("short")
    for _ in range(10):
        torch.matmul(a, b)
    torch.cuda.synchronize()
    windows.append(meter.end_window("short"))

    period_s = counter_update_period_s(meter.indices[0], a, b)
    after = [gpu_snapshot(i) for i in meter.indices]
    meter.close()

    busy_s = sum(e - s for s, e in chunks)
    tflops = 2 * N**3 * CHUNK * len(chunks) / busy_s / 1e12
    rows = [describe(w) for w in windows]
    for row in rows:
        print_row(row)
    print(f"matmul throughput {tflops:.0f} TFLOP/s over {len(chunks)} chunks; "
          f"counter update period (median) {period_s if period_s is None else f'{period_s * 1000:.0f} ms'}")
    print("before:", json.dumps(before))
    print("after: ", json.dumps(after))
    report = {
        "windows": rows, "gpus_before": before, "gpus_after": after,
        "counter_update_period_s": period_s, "matmul_tflops": tflops, "devices": list(meter.devices),
        "torch": torch.__version__, "wall_s": time.time() - t_begin,
    }
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "nvml_gpu_check.json").write_text(json.dumps(report, indent=2))
        meter.write_trace(Path(out) / "nvml_power_trace.csv")
        print(f"wrote {out}/nvml_gpu_check.json and nvml_power_trace.csv")
    print(f"total {report['wall_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
