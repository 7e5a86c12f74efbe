"""NVML meter honesty: the counter-vs-power disagreement as a number, and a stuck counter."""

from __future__ import annotations

import json
import time

import pytest

from harness.energy.base import FLAG_MISMATCH, FLAG_STUCK
from harness.energy.clock import now
from harness.energy.nvml import NvmlMeter, counter_power_disagreement
from tests.fakes.fake_nvml import IDLE_W, FakeGpu, FakeNvml, PowerTrace

TOLERANCE = 0.1


def _sleep_until(fake: FakeNvml, trace_s: float) -> None:
    time.sleep(max(0.0, fake.t0_s + trace_s - now()))


def _meter(fake: FakeNvml) -> NvmlMeter:
    every_gpu = range(len(fake.gpus))  # without indices the meter reads GPU 0 only, as a server uses
    return NvmlMeter(every_gpu, nvml=fake, crosscheck_min_s=0.5, crosscheck_tolerance=TOLERANCE)


def test_ramp_disagreement_is_small_once_the_power_averaging_lag_is_undone() -> None:
    # 100 -> 700 W over 2.4 s, read as a 1 s trailing mean; a 10 ms counter step keeps the
    # counter's own quantisation (<= 0.01 s * 700 W) out of the way.
    ramp = PowerTrace([(2.4, 100.0, 700.0)])
    fake = FakeNvml([FakeGpu(ramp, counter_period_s=0.01)])
    with _meter(fake) as meter:
        _sleep_until(fake, 2.15)  # samples reach past the window's end + 0.5 s
    window = meter.energy_between(fake.t0_s + 0.6, fake.t0_s + 1.6, name="ramp")
    assert window.energy_j == pytest.approx(fake.true_energy_j(0, window.start_s, window.end_s), rel=0.02)
    assert abs(window.counter_power_disagreement) < 0.03
    assert f"{FLAG_MISMATCH}:gpu0" not in window.flags
    # Integrating the reported power over the window itself lags the ramp by ~0.5 s.
    unshifted = counter_power_disagreement(window.energy_j, window.power_integral_j)
    assert unshifted < -0.2


def test_stuck_counter_is_flagged_while_power_is_reported() -> None:
    flat = PowerTrace([(10.0, 300.0, 300.0)])
    fake = FakeNvml([FakeGpu(flat), FakeGpu(flat, counter_stuck_after_s=0.0)])
    with _meter(fake) as meter:
        meter.begin_window("brief")
        time.sleep(0.1)
        brief = meter.end_window("brief")
        meter.begin_window("checked")
        time.sleep(0.8)
        checked = meter.end_window("checked")
    per_gpu = dict(checked.per_device_j)
    assert per_gpu["gpu1"] == 0.0  # the frozen counter alone would say 0 J
    assert f"{FLAG_STUCK}:gpu1" in checked.flags
    assert f"{FLAG_MISMATCH}:gpu1" in checked.flags
    assert not any(flag.endswith(":gpu0") for flag in checked.flags)
    assert checked.counter_power_disagreement == 1.0  # the worse GPU's, finite
    assert json.loads(json.dumps(checked.to_dict(), allow_nan=False))["counter_power_disagreement"] == 1.0
    # Too short to judge: neither flagged nor compared.
    assert f"{FLAG_STUCK}:gpu1" not in brief.flags
    assert brief.counter_power_disagreement is None


def test_idle_gpu_is_not_flagged_stuck() -> None:
    fake = FakeNvml([FakeGpu(PowerTrace([(10.0, IDLE_W, IDLE_W)]))])
    with _meter(fake) as meter:
        meter.begin_window("idle")
        time.sleep(1.5)
        window = meter.end_window("idle")
    assert window.flags == ()
    assert window.energy_j == pytest.approx(IDLE_W * window.duration_s, rel=TOLERANCE)  # counter advanced
    assert abs(window.counter_power_disagreement) < TOLERANCE


def test_a_wall_clock_step_does_not_bend_a_window(monkeypatch) -> None:
    """Window edges come from a monotonic clock: an NTP step of the wall clock mid-window changes nothing."""
    fake = FakeNvml([FakeGpu(PowerTrace([(10.0, 200.0, 200.0)]))])
    with NvmlMeter(nvml=fake) as meter:
        meter.begin_window("stepped")
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() - 3600.0)  # the wall clock jumps back an hour
        time.sleep(0.5)
        window = meter.end_window("stepped")
    assert 0.45 < window.duration_s < 5.0
    assert window.energy_j == pytest.approx(200.0 * window.duration_s, rel=0.3)
