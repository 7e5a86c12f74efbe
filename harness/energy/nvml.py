"""GPU energy from NVML: the per-GPU energy counter, cross-checked against reported power."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Sequence

from harness.energy.base import (
    FLAG_ABOVE_LIMIT,
    FLAG_FROM_POWER,
    FLAG_MISMATCH,
    FLAG_RESET,
    FLAG_STUCK,
    Meter,
    MeterError,
    Reading,
)
from harness.energy.gpu_processes import ProcessWatch
from harness.energy.nvml_errors import NvmlError, call, optional

# nvmlDeviceGetPowerUsage reports, on Ampere (other than GA100) and newer, the mean power of
# the last ~1 s; older GPUs report an instantaneous value. Windows measured only from power
# are therefore not trusted below this span, and the cross-check undoes this lag.
POWER_AVERAGE_S = 1.0
# A counter is stuck when, over a cross-checked window, it advanced by at most this fraction
# of the energy the reported power integrates to, and that energy exceeds STUCK_MIN_J.
STUCK_FRACTION = 0.01
STUCK_MIN_J = 1.0


def load_pynvml() -> ModuleType:
    """Import nvidia-ml-py's `pynvml`, or say how to install it."""
    try:
        import pynvml
    except ImportError as err:
        raise MeterError("the NVML meter needs nvidia-ml-py: pip install nvidia-ml-py") from err
    return pynvml


def nvml_available(nvml: ModuleType | Any | None = None) -> bool:
    """Whether NVML initialises and sees at least one GPU."""
    try:
        nvml = nvml if nvml is not None else load_pynvml()
        call(nvml, "nvmlInit")
    except MeterError:
        return False
    try:
        return call(nvml, "nvmlDeviceGetCount") > 0
    except NvmlError:
        return False
    finally:
        nvml.nvmlShutdown()


def select_gpus(nvml: ModuleType | Any, indices: Sequence[int] | None = None,
                gpus: Sequence[str] | None = None) -> list[tuple[int, Any]]:
    """(NVML index, handle) of the GPUs to measure: those a server started now runs on.

    ``gpus`` win (entries as CUDA_VISIBLE_DEVICES takes them, NVML indices or GPU- UUIDs: the
    harness passes the UUIDs it launched the server with); then configured ``indices``; then
    CUDA_VISIBLE_DEVICES; else GPU 0, the one GPU a tensor-parallel-1 server uses. Integers are
    NVML indices, i.e. PCI bus order; the harness launches the server with these GPUs' UUIDs and
    CUDA_DEVICE_ORDER=PCI_BUS_ID, so CUDA and NVML agree on every GPU.
    """
    if gpus:
        return [_gpu_from_token(nvml, str(gpu).strip()) for gpu in gpus]
    if indices is not None:
        return [(i, call(nvml, "nvmlDeviceGetHandleByIndex", i)) for i in indices]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    tokens = _split_visible(env) if env is not None else ["0"]
    return [_gpu_from_token(nvml, tok.strip()) for tok in tokens]


def _split_visible(env: str) -> list[str]:
    tokens = [t for t in env.split(",") if t.strip()]
    if not tokens:
        raise MeterError("CUDA_VISIBLE_DEVICES is empty, so no GPU is visible: unset it or list GPUs")
    return tokens


def _gpu_from_token(nvml: ModuleType | Any, token: str) -> tuple[int, Any]:
    if token.isdigit():
        index = int(token)
        return index, call(nvml, "nvmlDeviceGetHandleByIndex", index)
    if token.startswith("MIG-"):
        raise MeterError(
            f"CUDA_VISIBLE_DEVICES names a MIG instance ({token}); NVML counts energy per "
            "physical GPU only: configure the GPU index instead"
        )
    if token.startswith("GPU-"):
        handle = call(nvml, "nvmlDeviceGetHandleByUUID", token.encode())
        return call(nvml, "nvmlDeviceGetIndex", handle), handle
    raise MeterError(f"CUDA_VISIBLE_DEVICES entry {token!r} is neither an index nor a GPU- UUID")


