"""Capability check: what a variant asks of vLLM against what this machine's vLLM can do."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config.schema import CompressSpec, RunConfig, ServeConfig
from harness.energy.base import MeterError
from harness.energy.nvml import load_pynvml, nvml_available, nvml_text, select_gpus
from harness.energy.nvml_errors import call, optional
from harness.errors import PlatformError

_INT4_SCHEMES = frozenset({"w4a16_rtn", "w4a16_gptq"})
# CPU vLLM has FP8 kernels only for per-channel weights with dynamic per-token activations
# (measured: per-tensor weight-only finds no ScaledMM kernel; per-tensor with dynamic
# activations calls static_scaled_fp8_quant, which the CPU build lacks).
_CPU_FP8_SCHEME = "fp8_dynamic"
# Per weight scheme on a CUDA GPU: the kernel vLLM serves it with and the compute capability
# that kernel needs (FP8 tensor cores arrive with Ada sm_89; Marlin needs Ampere sm_80).
_GPU_KERNELS: dict[str, tuple[str, tuple[int, int]]] = {
    "fp8_dynamic": ("FP8 W8A8", (8, 9)),
    "fp8": ("FP8 weight-only (Marlin)", (8, 0)),
    "w4a16_rtn": ("Marlin W4A16", (8, 0)),
    "w4a16_gptq": ("Marlin W4A16", (8, 0)),
    "w8a8_int8": ("int8 W8A8", (7, 5)),
}
# Gemma 4 mixes head sizes 256/512, so below sm_90 (no FA4) vLLM serves it with Triton attention,
# which refuses an FP8 KV cache below Ada sm_89 (an A100 is sm_80).
_FP8_KV_CAPABILITY = (8, 9)
# The NVIDIA driver branch that first supports each CUDA major version. Minor version compatibility
# lets a CUDA X.y build run on any driver that supports X.0, so only majors are compared.
_DRIVER_FOR_CUDA = {11: "R450", 12: "R525", 13: "R580"}


@dataclass(frozen=True)
class Platform:
    """What the serving machine offers: a CUDA GPU (with compute capability) or a CPU."""

    device: str  # "cuda" or "cpu"
    cpu_flags: frozenset[str] = frozenset()
    gpu_name: str | None = None
    compute_capability: tuple[int, int] | None = None
    gpus: tuple[str, ...] = ()  # UUIDs of the GPUs the server runs on (CUDA_VISIBLE_DEVICES it gets)
    driver: str | None = None  # NVIDIA driver version, e.g. "580.65.06"
    driver_cuda: tuple[int, int] | None = None  # the newest CUDA version that driver supports

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.cpu_flags

    @property
    def amx(self) -> bool:
        return any(f.startswith("amx") for f in self.cpu_flags)

    def describe(self) -> str:
        """A short human description, e.g. 'CPU (AVX2, no AVX-512/AMX)' or 'NVIDIA L4 (sm_89)'."""
        if self.device == "cuda":
            major, minor = self.compute_capability or (0, 0)
            return f"{self.gpu_name} (sm_{major}{minor})"
        isa = "AMX" if self.amx else "AVX-512" if self.avx512 else "AVX2, no AVX-512/AMX"
        return f"CPU ({isa})"


@dataclass(frozen=True)
class Fallback:
    """One setting the check replaced because the platform lacks it, and why."""

    setting: str
    requested: str
    effective: str
    reason: str


@dataclass(frozen=True)
class PlatformCheck:
    """The serve settings to launch with, and every fallback taken to get them."""

    platform: Platform
    serve: ServeConfig
    fallbacks: tuple[Fallback, ...]
    compress: CompressSpec | None = None  # the scheme to build; None means the run's own
    # Why no server can run this variant here (a missing weight kernel); the run then builds
    # the checkpoint and scores it offline instead of starting a server.
    unservable: str | None = None


def detect_platform(nvml: Any | None = None) -> Platform:
    """The GPUs the server will run on, read through NVML when there are any, else the CPU flags.

    Which GPUs: harness.energy.nvml.select_gpus (CUDA_VISIBLE_DEVICES's entries, else GPU 0 for
    a tensor-parallel-1 server), so that the server and the energy meter agree by UUID. An empty
    CUDA_VISIBLE_DEVICES (or -1) hides every GPU, as it does from CUDA.

    Args:
        nvml: the pynvml module or a stand-in with its names (tests); imported when None.
    """
    flags = _cpu_flags(Path("/proc/cpuinfo"))
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0").strip() in ("", "-1"):
        return Platform("cpu", flags)
    gpus = _nvml_gpus(nvml)
    return dataclasses.replace(gpus, cpu_flags=flags) if gpus is not None else Platform("cpu", flags)


def check_platform(run: RunConfig, platform: Platform | None = None) -> PlatformCheck:
    """Checks ``run`` against ``platform`` (detected when None) before anything expensive starts.

    Settings named in ``run.serve.allow_fallback`` are replaced by what the platform can do,
    with the reason recorded; any other gap raises.

    Raises:
        PlatformError: one sentence naming the setting, the platform and what to change.
    """
    platform = platform or detect_platform()
    check_cuda_driver(platform)
    compress, weights_fallback = _check_cpu_fp8(run, platform)
    unservable = check_weights(_weight_scheme(compress), platform)
    serve = run.serve
    fallbacks: list[Fallback] = [weights_fallback] if weights_fallback else []
    for check in (_check_kv_cache, _check_graphs):
        serve, fallback = check(serve, platform)
        if fallback is not None:
            fallbacks.append(fallback)
    return PlatformCheck(platform, serve, tuple(fallbacks), compress, unservable)


def check_cuda_driver(platform: Platform, torch_cuda: str | None = None) -> None:
    """Refuses a torch built for a newer CUDA than the NVIDIA driver supports, before anything starts.

    NVML, through which the platform is read, works on old drivers, so without this check the
    build would run and the failure would show only when the server initialises CUDA.

    Args:
        platform: the serving platform (nothing is checked unless it is a GPU whose driver said
            which CUDA it supports).
        torch_cuda: torch.version.cuda of the server's torch; read from the installed torch when None.

    Raises:
        PlatformError: one sentence naming the driver branch needed.
    """
    if platform.device != "cuda" or platform.driver_cuda is None:
        return
    wanted = torch_cuda if torch_cuda is not None else torch_cuda_version()
    if wanted is None:  # a CPU torch: the server cannot use the GPU, whatever the driver
        return
    major, (have_major, have_minor) = int(wanted.split(".")[0]), platform.driver_cuda
    if have_major >= major:
        return
    needed = f"NVIDIA driver {_DRIVER_FOR_CUDA[major]} or newer" if major in _DRIVER_FOR_CUDA else \
        f"an NVIDIA driver that supports CUDA {major}"
    raise PlatformError(
        f"torch here is built for CUDA {wanted} but NVIDIA driver {platform.driver or '?'} supports CUDA up to "
        f"{have_major}.{have_minor}: install {needed} (or a torch built for CUDA "
        f"{have_major}, in another venv)."
    )


def torch_cuda_version() -> str | None:
    """torch.version.cuda of the installed torch (the one the server runs), or None (CPU build, no torch).

    Read from torch/version.py without importing torch, which takes seconds and loads CUDA libraries.
    """
    spec = importlib.util.find_spec("torch")
    version_py = Path(spec.origin).with_name("version.py") if spec is not None and spec.origin else None
    if version_py is None or not version_py.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("_harness_torch_version", version_py)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, "cuda", None)


def check_plugin_support(model_path: str | Path, env: Mapping[str, str] | None = None) -> None:
    """Refuses, before vLLM starts, a FLAP-pruned checkpoint the server's vLLM could not build.

    A pruned checkpoint (config.json flap_pruned) is served by this project's vLLM plugin,
    which vLLM loads through an installed entry point and only when VLLM_PLUGINS (in
    ``env``, the server's environment) is unset or names it. Hub ids and folders without a
    config.json pass (stock vLLM reports what it lacks).

    Raises:
        PlatformError: one sentence naming what is wrong and the fix.
    """
    config_path = Path(model_path) / "config.json"
    if not config_path.is_file():
        return
    import json

    from compress.vllm_plugin import PLUGIN_NAME, entry_point_installed, plugin_allowed
    from compress.vllm_plugin.widths import FlapConfigError, check_config

    try:
        widths = check_config(json.loads(config_path.read_text()), where=str(config_path))
    except FlapConfigError as err:
        raise PlatformError(str(err)) from err
    if widths is None:
        return
    if not entry_point_installed():
        raise PlatformError(f"{model_path} is FLAP-pruned and needs this project's vLLM plugin ({PLUGIN_NAME}), "
                            "whose entry point is not installed: run `pip install --no-deps -e .` in the project.")
    env = os.environ if env is None else env
    if not plugin_allowed(env):
        raise PlatformError(f"{model_path} is FLAP-pruned but VLLM_PLUGINS={env.get('VLLM_PLUGINS')!r} "
                            f"keeps vLLM from loading the {PLUGIN_NAME} plugin: add {PLUGIN_NAME} to it or unset it.")


def default_enforce_eager(platform: Platform) -> bool:
    """CUDA graphs on GPU; eager on CPU, where graphs do not exist and compiling costs ~40 s."""
    return platform.device != "cuda"


def _weight_scheme(spec: CompressSpec) -> str:
    """The scheme that decides the served weight format: a steps list's last quantization step."""
    if spec.scheme != "steps":
        return spec.scheme
    quantizing = [s.get("scheme") for s in spec.params.get("steps", ()) if s.get("scheme") not in ("flap", "distill")]
    return quantizing[-1] if quantizing else "none"


def check_weights(scheme: str, platform: Platform) -> str | None:
    """None when vLLM has a weight kernel for ``scheme`` here; else why not (CPU) or raises (GPU)."""
    where = platform.describe()
    if platform.device == "cpu":
        if scheme in _INT4_SCHEMES and not platform.avx512:
            return (f"compress scheme {scheme} needs vLLM's int4 CPU kernel (cpu_gemm_wna16), which exists "
                    f"only in the AVX-512 build, and this machine is {where}: serve it on an AVX-512 CPU or a GPU.")
        return None
    if scheme not in _GPU_KERNELS:
        return None
    kind, needed = _GPU_KERNELS[scheme]
    if (platform.compute_capability or (0, 0)) < needed:
        raise PlatformError(
            f"compress scheme {scheme} needs {kind} kernels (compute capability >= "
            f"{needed[0]}.{needed[1]}) but this GPU is {where}: pick another scheme or GPU."
        )
    return None


def _check_cpu_fp8(run: RunConfig, platform: Platform) -> tuple[CompressSpec, Fallback | None]:
    """On CPU, FP8 weights are served per channel with dynamic FP8 activations, or not at all."""
    spec = run.compress
    if platform.device == "cuda" or spec.scheme != "fp8":
        return spec, None
    reason = (f"CPU vLLM ({platform.describe()}) has FP8 kernels only for per-channel weights with "
              "dynamic per-token activations")
    if "weights" not in run.serve.allow_fallback:
        raise PlatformError(f"compress scheme fp8 (per-tensor FP8 weights): {reason}; use +variant=fp8_dynamic "
                            "or add weights to serve.allow_fallback.")
    params = {k: v for k, v in spec.params.items() if k in ("quantize_ple", "ignore", "targets", "overrides")}
    effective = CompressSpec(_CPU_FP8_SCHEME, params)
    return effective, Fallback("weights", "fp8 (per-tensor FP8 weights, 16-bit activations)",
                               "fp8_dynamic (per-channel FP8 weights, dynamic per-token FP8 activations)", reason)


def _check_kv_cache(serve: ServeConfig, platform: Platform) -> tuple[ServeConfig, Fallback | None]:
    wanted = serve.kv_cache_dtype
    if not wanted.startswith("fp8"):
        return serve, None
    if platform.device == "cuda":
        needed = _FP8_KV_CAPABILITY
        if (platform.compute_capability or (0, 0)) >= needed:
            return serve, None
        reason = (f"FP8 KV cache needs compute capability >= {needed[0]}.{needed[1]} (vLLM's Triton attention, "
                  f"which serves Gemma 4 below sm_90) and this GPU is {platform.describe()}")
    elif platform.avx512 or platform.amx:
        return serve, None
    else:
        reason = f"FP8 KV cache on CPU needs AVX-512 or AMX and this machine is {platform.describe()}"
    if "kv_cache_dtype" not in serve.allow_fallback:
        raise PlatformError(
            f"serve.kv_cache_dtype={wanted}: {reason}; set serve.kv_cache_dtype=auto or add "
            "kv_cache_dtype to serve.allow_fallback."
        )
    return dataclasses.replace(serve, kv_cache_dtype="auto"), Fallback("kv_cache_dtype", wanted, "auto", reason)


def _check_graphs(serve: ServeConfig, platform: Platform) -> tuple[ServeConfig, Fallback | None]:
    if serve.enforce_eager is None:
        return dataclasses.replace(serve, enforce_eager=default_enforce_eager(platform)), None
    if serve.enforce_eager or platform.device == "cuda":
        return serve, None
    reason = f"CUDA graphs do not exist on {platform.describe()}"
    if "enforce_eager" not in serve.allow_fallback:
        raise PlatformError(
            f"serve.enforce_eager=false asks for CUDA graphs: {reason}; set serve.enforce_eager=null "
            "(platform default) or add enforce_eager to serve.allow_fallback."
        )
    return dataclasses.replace(serve, enforce_eager=True), Fallback("enforce_eager", "false", "true", reason)


def _cpu_flags(cpuinfo: Path) -> frozenset[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _nvml_gpus(nvml: Any | None) -> Platform | None:
    """The CUDA platform of the GPUs the server will use, or None when NVML (or a GPU) is absent."""
    try:
        nvml = nvml if nvml is not None else load_pynvml()
    except MeterError:  # no nvidia-ml-py: no GPU to read
        return None
    if not nvml_available(nvml):
        return None
    call(nvml, "nvmlInit")
    try:
        handles = [handle for _, handle in select_gpus(nvml)]
        capability = tuple(call(nvml, "nvmlDeviceGetCudaComputeCapability", handles[0]))
        cuda = optional(nvml, "nvmlSystemGetCudaDriverVersion")  # e.g. 13000 for 13.0
        return Platform(
            "cuda", gpu_name=nvml_text(call(nvml, "nvmlDeviceGetName", handles[0])), compute_capability=capability,
            gpus=tuple(nvml_text(call(nvml, "nvmlDeviceGetUUID", h)) for h in handles),
            driver=nvml_text(optional(nvml, "nvmlSystemGetDriverVersion")),
            driver_cuda=None if cuda is None else (cuda // 1000, cuda % 1000 // 10),
        )
    finally:
        nvml.nvmlShutdown()
