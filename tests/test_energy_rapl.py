"""RAPL meter on a powercap tree laid out as Linux does (this machine has no RAPL)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness.energy import MeterError
from harness.energy.rapl import RaplMeter, available

MAX_RANGE_UJ = 262_143_328_850


def _zone(root: Path, dirname: str, name: str, energy_uj: int) -> Path:
    zone = root / dirname
    zone.mkdir(parents=True)
    (zone / "name").write_text(name + "\n")
    (zone / "max_energy_range_uj").write_text(f"{MAX_RANGE_UJ}\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    return zone


@pytest.fixture()
def powercap(tmp_path: Path) -> Path:
    (tmp_path / "intel-rapl").mkdir()  # the control-type directory: no counter of its own
    _zone(tmp_path, "intel-rapl:0", "package-0", MAX_RANGE_UJ - 1_000_000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 5_000_000)
    _zone(tmp_path, "intel-rapl:0:1", "dram", 7_000_000)
    _zone(tmp_path, "intel-rapl:1", "package-1", 9_000_000)
    return tmp_path


def _set(root: Path, dirname: str, energy_uj: int) -> None:
    (root / dirname / "energy_uj").write_text(f"{energy_uj}\n")


def test_packages_and_dram_are_measured_core_is_not_double_counted(powercap: Path) -> None:
    with RaplMeter(root=powercap, hz=0.01) as meter:
        assert meter.devices == ("intel-rapl:0/package-0", "intel-rapl:0:1/dram", "intel-rapl:1/package-1")
    with RaplMeter(root=powercap, hz=0.01, include_dram=False) as meter:
        assert meter.devices == ("intel-rapl:0/package-0", "intel-rapl:1/package-1")


def test_counter_rollover_is_unwrapped(powercap: Path) -> None:
    with RaplMeter(root=powercap, hz=0.01) as meter:
        t0_s = meter.sample_now()
        time.sleep(0.01)  # longer than RAPL's ~1 ms update
        _set(powercap, "intel-rapl:0", 2_000_000)  # rolled over: 1 J to the top, then 2 J
        _set(powercap, "intel-rapl:0:1", 7_500_000)
        _set(powercap, "intel-rapl:1", 13_000_000)
        t1_s = meter.sample_now()
        window = meter.energy_between(t0_s, t1_s, name="wrap")
    per_zone = dict(window.per_device_j)
    assert per_zone["intel-rapl:0/package-0"] == pytest.approx(3.0)
    assert per_zone["intel-rapl:0:1/dram"] == pytest.approx(0.5)
    assert per_zone["intel-rapl:1/package-1"] == pytest.approx(4.0)
    assert window.energy_j == pytest.approx(7.5)
    assert window.source == "measured"
    assert window.flags == ()  # a rollover is normal for RAPL, not an integrity problem


def test_available_only_with_rapl_zones(powercap: Path, tmp_path: Path) -> None:
    assert available(powercap)
    assert not available(tmp_path / "absent")
    with pytest.raises(MeterError, match="modeled"):
        RaplMeter(root=tmp_path / "absent")