@dataclass
class _GpuState:
    """Running total for one GPU; energy_j counts from the meter's first sample."""

    label: str
    handle: Any
    limit_w: float | None
    has_counter: bool
    energy_j: float = 0.0
    last_t_s: float | None = None
    last_raw_mj: int | None = None
    last_power_w: float = 0.0

    def update(self, t_s: float, raw_mj: int | None, power_w: float) -> list[str]:
        """Advance the total to t_s; returns the integrity events seen."""
        events = []
        if self.last_t_s is not None:
            # Trapezoid of the reported power since the last sample: the energy estimate
            # where the counter is missing or has gone backwards (reset or wrap).
            power_j = (t_s - self.last_t_s) * (self.last_power_w + power_w) / 2.0
            if raw_mj is None:
                self.energy_j += power_j
            elif raw_mj >= self.last_raw_mj:
                self.energy_j += (raw_mj - self.last_raw_mj) / 1000.0
            else:
                events.append(FLAG_RESET)
                self.energy_j += power_j
        if self.limit_w is not None and power_w > self.limit_w:
            events.append(FLAG_ABOVE_LIMIT)
        self.last_t_s, self.last_raw_mj, self.last_power_w = t_s, raw_mj, power_w
        return events


class NvmlMeter(Meter):
    """Per-GPU energy from nvmlDeviceGetTotalEnergyConsumption (mJ since the driver loaded).

    The counter updates about every 100 ms, so windows shorter than `counter_period_s`
    are flagged. Where a GPU has no counter (NVML "not supported", pre-Volta), its energy
    is the trapezoidal integral of nvmlDeviceGetPowerUsage samples and every window says so.
    A counter going backwards (driver reload, wrap) is flagged and that interval is filled
    from power. Windows of at least `crosscheck_min_s` carry the counter-vs-power
    disagreement (Window.counter_power_disagreement), power being integrated shifted by
    half of `power_avg_s`, the span nvmlDeviceGetPowerUsage averages over (0 for GPUs that
    report instantaneous power); they are flagged when its magnitude exceeds
    `crosscheck_tolerance`, and flagged stuck when the counter (nearly) did not advance
    while power was reported. A power reading above the enforced limit times
    (1 + power_limit_margin) is flagged. Nothing here changes clocks or power limits.

    The GPUs metered are `gpus` (the UUIDs the server was launched with), else as
    `select_gpus` picks them. A process outside the process group of `pid` (the server; this
    process when None) using a metered GPU is flagged on the windows it overlaps
    (harness.energy.gpu_processes), and `warnings()` names it.
    """

    kind = "nvml"
    source = "measured"

    def __init__(
        self,
        indices: Sequence[int] | None = None,
        hz: float = 10.0,
        *,
        gpus: Sequence[str] | None = None,
        pid: int | None = None,
        nvml: ModuleType | Any | None = None,
        counter_period_s: float = 0.1,
        crosscheck_tolerance: float = 0.10,
        crosscheck_min_s: float = 5.0,
        power_limit_margin: float = 0.02,
        power_avg_s: float = POWER_AVERAGE_S,
    ) -> None:
        self._nvml = nvml if nvml is not None else load_pynvml()
        self.power_avg_s = power_avg_s
        self.crosscheck_tolerance = crosscheck_tolerance
        self.crosscheck_min_s = crosscheck_min_s
        call(self._nvml, "nvmlInit")
        try:
            selected = select_gpus(self._nvml, indices, gpus)
            self._processes = ProcessWatch(self._nvml, pid)
            self._gpus = [self._open(i, h, power_limit_margin) for i, h in selected]
            self.indices = tuple(i for i, _ in selected)  # NVML indices, in `devices` order
            all_counters = all(g.has_counter for g in self._gpus)
            self.resolution_s = counter_period_s if all_counters else POWER_AVERAGE_S
            super().__init__([g.label for g in self._gpus], hz)
            self._start()
        except (MeterError, ValueError):
            self._nvml.nvmlShutdown()
            raise

    def _open(self, index: int, handle: Any, margin: float) -> _GpuState:
        limit_mw = optional(self._nvml, "nvmlDeviceGetEnforcedPowerLimit", handle)
        has_counter = optional(self._nvml, "nvmlDeviceGetTotalEnergyConsumption", handle) is not None
        limit_w = None if limit_mw is None else limit_mw / 1000.0 * (1.0 + margin)
        return _GpuState(f"gpu{index}", handle, limit_w, has_counter)

    def _read(self, t_s: float) -> list[Reading]:
        readings = []
        for gpu in self._gpus:
            power_w = call(self._nvml, "nvmlDeviceGetPowerUsage", gpu.handle) / 1000.0
            raw_mj = None
            if gpu.has_counter:
                raw_mj = call(self._nvml, "nvmlDeviceGetTotalEnergyConsumption", gpu.handle)
            events = gpu.update(t_s, raw_mj, power_w) + self._processes.events(gpu.label, gpu.handle)
            readings.append(Reading(gpu.energy_j, power_w, tuple(events)))
        return readings

    def warnings(self) -> list[str]:
        """Other processes seen on the metered GPUs, or why they could not be checked (for the result)."""
        with self._lock:
            return self._processes.warnings()

    def _window_checks(self, device: str, t0_s: float, t1_s: float,
                       energy_j: float) -> tuple[list[str], float | None]:
        gpu = next(g for g in self._gpus if g.label == device)
        if not gpu.has_counter:
            return [FLAG_FROM_POWER], None
        if t1_s - t0_s < self.crosscheck_min_s:
            return [], None
        power_j = self._series[device].lagged_power_integral_j(t0_s, t1_s, self.power_avg_s)
        disagreement = counter_power_disagreement(energy_j, power_j)
        if disagreement is None:
            return [], None
        flags = []
        if power_j > STUCK_MIN_J and energy_j <= STUCK_FRACTION * power_j:
            flags.append(FLAG_STUCK)
        if abs(disagreement) > self.crosscheck_tolerance:
            flags.append(FLAG_MISMATCH)
        return flags, disagreement

    def _shutdown(self) -> None:
        call(self._nvml, "nvmlShutdown")


