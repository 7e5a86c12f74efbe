"""NVML error codes mapped to messages that say what went wrong and how to fix it."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from harness.energy.base import MeterError

# pynvml constant name -> what to do about it.
_HINTS = {
    "NVML_ERROR_LIBRARY_NOT_FOUND": (
        "libnvidia-ml.so was not found: no NVIDIA driver here. On a CPU machine use "
        "energy kind 'modeled' (or 'auto')"
    ),
    "NVML_ERROR_DRIVER_NOT_LOADED": (
        "the NVIDIA kernel driver is not loaded: check `nvidia-smi`; inside a container, "
        "run it with GPU access (--gpus all)"
    ),
    "NVML_ERROR_LIB_RM_VERSION_MISMATCH": (
        "the NVML library and the kernel driver differ in version (driver upgraded without "
        "a reboot): reload the nvidia kernel module or reboot"
    ),
    "NVML_ERROR_NO_PERMISSION": "this user may not read that GPU value: check device permissions",
    "NVML_ERROR_NOT_SUPPORTED": "this GPU or driver does not support that query",
    "NVML_ERROR_INVALID_ARGUMENT": (
        "no GPU with that index: check `nvidia-smi -L` and CUDA_VISIBLE_DEVICES / the "
        "configured GPU indices"
    ),
    "NVML_ERROR_NOT_FOUND": "no GPU with that UUID: check `nvidia-smi -L` and CUDA_VISIBLE_DEVICES",
    "NVML_ERROR_GPU_IS_LOST": (
        "the GPU fell off the bus or stopped responding: check `dmesg` for Xid errors; "
        "the node needs attention before measuring again"
    ),
    "NVML_ERROR_RESET_REQUIRED": "the GPU needs a reset (by an administrator) before it can be used",
    "NVML_ERROR_UNINITIALIZED": "NVML was used before nvmlInit() or after nvmlShutdown()",
    "NVML_ERROR_TIMEOUT": "the driver timed out answering: the GPU may be hung; retry, then check `dmesg`",
    "NVML_ERROR_INSUFFICIENT_POWER": "the GPU's external power cables are not connected properly",
    "NVML_ERROR_IRQ_ISSUE": "the driver saw an interrupt problem: check `dmesg`",
    "NVML_ERROR_CORRUPTED_INFOROM": "the GPU's infoROM is corrupted: its readings cannot be trusted",
    "NVML_ERROR_FUNCTION_NOT_FOUND": "the installed driver is too old for this NVML call: upgrade it",
    "NVML_ERROR_MEMORY": "NVML ran out of host memory",
    "NVML_ERROR_OPERATING_SYSTEM": "the operating system refused the request: check `dmesg`",
}


class NvmlError(MeterError):
    """An NVML call failed; `code` is NVML's return code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


def hint_for(nvml: ModuleType | Any, code: int | None) -> str:
    """The fix-it message for an NVML return code (generic when unknown)."""
    for name, hint in _HINTS.items():
        if code is not None and getattr(nvml, name, None) == code:
            return hint
    return "unexpected NVML error: check `nvidia-smi` and the driver installation"


def is_not_supported(nvml: ModuleType | Any, err: BaseException) -> bool:
    """Whether err is NVML's 'not supported' error."""
    return getattr(err, "value", None) == getattr(nvml, "NVML_ERROR_NOT_SUPPORTED", object())


def call(nvml: ModuleType | Any, name: str, *args: Any) -> Any:
    """Call the NVML function `name`, turning NVMLError into an NvmlError that says how to fix it.

    Args:
        nvml: the pynvml module (or a stand-in with the same names).
        name: the NVML function's name, e.g. "nvmlDeviceGetPowerUsage".
        *args: its arguments.
    """
    try:
        return getattr(nvml, name)(*args)
    except nvml.NVMLError as err:
        code = getattr(err, "value", None)
        raise NvmlError(f"NVML {name} failed: {err} -- {hint_for(nvml, code)}", code) from err


def optional(nvml: ModuleType | Any, name: str, *args: Any) -> Any:
    """Like call(), but None where the GPU or driver does not support the query."""
    try:
        return call(nvml, name, *args)
    except NvmlError as err:
        if is_not_supported(nvml, err.__cause__):
            return None
        raise
