"""One device's sampled time series of cumulative energy and power, with interpolation."""

from __future__ import annotations

from bisect import bisect_left, bisect_right


class DeviceSeries:
    """Samples of one device, appended in time order by the meter's sampling thread.

    Quantities:
        t_s: time of the sample (harness.energy.clock.now(): monotonic, on the wall clock's scale).
        energy_j: energy the device used from the meter's first sample up to t_s (joules,
            never decreasing: counter resets and wraps are handled before appending).
        power_w: the power the device reported at t_s (watts), or None where the meter
            has no power reading.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.t_s: list[float] = []
        self.energy_j: list[float] = []
        self.power_w: list[float | None] = []

    def append(self, t_s: float, energy_j: float, power_w: float | None) -> None:
        """Add a sample; a time before the last one (a caller using another clock) is clamped to it."""
        if self.t_s and t_s < self.t_s[-1]:
            t_s = self.t_s[-1]
        self.t_s.append(t_s)
        self.energy_j.append(energy_j)
        self.power_w.append(power_w)

    @property
    def first_s(self) -> float | None:
        return self.t_s[0] if self.t_s else None

    @property
    def last_s(self) -> float | None:
        return self.t_s[-1] if self.t_s else None

    def covers(self, t0_s: float, t1_s: float) -> bool:
        """Whether [t0_s, t1_s] lies within the sampled span."""
        return bool(self.t_s) and self.t_s[0] <= t0_s and t1_s <= self.t_s[-1]

    def energy_at(self, t_s: float) -> float:
        """Cumulative energy at t_s, linearly interpolated between the neighbouring samples."""
        return _interpolate(self.t_s, self.energy_j, t_s)

    def power_integral_j(self, t0_s: float, t1_s: float) -> float | None:
        """Trapezoidal integral of the reported power over [t0_s, t1_s] (joules).

        The power at t0_s and t1_s is interpolated; None if any power reading involved is missing.
        """
        lo = bisect_right(self.t_s, t0_s)
        hi = bisect_left(self.t_s, t1_s)
        times = [t0_s, *self.t_s[lo:hi], t1_s]
        powers = [_interpolate(self.t_s, self.power_w, t0_s), *self.power_w[lo:hi],
                  _interpolate(self.t_s, self.power_w, t1_s)]
        if None in powers:
            return None
        return sum(
            (times[i + 1] - times[i]) * (powers[i] + powers[i + 1]) / 2.0
            for i in range(len(times) - 1)
        )

    def lagged_power_integral_j(self, t0_s: float, t1_s: float, avg_s: float) -> float | None:
        """Energy over [t0_s, t1_s] (joules) from power reported as a trailing mean over avg_s.

        A reading at t is the mean power over [t - avg_s, t], centred on t - avg_s / 2, so the
        reported power is integrated over [t0_s + avg_s / 2, t1_s + avg_s / 2] instead: exact
        where the true power is linear within avg_s / 2 of both ends. Past the last sample the
        last reading is held (the span is clamped there, not shortened): for a window ending
        now this is a first-order extrapolation, exact for steady power.
        """
        shift_s = avg_s / 2.0
        return self.power_integral_j(t0_s + shift_s, t1_s + shift_s)


def _interpolate(times: list[float], values: list, t_s: float):
    """Piecewise-linear value at t_s (None if a neighbouring value is None); clamped at the ends."""
    if not times:
        raise ValueError("no samples recorded yet")
    if t_s <= times[0]:
        return values[0]
    if t_s >= times[-1]:
        return values[-1]
    i = bisect_right(times, t_s)
    lo, hi = values[i - 1], values[i]
    if lo is None or hi is None:
        return None
    frac = (t_s - times[i - 1]) / (times[i] - times[i - 1])
    return lo + frac * (hi - lo)
