"""bench/gpu_first_contact.py where no GPU is needed: its pure helpers, --help, and its refusal without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu_first_contact import counter_vs_power, gpu_slug, needs_gpu, smi_gpus, uuid_key
from tests.fakes.fake_nvml import FakeGpu, load_trace

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_first_contact.py"


def test_power_shifted_by_half_its_averaging_period_matches_the_counter_under_a_load():
    # NVML's reported power is a 1 s trailing mean and its counter steps every 100 ms (the fake
    # GPU models both); sampled at 10 Hz over idle -> 60 s at 650 W -> idle, as the check is.
    gpu = FakeGpu(load_trace(idle_s=3.0, ramp_s=0.3, load_s=60.0, load_w=650.0))
    times = [i / 10 for i in range(int(gpu.trace.duration_s * 10) + 1)]
    energy = [(gpu.counter_mj(t) - gpu.counter_mj(0.0)) / 1000 for t in times]
    power = [gpu.power_mw(t) / 1000 for t in times]
    t0, t1 = 3.0, 3.0 + 0.3 + 60.0 + 0.3  # the load, ramps included
    result = counter_vs_power(times, energy, power, t0, t1, (0.0, 0.5, 1.0))
    assert result["counter_j"] == pytest.approx(gpu.trace.energy_j(t0, t1), rel=3e-3)
    ratio = {shift: row["power_over_counter"] for shift, row in result["by_shift_s"].items()}
    assert ratio["0.5"] == pytest.approx(1.0, abs=2e-3)
    # The window starts and ends on the load's edges: unshifted, the trailing mean misses the end of
    # the load (it reads idle power from before the start instead); shifted by the whole period it
    # misses the start. Both fall short by about 0.5 s of the load.
    assert ratio["0"] < 1.0 - 3e-3 and ratio["1"] < 1.0 - 3e-3


def test_names_and_uuids_are_read_as_nvidia_smi_and_torch_write_them():
    assert gpu_slug("NVIDIA H200") == "h200" and gpu_slug("NVIDIA H100 80GB HBM3") == "h100_80gb_hbm3"
    assert uuid_key("GPU-3F2E0000-1111-2222-3333-444444444444") == uuid_key("3f2e0000-1111-2222-3333-444444444444")
    listing = ("GPU 0: NVIDIA H200 (UUID: GPU-3f2e0000-1111-2222-3333-444444444444)\n"
               "GPU 1: NVIDIA L4 (UUID: GPU-aaaa0000-1111-2222-3333-444444444444)\n")
    assert smi_gpus(listing) == [(0, "GPU-3f2e0000-1111-2222-3333-444444444444"),
                                 (1, "GPU-aaaa0000-1111-2222-3333-444444444444")]


def test_help_runs_without_a_gpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "counter_vs_power" in proc.stdout and "--load-s" in proc.stdout


@pytest.mark.skipif(needs_gpu() is None, reason="this machine has a CUDA GPU")
def test_without_a_gpu_it_exits_2_in_one_sentence(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bench/gpu_first_contact.py needs a CUDA GPU") and proc.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()
