"""Energy windows and the sampling meter every energy source builds on."""

from __future__ import annotations

import csv
import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple, Sequence

from harness.energy.clock import now
from harness.energy.series import DeviceSeries
from harness.errors import HarnessError

Source = Literal["measured", "modeled"]

# Flags a window can carry (device-specific ones get ":<device>" appended).
FLAG_SHORT = "shorter_than_resolution"  # duration below the meter's update period
FLAG_RESET = "counter_reset"  # a hardware counter went backwards inside the window
FLAG_ABOVE_LIMIT = "power_above_limit"  # a power reading above the enforced power limit
FLAG_MISMATCH = "counter_power_mismatch"  # counter and integrated power disagree
FLAG_STUCK = "counter_stuck"  # the counter (nearly) did not advance while power was reported
FLAG_FROM_POWER = "energy_from_power_integration"  # no energy counter: power integrated
FLAG_OTHER_PROCESS = "other_process_on_gpu"  # a process outside the workload used the metered GPU


class MeterError(HarnessError, RuntimeError):
    """The energy source failed; the message says how to fix it."""


class MeterClosedError(MeterError):
    """A window was begun or ended on a meter that is closed."""


@dataclass(frozen=True)
class Window:
    """Energy used over one named span of time (harness.energy.clock: monotonic, on the wall clock's scale).

    energy_j is the sum over the meter's devices of cumulative energy at end_s minus
    cumulative energy at start_s, each read from the sampled series by linear
    interpolation. power_integral_j is the trapezoidal integral of the reported power
    over the same span (None where the source reports no power). flags lists integrity
    problems (empty when none).

    counter_power_disagreement is the integrity cross-check as a number, signed and
    relative: (P - E) / max(P, E), where E is a device's counter energy over the window and
    P its reported power integrated with the source's averaging lag undone (so P is not
    power_integral_j where the source reports a trailing mean; see the meter). It lies in
    [-1, 1]: 0 when they agree, +1 when the counter did not advance at all while power was
    reported, -1 when power read zero while the counter advanced. With several devices it
    is the device of largest magnitude. None where no device was compared: no counter or
    no power reading, or a window shorter than the meter's cross-check span.
    """

    name: str
    start_s: float
    end_s: float
    duration_s: float
    energy_j: float
    source: Source
    device: str
    flags: tuple[str, ...] = ()
    power_integral_j: float | None = None
    per_device_j: tuple[tuple[str, float], ...] = ()
    counter_power_disagreement: float | None = None

    @property
    def avg_power_w(self) -> float:
        """Mean power over the window (energy_j / duration_s); 0 for an empty window."""
        return self.energy_j / self.duration_s if self.duration_s > 0 else 0.0

    def to_dict(self) -> dict:
        """Plain JSON-ready dict, avg_power_w included."""
        return {**asdict(self), "avg_power_w": self.avg_power_w}


@dataclass(frozen=True)
class TraceRow:
    """One sample of one device: cumulative energy since the meter started, and power."""

    t_wall_s: float  # harness.energy.clock.now(): monotonic, readable as a time of day
    device: str
    energy_j: float
    power_w: float | None


class Reading(NamedTuple):
    """What a meter reads from one device at one instant."""

    energy_j: float  # cumulative since the meter's first sample, never decreasing
    power_w: float | None
    events: tuple[str, ...] = ()  # integrity events seen at this sample (flag names)


