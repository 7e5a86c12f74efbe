"""The llama.cpp build that install.sh makes: what a user checks after installing.

CI runs `bash scripts/install.sh` before the tests, so the build is there: these tests fail, not
skip, when it is missing. None starts a server (the engine's tests do).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.serve.llama_cpp_home import PROGRAMS, binary, build_info, converter, gguf_py, llama_cpp_home

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "build_llama_cpp.sh"


def _pinned(name: str) -> str:
    """A value pinned at the top of the build script (version=..., sdist_sha256=...)."""
    return re.search(rf"^{name}=(\S+)$", SCRIPT.read_text(), re.M).group(1)


def _build_script(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """The build script as install.sh runs it, linking into tmp_path instead of the venv."""
    env = {**os.environ, "VENV": sys.prefix, "HARNESS_LLAMA_CPP_LINK": str(tmp_path / "llama.cpp")}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def test_the_build_is_of_the_pinned_source() -> None:
    info = build_info()
    assert info, f"no BUILD.json in {llama_cpp_home()}: run `bash scripts/install.sh`"
    assert info["version"] == _pinned("version")
    assert info["sha256"] == _pinned("sdist_sha256") and info["commit"] == _pinned("commit")
    assert "-DLLAMA_CURL=OFF" in info["cmake_flags"] and "-DBUILD_SHARED_LIBS=OFF" in info["cmake_flags"]


def test_the_server_names_the_pinned_commit() -> None:
    proc = subprocess.run([str(binary("llama-server")), "--version"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"commit {_pinned('commit')}" in proc.stdout + proc.stderr


def test_quantize_runs_here_and_offers_the_types_compress_uses() -> None:
    """llama-quantize has no --version; its usage (exit 1) lists the types it can write."""
    proc = subprocess.run([str(binary("llama-quantize")), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, 1), proc.returncode  # not killed by an illegal instruction
    for kind in ("Q4_K_M", "Q4_0", "Q8_0", "F16", "BF16"):
        assert re.search(rf"\bor\s+{kind}\s+:", proc.stdout + proc.stderr), kind


@pytest.mark.parametrize("program", PROGRAMS)
def test_each_program_needs_no_shared_library_of_llama_cpp(program: str) -> None:
    """A static build: the programs still run when the build tree is gone (it is deleted after the build)."""
    ldd = subprocess.run(["ldd", str(binary(program))], capture_output=True, text=True, timeout=60).stdout
    assert "not found" not in ldd
    assert not re.search(r"lib(llama|ggml|mtmd)", ldd), ldd


def test_the_converter_runs_with_the_vendored_gguf_py() -> None:
    """The converter and the gguf package it writes with come from the same tree as the programs."""
    env = {**os.environ, "PYTHONPATH": str(gguf_py())}
    proc = subprocess.run([sys.executable, str(converter()), "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--mmproj" in proc.stdout and "--outtype" in proc.stdout
    where = subprocess.run([sys.executable, "-c", "import gguf; print(gguf.__file__)"], capture_output=True,
                           text=True, env=env, timeout=60)
    assert Path(where.stdout.strip()).resolve().is_relative_to(gguf_py().resolve())


def test_a_second_install_reuses_the_build(tmp_path: Path) -> None:
    proc = _build_script("cpu", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "is built" in proc.stdout and "building" not in proc.stdout
    assert (tmp_path / "llama.cpp").resolve() == llama_cpp_home().resolve()


def test_an_unknown_flavour_is_refused_in_one_line(tmp_path: Path) -> None:
    proc = _build_script("rocm", tmp_path=tmp_path)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert "unknown flavour 'rocm'" in line and "cpu" in line and "gpu" in line
    assert not (tmp_path / "llama.cpp").exists()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this host has an NVIDIA driver")
def test_the_gpu_build_on_a_machine_without_a_gpu_is_refused_before_building(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "VENV": sys.prefix, "HARNESS_LLAMA_CPP_LINK": str(tmp_path / "llama.cpp"),
           "HARNESS_LLAMA_CPP_CACHE": str(cache)}
    proc = subprocess.run(["bash", str(SCRIPT), "gpu"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert ("nvcc" in line or "GPU" in line) and "build_llama_cpp.sh cpu" in line
    assert not cache.exists()
