"""The platform a submission is built for (the judges' GPU), and how the host that builds it differs."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config.schema import RunConfig
from harness.errors import PlatformError, SubmitError
from harness.serve.capabilities import Platform, PlatformCheck, check_platform, detect_platform
from harness.serve.vllm import vllm_args

REPO = Path(__file__).resolve().parents[2]
GPU_PINS = REPO / "requirements" / "gpu.txt"
# The card the seed models' cards name for the evaluation (Ada, FP8 tensor cores), and a Hopper for
# teams that target one. The judges serve with the CUDA vLLM that requirements/gpu.txt pins.
TARGETS = {
    "l4": Platform("cuda", gpu_name="NVIDIA L4", compute_capability=(8, 9)),
    "h100": Platform("cuda", gpu_name="NVIDIA H100", compute_capability=(9, 0)),
}
DEFAULT_TARGET = "l4"


@dataclass(frozen=True)
class Target:
    """Where the judges serve the folder: the GPU, the pinned vLLM and what its `vllm serve` accepts.

    Attributes:
        keys: the config-file keys (long option names) of that vLLM's `vllm serve`, recorded
            from its wheel by bench/vllm_gpu_args.py, since the CUDA build cannot be installed here.
        requires: that vLLM's pins of the libraries the checks use (e.g. compressed-tensors).
        record: the record's path, relative to the repository.
    """

    name: str
    platform: Platform
    vllm_version: str
    keys: frozenset[str]
    requires: Mapping[str, str] = field(default_factory=dict)
    record: str = ""

    def describe(self) -> str:
        return f"{self.platform.describe()} with vLLM {self.vllm_version} (CUDA)"


@dataclass(frozen=True)
class HostLaunch:
    """Whether this host can serve the folder built for the target, and with which flags.

    ``flags``: this host's own settings (e.g. eager mode on a CPU), given on the command line
    after ``--config vllm_config.yaml`` (vLLM lets the command line win) and never written into
    the folder. ``reason``: why this host cannot serve the folder at all (None when it can).
    """

    platform: Platform
    flags: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None


def pinned_vllm(pins: Path = GPU_PINS) -> str:
    """The vLLM version requirements/gpu.txt pins (`vllm==X`)."""
    for line in pins.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.split("#")[0].partition("==")
        if sep and name.strip() == "vllm":
            return version.strip()
    raise SubmitError(f"{pins} pins no `vllm==X`: add the CUDA vLLM the judges use")


def keys_record(version: str) -> Path:
    return REPO / "bench" / "records" / f"vllm_{version}_serve_keys.json"


def load_target(name: str = DEFAULT_TARGET) -> Target:
    """The named target with the recorded keys of the pinned CUDA vLLM.

    Raises:
        SubmitError: an unknown target, or no record of the pinned vLLM's keys.
    """
    if name not in TARGETS:
        raise SubmitError(f"unknown target {name!r}: use one of {', '.join(sorted(TARGETS))}")
    version = pinned_vllm()
    path = keys_record(version)
    if not path.is_file():
        raise SubmitError(f"no record of vLLM {version}'s `vllm serve` keys at {path.relative_to(REPO)}: "
                          "run `python -m bench.vllm_gpu_args`")
    data = json.loads(path.read_text(encoding="utf-8"))
    return Target(name, TARGETS[name], version, frozenset(data["keys"]), data.get("requires", {}),
                  str(path.relative_to(REPO)))


def host_launch(run: RunConfig, target: PlatformCheck, host: Platform | None = None) -> HostLaunch:
    """How this host can serve the folder built for ``target`` (the variant's platform check there).

    The host's own platform check decides: where it would serve other weights (a CPU has no
    kernel for per-tensor FP8) or none at all, the folder cannot be served here; otherwise the
    settings where the host's vLLM args differ from the target's become host-only flags.
    """
    host = host or detect_platform()
    try:
        here = check_platform(run, host)
    except PlatformError as err:
        return HostLaunch(host, reason=str(err))
    weights = next((f for f in here.fallbacks if f.setting == "weights"), None)
    if weights is not None:
        return HostLaunch(host, reason=f"this host serves {weights.requested} only as {weights.effective}: "
                                       f"{weights.reason}")
    if here.unservable:
        return HostLaunch(host, reason=here.unservable)
    theirs = vllm_args(".", target.serve, served_model_name="")
    mine = vllm_args(".", here.serve, served_model_name="")
    return HostLaunch(host, {k: v for k, v in mine.items() if theirs.get(k) != v})