class Meter:
    """Samples cumulative energy of its devices on a background thread at `hz`.

    Subclasses set `kind`, `source` and `resolution_s`, implement `_read`, and call
    `_start()` at the end of their constructor. Windows are computed from the samples:
    `begin_window`/`end_window` take a sample at each end; `energy_between` works for any
    span inside the sampled range, also after `close()`.
    """

    kind = "base"
    source: Source = "measured"
    resolution_s = 0.0  # windows shorter than this are flagged FLAG_SHORT

    def __init__(self, devices: Sequence[str], hz: float = 10.0) -> None:
        if not devices:
            raise MeterError(f"{type(self).__name__} found no device to measure")
        if not hz > 0:
            raise ValueError(f"sampling rate hz must be > 0, got {hz!r}")
        self.devices = tuple(devices)
        self.hz = float(hz)
        self._series = {d: DeviceSeries(d) for d in self.devices}
        # (t_prev_s, t_s, device, flag): an event seen at sample t_s concerns the span
        # since the device's previous sample t_prev_s.
        self._events: list[tuple[float, float, str, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._open: dict[str, float] = {}
        self._error: MeterError | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- for subclasses -------------------------------------------------------------
    def _read(self, t_s: float) -> list[Reading]:
        """One Reading per device (in `self.devices` order), taken at time t_s (harness.energy.clock)."""
        raise NotImplementedError

    def _window_checks(self, device: str, t0_s: float, t1_s: float,
                       energy_j: float) -> tuple[list[str], float | None]:
        """Integrity flags for one device's share of a window, and its disagreement (see Window)."""
        return [], None

    def _shutdown(self) -> None:
        """Release the source (called once by close())."""

    def _start(self) -> None:
        self.sample_now()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-meter", daemon=True)
        self._thread.start()

    # --- sampling -------------------------------------------------------------------
    def sample_now(self) -> float:
        """Take one sample of every device now; returns its time (harness.energy.clock)."""
        with self._lock:
            t_s = now()
            try:
                readings = self._read(t_s)
            except MeterError as err:
                self._error = err  # later window calls report it too
                raise
            for device, reading in zip(self.devices, readings, strict=True):
                series = self._series[device]
                prev_s = series.last_s if series.last_s is not None else t_s
                series.append(t_s, reading.energy_j, reading.power_w)
                self._events.extend((prev_s, t_s, device, flag) for flag in reading.events)
        return t_s

    def _run(self) -> None:
        while not self._stop.wait(1.0 / self.hz):
            try:
                self.sample_now()
            except MeterError:  # kept in self._error; the next window call raises it
                return

    def _check_usable(self) -> None:
        if self._closed:
            raise MeterClosedError(f"the {self.kind} meter is closed; make a new one with make_meter()")
        if self._error is not None:
            raise self._error

    # --- windows --------------------------------------------------------------------
    def begin_window(self, name: str) -> float:
        """Open a named window now; returns its start time (harness.energy.clock, seconds)."""
        self._check_usable()
        if name in self._open:
            raise ValueError(f"window {name!r} is already open; end it or use another name")
        self._open[name] = self.sample_now()
        return self._open[name]

    def end_window(self, name: str) -> Window:
        """Close the named window now and return its energy."""
        self._check_usable()
        if name not in self._open:
            raise ValueError(f"no open window named {name!r}; open ones: {sorted(self._open)}")
        t0_s = self._open.pop(name)
        return self._window(name, t0_s, self.sample_now())

    def energy_between(self, t0_s: float, t1_s: float, name: str = "between") -> Window:
        """Energy over [t0_s, t1_s] (harness.energy.clock) from the samples, defined after the fact."""
        if t1_s < t0_s:
            raise ValueError(f"window {name!r} ends before it starts ({t1_s} < {t0_s})")
        series = self._series[self.devices[0]]
        if not self._closed and (series.last_s is None or t1_s > series.last_s):
            self._check_usable()
            self.sample_now()
        if not series.covers(t0_s, t1_s):
            cause = f" (sampling stopped: {self._error})" if self._error is not None else ""
            raise ValueError(
                f"window {name!r} [{t0_s:.3f}, {t1_s:.3f}] is outside the sampled span "
                f"[{series.first_s}, {series.last_s}]{cause}: start the meter before the work "
                "and end windows before closing it"
            )
        return self._window(name, t0_s, t1_s)

    def _window(self, name: str, t0_s: float, t1_s: float) -> Window:
        duration_s = t1_s - t0_s
        flags = [FLAG_SHORT] if duration_s < self.resolution_s else []
        per_device, integrals, disagreements = [], [], []
        with self._lock:
            for device in self.devices:
                series = self._series[device]
                energy_j = series.energy_at(t1_s) - series.energy_at(t0_s)
                integral_j = series.power_integral_j(t0_s, t1_s)
                per_device.append((device, energy_j))
                integrals.append(integral_j)
                own, disagreement = self._window_checks(device, t0_s, t1_s, energy_j)
                flags += [f"{flag}:{device}" for flag in own]
                if disagreement is not None:
                    disagreements.append(disagreement)
            flags += [f"{flag}:{dev}" for lo, hi, dev, flag in self._events if lo < t1_s and hi > t0_s]
        return Window(
            name=name, start_s=t0_s, end_s=t1_s, duration_s=duration_s,
            energy_j=sum(j for _, j in per_device), source=self.source,
            device="+".join(self.devices), flags=tuple(dict.fromkeys(flags)),
            power_integral_j=None if None in integrals else sum(integrals),
            per_device_j=tuple(per_device),
            counter_power_disagreement=max(disagreements, key=abs, default=None),
        )

    # --- trace ----------------------------------------------------------------------
    def trace(self) -> list[TraceRow]:
        """Every sample so far, time-ordered per device."""
        with self._lock:
            return [
                TraceRow(t, s.device, e, p)
                for s in self._series.values()
                for t, e, p in zip(s.t_s, s.energy_j, s.power_w)
            ]

    def write_trace(self, path: str | os.PathLike) -> Path:
        """Write the trace as CSV (.csv) or JSON lines (.jsonl), atomically."""
        path = Path(path)
        if path.suffix not in (".csv", ".jsonl"):
            raise ValueError(f"trace path must end in .csv or .jsonl, got {path.name!r}")
        rows = [asdict(r) for r in self.trace()]
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            if path.suffix == ".csv":
                writer = csv.DictWriter(fh, fieldnames=list(TraceRow.__dataclass_fields__))
                writer.writeheader()
                writer.writerows(rows)
            else:
                fh.writelines(json.dumps(r) + "\n" for r in rows)
        os.replace(tmp, path)
        return path

    # --- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Stop sampling (a last sample is taken) and release the source; idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            if self._error is None:
                self.sample_now()
        except MeterError:
            pass  # kept in self._error: windows reaching past the last good sample say so
        finally:
            self._closed = True
            self._shutdown()

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
