"""scripts/install.sh refuses what it cannot build in one line, exit 2, before touching anything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _install(*args: str, venv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "install.sh"), *args], capture_output=True, text=True,
                          env={"PATH": os.environ["PATH"], "VENV": str(venv), "HOME": str(venv.parent)}, timeout=120)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has an NVIDIA driver")
def test_gpu_install_without_a_driver_refuses_and_creates_nothing(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    proc = _install("gpu", venv=venv)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "NVIDIA" in line and "R580" in line and "bash scripts/install.sh" in line
    assert not venv.exists()


def test_one_environment_never_holds_both_vllm_builds(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".installed-cpu").write_text("stamp\n")
    proc = _install("gpu", venv=venv)
    assert proc.returncode == 2
    assert "holds the cpu build" in proc.stderr and "VENV=.venv-gpu" in proc.stderr
    assert sorted(p.name for p in venv.iterdir()) == [".installed-cpu"]  # left as it was


def test_an_unknown_flavour_is_named(tmp_path: Path) -> None:
    proc = _install("rocm", venv=tmp_path / "venv")
    assert proc.returncode == 2 and "unknown flavour 'rocm'" in proc.stderr
    assert not (tmp_path / "venv").exists()
