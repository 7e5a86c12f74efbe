"""NVML meter set-up: which GPUs, error messages, GPU snapshot, power trace files."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pynvml
import pytest

from harness.energy import MeterError
from harness.energy.clock import now
from harness.energy.nvml import NvmlMeter, gpu_snapshot, nvml_available
from harness.energy.nvml_errors import NvmlError
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, load_trace


def _two_gpus() -> FakeNvml:
    return FakeNvml([
        FakeGpu(load_trace(), uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000"),
        FakeGpu(load_trace(load_w=600.0), uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000"),
    ])


@pytest.mark.parametrize(
    ("visible", "expected"),
    [(None, ("gpu0", "gpu1")), ("1", ("gpu1",)), ("GPU-bbbbbbbb-0000-0000-0000-000000000000", ("gpu1",))],
)
def test_cuda_visible_devices_picks_the_gpus(monkeypatch: pytest.MonkeyPatch, visible: str | None,
                                             expected: tuple[str, ...]) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with NvmlMeter(nvml=_two_gpus()) as meter:
        assert meter.devices == expected


def test_configured_indices_win_over_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with NvmlMeter(indices=[0], nvml=_two_gpus()) as meter:
        assert meter.devices == ("gpu0",)


@pytest.mark.parametrize(("visible", "message"), [("", "empty"), ("MIG-1234", "MIG"), ("cuda0", "neither")])
def test_unusable_cuda_visible_devices_is_explained(monkeypatch: pytest.MonkeyPatch, visible: str,
                                                    message: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = _two_gpus()
    with pytest.raises(MeterError, match=message):
        NvmlMeter(nvml=fake)
    assert fake.inits == 0


def test_missing_gpu_index_says_how_to_check() -> None:
    fake = _two_gpus()
    with pytest.raises(NvmlError, match="nvidia-smi -L") as info:
        NvmlMeter(indices=[5], nvml=fake)
    assert info.value.code == pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert fake.inits == 0


def test_no_driver_points_to_the_modeled_meter() -> None:
    fake = FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    with pytest.raises(NvmlError, match="modeled"):
        NvmlMeter(nvml=fake)
    assert not nvml_available(fake)
    assert nvml_available(_two_gpus())


def test_gpu_snapshot_reports_units_converted() -> None:
    fake = _two_gpus()
    time.sleep(0.8)  # into the loaded part of the trace
    snap = gpu_snapshot(1, nvml=fake)
    assert snap["name"] == "NVIDIA H100 80GB HBM3"
    assert snap["uuid"] == "GPU-bbbbbbbb-0000-0000-0000-000000000000"
    assert snap["driver_version"] == "560.35.03"
    assert snap["power_limit_w"] == 700.0
    assert 70.0 < snap["power_w"] < 600.0
    assert snap["sm_clock_mhz"] > snap["mem_clock_mhz"] / 2
    assert 30 <= snap["temperature_c"] < 100
    assert fake.inits == 0


def test_trace_is_written_as_csv_and_jsonl(tmp_path: Path) -> None:
    fake = FakeNvml([FakeGpu(load_trace())])
    with NvmlMeter(nvml=fake, hz=20) as meter:
        time.sleep(0.5)
    rows = meter.trace()
    assert len(rows) >= 5
    energies = [r.energy_j for r in rows]
    assert energies == sorted(energies)  # cumulative energy never decreases
    with meter.write_trace(tmp_path / "power.csv").open() as fh:
        from_csv = list(csv.DictReader(fh))
    from_jsonl = [json.loads(line) for line in meter.write_trace(tmp_path / "power.jsonl").read_text().splitlines()]
    assert len(from_csv) == len(from_jsonl) == len(rows)
    assert float(from_csv[-1]["energy_j"]) == pytest.approx(rows[-1].energy_j)
    assert from_jsonl[0]["device"] == "gpu0"
    assert all(60.0 < r["power_w"] < 500.0 for r in from_jsonl)
    with pytest.raises(ValueError, match=".csv or .jsonl"):
        meter.write_trace(tmp_path / "power.txt")


def test_window_names_are_checked() -> None:
    with NvmlMeter(nvml=FakeNvml([FakeGpu(load_trace())])) as meter:
        meter.begin_window("a")
        with pytest.raises(ValueError, match="already open"):
            meter.begin_window("a")
        with pytest.raises(ValueError, match="no open window"):
            meter.end_window("b")
        with pytest.raises(ValueError, match="outside the sampled span"):
            meter.energy_between(now() - 3600, now())
