"""Modeled energy from the CPU time of a process tree, for machines without energy counters."""

from __future__ import annotations

import os

from harness.energy.base import Meter, MeterError, Reading


class ModeledMeter(Meter):
    """An estimate, not a measurement: every window it makes has source "modeled".

    The model, for a window [t0, t1] (harness.energy.clock, seconds):

        energy_j = idle_w * (t1 - t0) + busy_core_w * (C(t1) - C(t0))

    where C(t) is the CPU time (user + system seconds, as the kernel accounts it) used up
    to t by the process `pid` and all its descendants: at each sample the tree is walked
    afresh and each process's own CPU time is recorded under (pid, start time); C is the
    sum of the last recorded value of every process ever seen, so a process that exits
    keeps its share. One CPU-second is one core fully busy for one second, costing
    busy_core_w joules; idle_w is the power charged whether or not anything runs.
    C(t) between samples is linearly interpolated.

    Known gaps: a process that starts and exits between two samples is not seen, and the
    CPU time a process uses after its last sample before exiting is lost (at most one
    sampling period each); CPU time is accounted in kernel ticks (usually 10 ms); GPU,
    memory and I/O energy are not modeled; the defaults are assumptions, not fitted values.

    Args:
        pid: root of the process tree (the vLLM server's pid); default: this process.
        hz: sampling rate.
        busy_core_w: watts charged per fully busy core.
        idle_w: watts charged for the whole machine regardless of load.
    """

    kind = "modeled"
    source = "modeled"
    resolution_s = 0.1

    def __init__(self, pid: int | None = None, hz: float = 10.0, *, busy_core_w: float = 10.0,
                 idle_w: float = 0.0) -> None:
        if busy_core_w < 0 or idle_w < 0:
            raise ValueError(f"busy_core_w and idle_w must be >= 0, got {busy_core_w}, {idle_w}")
        self._psutil = psutil = _load_psutil()
        self.pid = os.getpid() if pid is None else pid
        try:
            self._root = psutil.Process(self.pid)
        except psutil.NoSuchProcess as err:
            raise MeterError(
                f"no process with pid {self.pid} to model energy for: start the server first"
            ) from err
        self.busy_core_w = busy_core_w
        self.idle_w = idle_w
        self._cpu_by_process: dict[tuple[int, float], float] = {}
        self._first: tuple[float, float] | None = None  # (t_s, cpu_s) at the first sample
        self._last: tuple[float, float] | None = None  # (t_s, energy_j) at the previous sample
        super().__init__([f"cpu-tree:{self.pid}"], hz)
        self._start()

    def _cpu_seconds(self) -> float:
        """C(now): CPU seconds used by the tree, every process ever seen included."""
        psutil = self._psutil
        try:
            processes = [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            processes = []  # the root has exited: the tree's CPU time stays as last seen
        for proc in processes:
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    self._cpu_by_process[(proc.pid, proc.create_time())] = times.user + times.system
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # exited between listing and reading: keep its last value
            except psutil.AccessDenied as err:
                raise MeterError(f"may not read CPU times of pid {proc.pid}: run as its user") from err
        return sum(self._cpu_by_process.values())

    def _read(self, t_s: float) -> list[Reading]:
        cpu_s = self._cpu_seconds()
        if self._first is None:
            self._first = (t_s, cpu_s)
        t_first, cpu_first = self._first
        energy_j = self.idle_w * (t_s - t_first) + self.busy_core_w * (cpu_s - cpu_first)
        power_w = None
        if self._last is not None and t_s > self._last[0]:
            power_w = (energy_j - self._last[1]) / (t_s - self._last[0])
        self._last = (t_s, energy_j)
        return [Reading(energy_j, power_w)]


def _load_psutil():
    try:
        import psutil
    except ImportError as err:
        raise MeterError("the modeled meter needs psutil: pip install psutil") from err
    return psutil
