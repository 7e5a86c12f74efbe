"""A stand-in for the `pynvml` module that replays a physically plausible GPU power trace.

Only hardware is faked: NVML's error classes and constants are pynvml's own, and time is the
real wall clock, so the meter under test samples it exactly as it would a GPU.

Model of one GPU (t = seconds since the FakeNvml was made):
    P(t): true power, piecewise linear over the given segments (held at the ends).
    counter(t) = offset_mj + 1000 * integral of P from 0 to floor(t / 0.1) * 0.1, in mJ: the
        counter advances in 100 ms steps, as NVML's does. After reset_at_s it restarts from 0
        (as after a driver reload). From counter_stuck_after_s on it keeps the value it had
        then (a counter that stopped advancing while the GPU still draws power).
    reported power(t) = power_scale * mean of P over [t - 1 s, t], in mW: the ~1 s average
        that nvmlDeviceGetPowerUsage returns on recent GPUs.
    processes(t): the FakeProcess entries alive at t (from_s <= t < until_s), as NVML lists the
        processes holding a CUDA context (compute) or drawing (graphics) on the GPU.
The driver reports the CUDA version it supports as NVML does (1000 * major + 10 * minor): 560.35.03
supports CUDA 12.6, an R580 driver CUDA 13.0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import pynvml

from harness.energy.clock import now

IDLE_W = 70.0


class PowerTrace:
    """Piecewise-linear power; segments are (duration_s, start_w, end_w)."""

    def __init__(self, segments: Sequence[tuple[float, float, float]]) -> None:
        self.segments = list(segments)
        self.starts_s = [0.0]
        for duration_s, _, _ in self.segments:
            self.starts_s.append(self.starts_s[-1] + duration_s)

    @property
    def duration_s(self) -> float:
        return self.starts_s[-1]

    @property
    def peak_w(self) -> float:
        return max(max(a, b) for _, a, b in self.segments)

    def power_w(self, t_s: float) -> float:
        if t_s <= 0:
            return self.segments[0][1]
        for start_s, (duration_s, a_w, b_w) in zip(self.starts_s, self.segments):
            if t_s < start_s + duration_s:
                return a_w + (b_w - a_w) * (t_s - start_s) / duration_s
        return self.segments[-1][2]

    def energy_j(self, t0_s: float, t1_s: float) -> float:
        """Exact integral of P over [t0_s, t1_s]: trapezoids between the breakpoints."""
        points = [t0_s, *(s for s in self.starts_s if t0_s < s < t1_s), t1_s]
        return sum((b - a) * (self.power_w(a) + self.power_w(b)) / 2 for a, b in zip(points, points[1:]))


def load_trace(idle_s: float = 0.4, ramp_s: float = 0.2, load_s: float = 1.0, load_w: float = 450.0) -> PowerTrace:
    """Idle at 70 W, ramp to load_w, hold, ramp back, idle."""
    return PowerTrace([
        (idle_s, IDLE_W, IDLE_W),
        (ramp_s, IDLE_W, load_w),
        (load_s, load_w, load_w),
        (ramp_s, load_w, IDLE_W),
        (idle_s, IDLE_W, IDLE_W),
    ])


@dataclass(frozen=True)
class FakeProcess:
    """One process on a GPU, with NVML's field names (pid, usedGpuMemory in bytes)."""

    pid: int
    usedGpuMemory: int = 6 * 2**30  # noqa: N815 - pynvml's name
    graphics: bool = False
    from_s: float = 0.0
    until_s: float = math.inf

    def alive(self, t_s: float) -> bool:
        return self.from_s <= t_s < self.until_s


