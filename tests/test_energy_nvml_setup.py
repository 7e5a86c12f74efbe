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
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, FakeProcess, load_trace


def _two_gpus() -> FakeNvml:
    return FakeNvml([
        FakeGpu(load_trace(), uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000"),
        FakeGpu(load_trace(load_w=600.0), uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000"),
    ])


@pytest.mark.parametrize(
    ("visible", "expected"),
    [(None, ("gpu0",)), ("1", ("gpu1",)), ("GPU-bbbbbbbb-0000-0000-0000-000000000000", ("gpu1",)),
     ("0,1", ("gpu0", "gpu1"))],
)
def test_cuda_visible_devices_picks_the_gpus(monkeypatch: pytest.MonkeyPatch, visible: str | None,
                                             expected: tuple[str, ...]) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with NvmlMeter(nvml=_two_gpus()) as meter:
        assert meter.devices == expected


def test_meter_reads_the_gpus_the_server_was_launched_with(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server gets CUDA_VISIBLE_DEVICES=<UUID>; the meter, given the same UUIDs, reads that GPU whatever
    the harness's own CUDA_VISIBLE_DEVICES says (it may name the GPU by index)."""
    from harness.config.schema import compose
    from harness.serve.capabilities import detect_platform
    from harness.serve.vllm import server_env

    fake = _two_gpus()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    platform = detect_platform(nvml=fake)
    assert server_env(compose([]).serve, platform, environ={})["CUDA_VISIBLE_DEVICES"] == platform.gpus[0]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with NvmlMeter(gpus=platform.gpus, nvml=fake) as meter:
        assert meter.devices == ("gpu1",) and meter.indices == (1,)
        assert gpu_snapshot(meter.indices[0], nvml=fake)["uuid"] == platform.gpus[0]


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


@pytest.fixture()
def two_process_groups():
    """A stand-in server (a process group of its own, as the harness starts vLLM) and another process."""
    import subprocess

    procs = [subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2)]
    yield procs[0].pid, procs[1].pid
    for proc in procs:
        proc.kill()
        proc.wait()


def test_another_process_on_the_metered_gpu_is_flagged_and_named(two_process_groups) -> None:
    from harness.energy.base import FLAG_OTHER_PROCESS

    server_pid, other_pid = two_process_groups
    fake = FakeNvml([FakeGpu(load_trace(), processes=(
        FakeProcess(server_pid), FakeProcess(other_pid, 2**30, from_s=0.6, until_s=1.0)))])
    with NvmlMeter(nvml=fake, pid=server_pid) as meter:
        time.sleep(1.3)
        alone = meter.energy_between(fake.t0_s + 0.1, fake.t0_s + 0.5, name="alone")
        shared = meter.energy_between(fake.t0_s + 0.5, fake.t0_s + 1.1, name="shared")
        warnings = meter.warnings()
    assert alone.flags == ()
    assert shared.flags == (f"{FLAG_OTHER_PROCESS}:gpu0",)
    assert len(warnings) == 1 and f"pid {other_pid})" in warnings[0] and str(server_pid) not in warnings[0]


def test_the_servers_own_processes_are_not_flagged(two_process_groups) -> None:
    server_pid, _ = two_process_groups
    ours = (FakeProcess(server_pid), FakeProcess(server_pid, graphics=True))
    fake = FakeNvml([FakeGpu(load_trace(), processes=ours)])
    with NvmlMeter(nvml=fake, pid=server_pid) as meter:
        meter.begin_window("w")
        time.sleep(0.3)
        window = meter.end_window("w")
    assert window.flags == () and meter.warnings() == []


def test_pids_of_another_pid_namespace_are_noted_not_flagged(two_process_groups) -> None:
    """Inside a container NVML reports host PIDs: none is the server's, so nothing can be told apart."""
    server_pid, _ = two_process_groups
    host_pid = 4_194_304 + 17  # above Linux's largest pid_max: no process here has it
    fake = FakeNvml([FakeGpu(load_trace(), processes=(FakeProcess(host_pid),))])
    with NvmlMeter(nvml=fake, pid=server_pid) as meter:
        meter.begin_window("w")
        time.sleep(0.3)
        window = meter.end_window("w")
    assert window.flags == ()
    assert len(meter.warnings()) == 1 and "cannot be told apart" in meter.warnings()[0]
