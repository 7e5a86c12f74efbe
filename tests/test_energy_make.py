"""make_meter: which meter "auto" picks, settings routing, and an import-light package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from harness.energy import make_meter
from tests.fakes.fake_nvml import FakeGpu, FakeNvml, load_trace


def _no_driver() -> FakeNvml:
    return FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)


def _rapl_tree(root: Path) -> Path:
    zone = root / "intel-rapl:0"
    zone.mkdir(parents=True)
    (zone / "name").write_text("package-0\n")
    (zone / "max_energy_range_uj").write_text("262143328850\n")
    (zone / "energy_uj").write_text("1000\n")
    return root


def test_auto_prefers_nvml_when_a_gpu_answers(tmp_path: Path) -> None:
    with make_meter("auto", nvml=FakeNvml([FakeGpu(load_trace())]), root=_rapl_tree(tmp_path), pid=None) as meter:
        assert (meter.kind, meter.source) == ("nvml", "measured")


def test_auto_takes_rapl_without_a_gpu(tmp_path: Path) -> None:
    with make_meter("auto", nvml=_no_driver(), root=_rapl_tree(tmp_path)) as meter:
        assert (meter.kind, meter.source) == ("rapl", "measured")


def test_auto_falls_back_to_modeled(tmp_path: Path) -> None:
    with make_meter("auto", nvml=_no_driver(), root=tmp_path / "none", busy_core_w=5.0) as meter:
        assert (meter.kind, meter.source) == ("modeled", "modeled")
        assert meter.busy_core_w == 5.0


def test_explicit_kind_ignores_other_kinds_settings() -> None:
    with make_meter("modeled", indices=[0], crosscheck_tolerance=0.2, hz=5) as meter:
        assert meter.kind == "modeled"
        assert meter.hz == 5


def test_unknown_setting_or_kind_is_rejected() -> None:
    with pytest.raises(TypeError, match="busy_core_watts"):
        make_meter("modeled", busy_core_watts=3.0)
    with pytest.raises(ValueError, match="choose one of"):
        make_meter("zeus")


def test_importing_the_package_loads_no_heavy_module() -> None:
    code = (
        "import sys, harness, harness.energy\n"
        "heavy = {'torch', 'vllm', 'pynvml', 'psutil'} & {m.split('.')[0] for m in sys.modules}\n"
        "print(sorted(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
