"""NVML meter windows against the known joules of a replayed GPU power trace."""

from __future__ import annotations

import time

import pytest

from harness.energy import MeterClosedError, steady_window
from harness.energy.base import FLAG_ABOVE_LIMIT, FLAG_FROM_POWER, FLAG_MISMATCH, FLAG_RESET, FLAG_SHORT
from harness.energy.clock import now
from harness.energy.nvml import NvmlMeter
from harness.energy.nvml_errors import NvmlError
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, PowerTrace, load_trace

COUNTER_PERIOD_S = 0.1


def _sleep_until(fake: FakeNvml, trace_s: float) -> None:
    time.sleep(max(0.0, fake.t0_s + trace_s - now()))


def _counter_bound_j(fake: FakeNvml, steps: int = 1) -> float:
    # The counter lags the truth by less than one 100 ms update at each end of a window.
    return steps * fake.gpus[0].trace.peak_w * COUNTER_PERIOD_S + 0.01


def test_window_matches_the_joules_of_the_trace() -> None:
    fake = FakeNvml([FakeGpu(load_trace())])
    with NvmlMeter(nvml=fake) as meter:
        _sleep_until(fake, 0.2)
        meter.begin_window("load")
        _sleep_until(fake, 1.9)
        window = meter.end_window("load")
    truth_j = fake.true_energy_j(0, window.start_s, window.end_s)
    assert truth_j > 400  # the window spans the loaded part of the trace
    assert window.energy_j == pytest.approx(truth_j, abs=_counter_bound_j(fake))
    assert window.source == "measured"
    assert window.device == "gpu0"
    assert window.flags == ()
    assert 70 < window.avg_power_w < 450
    assert fake.inits == 0  # NVML shut down as often as it was initialised


def test_windows_defined_after_the_fact_from_request_times() -> None:
    fake = FakeNvml([FakeGpu(load_trace())])
    with NvmlMeter(nvml=fake) as meter:
        _sleep_until(fake, 2.0)
    requests = [(fake.t0_s + a, fake.t0_s + b) for a, b in [(0.6, 0.95), (0.95, 1.25), (1.26, 1.6)]]
    t0_s, t1_s = steady_window(requests, concurrency=1, min_duration_s=0.5)
    window = meter.energy_between(t0_s, t1_s, name="steady")
    assert (window.start_s, window.end_s) == (requests[0][0], requests[-1][1])
    truth_j = fake.true_energy_j(0, t0_s, t1_s)
    # Interpolating between 10 Hz samples of a 100 ms-step counter: within two steps.
    assert window.energy_j == pytest.approx(truth_j, abs=_counter_bound_j(fake, steps=2))
    assert window.name == "steady"


def test_missing_counter_falls_back_to_integrated_power() -> None:
    fake = FakeNvml([FakeGpu(load_trace(), has_counter=False, power_avg_s=0.0)])
    with NvmlMeter(nvml=fake) as meter:
        _sleep_until(fake, 0.1)
        meter.begin_window("load")
        _sleep_until(fake, 1.9)
        window = meter.end_window("load")
    assert f"{FLAG_FROM_POWER}:gpu0" in window.flags
    assert window.source == "measured"
    truth_j = fake.true_energy_j(0, window.start_s, window.end_s)
    assert window.energy_j == pytest.approx(truth_j, rel=0.05)
    assert meter.resolution_s == 1.0  # power is a ~1 s average: a coarser resolution


def test_counter_reset_is_flagged_and_bridged_with_power() -> None:
    fake = FakeNvml([FakeGpu(load_trace(), reset_at_s=1.05, power_avg_s=0.0)])
    with NvmlMeter(nvml=fake) as meter:
        _sleep_until(fake, 2.0)
    before = meter.energy_between(fake.t0_s + 0.1, fake.t0_s + 0.8, name="before")
    across = meter.energy_between(fake.t0_s + 0.1, fake.t0_s + 1.8, name="across")
    assert f"{FLAG_RESET}:gpu0" not in before.flags
    assert f"{FLAG_RESET}:gpu0" in across.flags
    truth_j = fake.true_energy_j(0, across.start_s, across.end_s)
    # Not the ~1e6 J jump a naive difference of the reset counter would give.
    assert across.energy_j == pytest.approx(truth_j, abs=_counter_bound_j(fake, steps=3))


