"""Capability check: what a variant asks of vLLM against what this machine's vLLM can do."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from harness.config.schema import CompressSpec, RunConfig, ServeConfig
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



@dataclass(frozen=True)
class Platform:
    """What the serving machine offers: a CUDA GPU (with compute capability) or a CPU."""

    device: str  # "cuda" or "cpu"
    cpu_flags: frozenset[str] = frozenset()
    gpu_name: str | None = None
    compute_capability: tuple[int, int] | None = None

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


def detect_platform() -> Platform:
    """Reads the GPU through NVML when one is present, else the CPU flags from /proc/cpuinfo."""
    gpu = _nvml_gpu()
    flags = _cpu_flags(Path("/proc/cpuinfo"))
    if gpu is not None:
        name, capability = gpu
        return Platform("cuda", flags, name, capability)
    return Platform("cpu", flags)


def check_platform(run: RunConfig, platform: Platform | None = None) -> PlatformCheck:
    """Checks ``run`` against ``platform`` (detected when None) before anything expensive starts.

    Settings named in ``run.serve.allow_fallback`` are replaced by what the platform can do,
    with the reason recorded; any other gap raises.

    Raises:
        PlatformError: one sentence naming the setting, the platform and what to change.
    """
    platform = platform or detect_platform()
    compress, weights_fallback = _check_cpu_fp8(run, platform)
    unservable = check_weights(_weight_scheme(compress), platform)
    serve = run.serve
    fallbacks: list[Fallback] = [weights_fallback] if weights_fallback else []
    for check in (_check_kv_cache, _check_graphs):
        serve, fallback = check(serve, platform)
        if fallback is not None:
            fallbacks.append(fallback)
    return PlatformCheck(platform, serve, tuple(fallbacks), compress, unservable)


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
    if not wanted.startswith("fp8") or platform.device == "cuda" or platform.avx512 or platform.amx:
        return serve, None
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


def _nvml_gpu() -> tuple[str, tuple[int, int]] | None:
    """Name and compute capability of GPU 0, or None when NVML (or a GPU) is absent."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        if pynvml.nvmlDeviceGetCount() == 0:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(handle)
        capability = tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle))
        return (name.decode() if isinstance(name, bytes) else name), capability
    finally:
        pynvml.nvmlShutdown()
