"""Energy meters (NVML, RAPL, modeled) with named windows, and the steady-state window."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from harness.energy.base import Meter, MeterClosedError, MeterError, TraceRow, Window
from harness.energy.steady import steady_window

__all__ = ["KINDS", "MEASUREMENT_VERSION", "Meter", "MeterClosedError", "MeterError", "TraceRow", "Window",
           "make_meter", "check_meter", "meter_class", "steady_window"]

KINDS = ("auto", "nvml", "rapl", "modeled")
# Bumped whenever what a window measures changes (its edges, the warm-up and idle before it, the
# meter's arithmetic): results of different versions are not compared with each other.
# 2: trials; warm-up outside the suite; caches reset between trials; seeds from sample ids.
MEASUREMENT_VERSION = 2
log = logging.getLogger(__name__)


def meter_class(kind: str) -> type[Meter]:
    """The Meter subclass for a concrete kind (imported only when asked for)."""
    if kind == "nvml":
        from harness.energy.nvml import NvmlMeter
        return NvmlMeter
    if kind == "rapl":
        from harness.energy.rapl import RaplMeter
        return RaplMeter
    if kind == "modeled":
        from harness.energy.modeled import ModeledMeter
        return ModeledMeter
    raise ValueError(f"unknown energy meter kind {kind!r}; choose one of {KINDS}")


def make_meter(kind: str = "auto", **settings: Any) -> Meter:
    """Start a meter of `kind`; "auto" takes NVML if it sees a GPU, else RAPL, else modeled.

    Settings go to the chosen meter's constructor; a setting another kind takes is ignored
    (one config can carry every kind's settings), one no kind takes is an error.
    Shared: hz; pid (the server: the modeled meter counts its process tree's CPU time, NVML
    flags processes outside its group on the GPUs). NVML: gpus (the server's GPU UUIDs),
    indices, nvml, counter_period_s, crosscheck_tolerance, crosscheck_min_s,
    power_limit_margin. RAPL: root, include_dram. Modeled: busy_core_w, idle_w.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown energy meter kind {kind!r}; choose one of {KINDS}")
    accepted = {k: _parameters(k) for k in KINDS[1:]}
    known = set().union(*accepted.values())
    if set(settings) - known:
        raise TypeError(f"unknown energy settings {sorted(set(settings) - known)}; known: {sorted(known)}")
    chosen = _auto_kind(settings) if kind == "auto" else kind
    meter = meter_class(chosen)(**{k: v for k, v in settings.items() if k in accepted[chosen]})
    log.info("energy meter: %s (%s) on %s%s", chosen, meter.source, ", ".join(meter.devices),
             " [chosen by auto]" if kind == "auto" else "")
    return meter


def check_meter(kind: str) -> None:
    """Refuses, before any server starts, a meter kind this machine cannot read (auto always can).

    Raises:
        MeterError: which counter is missing and what to set instead.
    """
    from harness.energy import rapl
    from harness.energy.base import MeterError
    from harness.energy.nvml import nvml_available

    if kind == "nvml" and not nvml_available():
        raise MeterError("energy.meter=nvml: NVML sees no NVIDIA GPU on this machine (no driver or no device): "
                         "run on a GPU host or set energy.meter=auto")
    if kind == "rapl" and not rapl.available():
        raise MeterError(f"energy.meter=rapl: no readable RAPL counters under {rapl.POWERCAP_ROOT}: "
                         "set energy.meter=auto (modeled energy here) or make the counters readable")


def _auto_kind(settings: dict[str, Any]) -> str:
    from harness.energy import rapl
    from harness.energy.nvml import nvml_available

    if nvml_available(settings.get("nvml")):
        return "nvml"
    if rapl.available(settings.get("root", rapl.POWERCAP_ROOT)):
        return "rapl"
    return "modeled"


def _parameters(kind: str) -> set[str]:
    params = inspect.signature(meter_class(kind).__init__).parameters
    return {name for name in params if name != "self"}