def test_window_shorter_than_the_counter_period_is_flagged() -> None:
    fake = FakeNvml([FakeGpu(load_trace())])
    with NvmlMeter(nvml=fake) as meter:
        meter.begin_window("blink")
        time.sleep(0.03)
        short = meter.end_window("blink")
        meter.begin_window("ok")
        time.sleep(0.3)
        long_enough = meter.end_window("ok")
    assert FLAG_SHORT in short.flags
    assert FLAG_SHORT not in long_enough.flags


@pytest.mark.parametrize(("power_scale", "flagged"), [(1.0, False), (1.3, True)])
def test_counter_and_power_disagreeing_is_flagged(power_scale: float, flagged: bool) -> None:
    flat = PowerTrace([(10.0, 300.0, 300.0)])
    fake = FakeNvml([FakeGpu(flat, power_scale=power_scale)])
    with NvmlMeter(nvml=fake, crosscheck_min_s=0.5, crosscheck_tolerance=0.1) as meter:
        meter.begin_window("brief")
        time.sleep(0.2)
        brief = meter.end_window("brief")
        meter.begin_window("checked")
        time.sleep(0.8)
        checked = meter.end_window("checked")
    assert (f"{FLAG_MISMATCH}:gpu0" in checked.flags) is flagged
    assert f"{FLAG_MISMATCH}:gpu0" not in brief.flags  # too short to cross-check
    assert checked.power_integral_j / checked.energy_j == pytest.approx(power_scale, rel=0.05)


def test_power_above_the_enforced_limit_is_flagged() -> None:
    fake = FakeNvml([FakeGpu(load_trace(load_w=760.0), limit_w=700.0, power_avg_s=0.0)])
    with NvmlMeter(nvml=fake) as meter:
        _sleep_until(fake, 1.5)
    idle = meter.energy_between(fake.t0_s + 0.05, fake.t0_s + 0.35, name="idle")
    load = meter.energy_between(fake.t0_s + 0.5, fake.t0_s + 1.4, name="load")
    assert f"{FLAG_ABOVE_LIMIT}:gpu0" not in idle.flags
    assert f"{FLAG_ABOVE_LIMIT}:gpu0" in load.flags


def test_two_gpus_are_summed() -> None:
    fake = FakeNvml([FakeGpu(load_trace(load_w=300.0)), FakeGpu(load_trace(load_w=600.0))])
    with NvmlMeter(indices=[0, 1], nvml=fake) as meter:
        _sleep_until(fake, 0.3)
        meter.begin_window("both")
        _sleep_until(fake, 1.2)
        window = meter.end_window("both")
    assert window.device == "gpu0+gpu1"
    per_gpu = dict(window.per_device_j)
    for index, label in enumerate(("gpu0", "gpu1")):
        truth_j = fake.true_energy_j(index, window.start_s, window.end_s)
        assert per_gpu[label] == pytest.approx(truth_j, abs=600 * COUNTER_PERIOD_S + 0.01)
    assert window.energy_j == pytest.approx(sum(per_gpu.values()))
    assert per_gpu["gpu1"] > per_gpu["gpu0"]


def test_lost_gpu_surfaces_as_an_error_with_a_fix() -> None:
    fake = FakeNvml([FakeGpu(load_trace(), lost_at_s=0.4)])
    meter = NvmlMeter(nvml=fake)
    meter.begin_window("doomed")
    _sleep_until(fake, 0.6)
    with pytest.raises(NvmlError, match="dmesg"):
        meter.end_window("doomed")
    meter.close()  # the failure was reported; closing still shuts NVML down
    assert fake.inits == 0
    with pytest.raises(ValueError, match="sampling stopped"):
        meter.energy_between(fake.t0_s + 0.1, fake.t0_s + 0.6)
    with pytest.raises(MeterClosedError):
        meter.begin_window("again")
