"""GPU check: an interrupted run keeps NVML-measured idle and partial-suite energy.

Run on a CUDA machine from the repo root: `python -m bench.nvml_interrupt_check` (torch with
CUDA and nvidia-ml-py). With the harness's real NVML meter it records an idle window, then
loads the GPU with bf16 GEMMs and raises KeyboardInterrupt mid-load, exactly where Ctrl-C would
land in a replay; the pipeline's own salvage step (harness.pipeline._keep_partial_energy) must
attach an idle and a suite_partial window (source "measured") and write the power trace.
Prints the windows as JSON; writes $OUT/nvml_interrupt_check.json when OUT is set.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from harness.energy import make_meter  # noqa: E402
from harness.pipeline import _keep_partial_energy  # noqa: E402
from harness.record.result import RunPaths  # noqa: E402


def main() -> None:
    paths = RunPaths(Path(os.environ.get("OUT") or tempfile.mkdtemp()))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    state: dict = {}
    caught = None
    with make_meter("nvml", hz=20) as meter:
        try:
            t0 = time.time()
            time.sleep(2.0)
            state["idle"] = meter.energy_between(t0, time.time(), name="idle")
            state["replay_t0"] = time.time()
            end = time.time() + 3.0
            while time.time() < end:
                for _ in range(10):
                    a @ a
                torch.cuda.synchronize()
            raise KeyboardInterrupt("interrupted by SIGINT (simulated)")
        except KeyboardInterrupt as err:
            time.sleep(0.3)  # the counter updates about every 100 ms
            _keep_partial_energy(err, meter, paths, state)
            caught = err
    energy = getattr(caught, "partial_energy", None)
    report = {"device": torch.cuda.get_device_name(), "energy": energy,
              "trace_rows": len(paths.power_trace.read_text().splitlines()) if paths.power_trace.exists() else 0}
    print(json.dumps(report, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "nvml_interrupt_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