@dataclass
class FakeGpu:
    """One simulated GPU; see the module docstring for what it reports."""

    trace: PowerTrace
    limit_w: float = 700.0
    has_counter: bool = True
    reset_at_s: float | None = None
    power_scale: float = 1.0
    offset_mj: int = 987_654_321
    counter_period_s: float = 0.1
    power_avg_s: float = 1.0
    lost_at_s: float | None = None  # from then on every query fails with "GPU is lost"
    counter_stuck_after_s: float | None = None  # from then on the counter stops advancing
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-1111-2222-3333-444444444444"
    capability: tuple[int, int] = (9, 0)
    processes: Sequence[FakeProcess] = ()

    def check_alive(self, t_s: float) -> None:
        if self.lost_at_s is not None and t_s >= self.lost_at_s:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)

    def counter_mj(self, t_s: float) -> int:
        self.check_alive(t_s)
        if not self.has_counter:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if self.counter_stuck_after_s is not None:
            t_s = min(t_s, self.counter_stuck_after_s)
        t_q = math.floor(t_s / self.counter_period_s) * self.counter_period_s
        if self.reset_at_s is not None and t_s >= self.reset_at_s:
            return int(1000 * self.trace.energy_j(self.reset_at_s, max(t_q, self.reset_at_s)))
        return self.offset_mj + int(1000 * self.trace.energy_j(0.0, t_q))

    def power_mw(self, t_s: float) -> int:
        self.check_alive(t_s)
        if self.power_avg_s <= 0:  # instantaneous, as older GPUs report
            return int(1000 * self.power_scale * self.trace.power_w(t_s))
        mean_w = self.trace.energy_j(t_s - self.power_avg_s, t_s) / self.power_avg_s
        return int(1000 * self.power_scale * mean_w)


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index


class FakeNvml:
    """Pass as `nvml=` to the NVML meter. Counts nvmlInit/nvmlShutdown calls (`inits`)."""

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: Sequence[FakeGpu], clock: Callable[[], float] = now,
                 init_error: int | None = None, driver_version: str = "560.35.03",
                 cuda_driver_version: int = 12060) -> None:
        self.gpus = list(gpus)
        self.clock = clock
        self.t0_s = clock()
        self.init_error = init_error
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.inits = 0

    def __getattr__(self, name: str):
        # Constants (NVML_ERROR_*, NVML_CLOCK_*, ...) and error subclasses are pynvml's.
        if name.startswith(("NVML_", "NVMLError_")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    def elapsed_s(self, t_wall_s: float) -> float:
        """Trace time of a wall-clock instant."""
        return t_wall_s - self.t0_s

    def true_energy_j(self, index: int, t0_wall_s: float, t1_wall_s: float) -> float:
        """What GPU `index` really used between two wall-clock instants."""
        return self.gpus[index].trace.energy_j(self.elapsed_s(t0_wall_s), self.elapsed_s(t1_wall_s))

    def _now(self) -> float:
        if self.inits <= 0:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        return self.clock() - self.t0_s

    def _gpu(self, handle: _Handle) -> FakeGpu:
        self._now()
        return self.gpus[handle.index]

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self._now()
        self.inits -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._now()
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._now()
        return self.cuda_driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._now()
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._now()
        if not 0 <= index < len(self.gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _Handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: bytes | str) -> _Handle:
        self._now()
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                return _Handle(index)
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetIndex(self, handle: _Handle) -> int:
        self._now()
        return handle.index

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        return self._gpu(handle).name

    def nvmlDeviceGetUUID(self, handle: _Handle) -> str:
        return self._gpu(handle).uuid

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        return self._gpu(handle).capability

    def nvmlDeviceGetComputeRunningProcesses(self, handle: _Handle) -> list[FakeProcess]:
        t_s = self._now()
        return [p for p in self._gpu(handle).processes if not p.graphics and p.alive(t_s)]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle: _Handle) -> list[FakeProcess]:
        t_s = self._now()
        return [p for p in self._gpu(handle).processes if p.graphics and p.alive(t_s)]

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: _Handle) -> int:
        return int(self._gpu(handle).limit_w * 1000)

    def nvmlDeviceGetPowerUsage(self, handle: _Handle) -> int:
        return self._gpu(handle).power_mw(self._now())

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: _Handle) -> int:
        return self._gpu(handle).counter_mj(self._now())

    def nvmlDeviceGetClockInfo(self, handle: _Handle, clock_type: int) -> int:
        busy = self._gpu(handle).trace.power_w(self._now()) > 2 * IDLE_W
        if clock_type == pynvml.NVML_CLOCK_MEM:
            return 2619
        return 1980 if busy else 345

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        return int(30 + self._gpu(handle).trace.power_w(self._now()) / 20)