def counter_power_disagreement(counter_j: float, power_j: float | None) -> float | None:
    """(power_j - counter_j) / max(power_j, counter_j), in [-1, 1]; None if both are <= 0."""
    scale_j = max(counter_j, power_j or 0.0)
    if power_j is None or scale_j <= 0:
        return None
    return (power_j - counter_j) / scale_j


def gpu_snapshot(index: int, nvml: ModuleType | Any | None = None) -> dict:
    """Identity and state of one GPU (NVML index) for results; unsupported values are None.

    Keys: index, name, uuid, driver_version, power_limit_w (enforced), power_w (as
    nvmlDeviceGetPowerUsage reports), sm_clock_mhz, mem_clock_mhz (current), temperature_c.
    """
    nvml = nvml if nvml is not None else load_pynvml()
    call(nvml, "nvmlInit")
    try:
        h = call(nvml, "nvmlDeviceGetHandleByIndex", index)
        limit_mw = optional(nvml, "nvmlDeviceGetEnforcedPowerLimit", h)
        power_mw = optional(nvml, "nvmlDeviceGetPowerUsage", h)
        return {
            "index": index,
            "name": nvml_text(optional(nvml, "nvmlDeviceGetName", h)),
            "uuid": nvml_text(optional(nvml, "nvmlDeviceGetUUID", h)),
            "driver_version": nvml_text(optional(nvml, "nvmlSystemGetDriverVersion")),
            "power_limit_w": None if limit_mw is None else limit_mw / 1000.0,
            "power_w": None if power_mw is None else power_mw / 1000.0,
            "sm_clock_mhz": optional(nvml, "nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_SM),
            "mem_clock_mhz": optional(nvml, "nvmlDeviceGetClockInfo", h, nvml.NVML_CLOCK_MEM),
            "temperature_c": optional(nvml, "nvmlDeviceGetTemperature", h, nvml.NVML_TEMPERATURE_GPU),
        }
    finally:
        nvml.nvmlShutdown()


def nvml_text(value: str | bytes | None) -> str | None:
    """A string NVML returned, as str (older nvidia-ml-py releases return bytes)."""
    return value.decode() if isinstance(value, bytes) else value
