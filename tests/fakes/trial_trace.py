"""Simulated trial sessions metered as NVML would meter them, for the energy comparison's error rates.

Used by tests/test_trials_sim.py and bench/trials_power.py: fast (no sleeping, numpy for the
trace) and deterministic for a given numpy Generator.

One session (`simulate_session`) is one GPU running 2N trials in the harness's own ABBA order
(harness.trials.schedule: B V V B B V ...), each trial preceded by 1-2 s of idle:

    trial power: ramp from idle (fake_nvml.IDLE_W) to P in RAMP_S, hold P for L seconds,
        ramp back to idle in RAMP_S. The session draws a base load (P0 in [300, 450] W,
        L0 in [3, 6] s by default: one suite on one machine); each trial scales it by
            f = (gap for variant trials, 1 for baseline ones)
                x (1 + drift * position / (2N - 1))      position 0..2N-1 in the session
                x exp(sigma * z),  z ~ N(0, 1),  sigma = sqrt(log(1 + cv**2))  (log-normal, CV cv)
        split evenly between power and duration: P = P0 * sqrt(f), L = L0 * sqrt(f), so the
        plateau's energy scales by exactly f (the ramps, partly at idle power, a little less).
    counter: fake_nvml's model (FakeGpu.counter_mj): integer mJ of the exact integral of P,
        advancing in 100 ms steps.
    meter: samples at 10 Hz from a random phase, each sample late by up to 20 ms (a sampling
        thread's wake-up jitter), into a harness DeviceSeries exactly as NvmlMeter builds it
        (energy = counter increments since the first sample; power = the trailing 1 s mean).
    trial energy: the suite window [start of ramp-up, end of ramp-down] as the meter computes
        it, series.energy_at(t1) - series.energy_at(t0) (Meter.energy_between's arithmetic).

With `requests` > 0 the suite is that many sequential requests (one set per session, log-normal
sizes with sigma 0.5); in each trial every request's duration is its size times its own
log-normal jitter with CV `request_cv` (so the plateau lasts L times the jittered total over
the plain one), the requests tile the window in order, and each request's share is the
window energy between its own start and end, as harness.energy.attribution gives a
sequential replay.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from harness.energy.series import DeviceSeries
from harness.score.energy import EnergyComparison, compare_trials
from harness.trials import schedule
from tests.fakes.fake_nvml import IDLE_W, PowerTrace

RAMP_S = 0.2
COUNTER_PERIOD_S = 0.1  # NVML's energy counter advances in 100 ms steps
SAMPLE_HZ = 10.0
SAMPLE_JITTER_S = 0.02
POWER_AVG_S = 1.0
OFFSET_MJ = 987_654_321  # the counter counts since the driver loaded, not from zero


@dataclass(frozen=True)
class Session:
    """One simulated session: per-trial suite-window energies (trial k of each side pairs up).

    Attributes:
        variant_j, baseline_j: each trial's suite-window energy read from `series`, in trial order.
        variant_true_j, baseline_true_j: the exact energy of the same windows (from the trace).
        variant_requests_j, baseline_requests_j: per trial, the per-request shares (empty
            arrays when the session was simulated without requests).
        trace: the session's true power; series: what the meter recorded.
    """

    variant_j: tuple[float, ...]
    baseline_j: tuple[float, ...]
    variant_true_j: tuple[float, ...]
    baseline_true_j: tuple[float, ...]
    variant_requests_j: tuple[np.ndarray, ...]
    baseline_requests_j: tuple[np.ndarray, ...]
    trace: PowerTrace
    series: DeviceSeries
    sampling_phase_s: float


def trace_energy_j(trace: PowerTrace, t_s: np.ndarray) -> np.ndarray:
    """Exact integral of the trace's power from 0 to each t_s >= 0 (vectorised PowerTrace.energy_j)."""
    dur = np.array([d for d, _, _ in trace.segments])
    a_w = np.array([a for _, a, _ in trace.segments])
    b_w = np.array([b for _, _, b in trace.segments])
    starts = np.array(trace.starts_s[:-1])
    at_starts = np.concatenate([[0.0], np.cumsum(dur * (a_w + b_w) / 2)])
    t_s = np.asarray(t_s, dtype=float)
    i = np.clip(np.searchsorted(starts, t_s, side="right") - 1, 0, len(dur) - 1)
    dt = np.clip(t_s - starts[i], 0.0, dur[i])
    p_t = a_w[i] + (b_w[i] - a_w[i]) * dt / dur[i]
    inside = at_starts[i] + dt * (a_w[i] + p_t) / 2
    past_end = np.maximum(t_s - trace.duration_s, 0.0) * b_w[-1]  # power held after the last segment
    return inside + past_end


def counter_mj(trace: PowerTrace, t_s: np.ndarray, offset_mj: int = OFFSET_MJ) -> np.ndarray:
    """FakeGpu.counter_mj for many instants: integer mJ, advancing every COUNTER_PERIOD_S."""
    t_q = np.floor(np.asarray(t_s, dtype=float) / COUNTER_PERIOD_S) * COUNTER_PERIOD_S
    return offset_mj + (1000 * trace_energy_j(trace, t_q)).astype(np.int64)


def meter_series(trace: PowerTrace, rng: np.random.Generator, end_s: float) -> tuple[DeviceSeries, float]:
    """What an NvmlMeter sampling `trace` at SAMPLE_HZ up to end_s records, and its sampling phase.

    Times are trace times (the counter ticks at multiples of COUNTER_PERIOD_S); the meter's
    first sample falls at a random phase within the first tick.
    """
    phase_s = float(rng.uniform(0.0, COUNTER_PERIOD_S))
    n = int(end_s * SAMPLE_HZ) + 2
    t_s = phase_s + np.arange(n) / SAMPLE_HZ + rng.uniform(0.0, SAMPLE_JITTER_S, n)
    raw = counter_mj(trace, t_s)
    energy_j = np.concatenate([[0.0], np.cumsum(np.diff(raw) / 1000.0)])  # NvmlMeter: increments since start
    power_w = (trace_energy_j(trace, t_s) - trace_energy_j(trace, np.maximum(t_s - POWER_AVG_S, 0.0))) / POWER_AVG_S
    series = DeviceSeries("gpu0")
    for t, e, p in zip(t_s.tolist(), energy_j.tolist(), np.floor(power_w * 1000).tolist()):
        series.append(t, e, p / 1000.0)
    return series, phase_s


def lognormal_sigma(cv: float) -> float:
    """The log-space sigma of a log-normal factor whose coefficient of variation is cv."""
    return math.sqrt(math.log1p(cv * cv))


def simulate_session(rng: np.random.Generator, trials: int, *, cv: float, drift: float = 0.0,
                     gap: float = 1.0, load_s: tuple[float, float] = (3.0, 6.0), requests: int = 0,
                     request_cv: float = 0.02) -> Session:
    """One session of `trials` baseline and `trials` variant trials; see the module docstring.

    load_s is the range the session's base plateau length L0 is drawn from.
    """
    order = schedule(trials, "abba", True)  # (0 = baseline / 1 = variant, trial k)
    load_w, load_s = rng.uniform(300.0, 450.0), rng.uniform(*load_s)
    sigma = lognormal_sigma(cv)
    factors = [(gap if side == 1 else 1.0) * (1.0 + drift * pos / max(len(order) - 1, 1)) * math.exp(sigma * z)
               for pos, (side, _), z in zip(range(len(order)), order, rng.standard_normal(len(order)))]
    # The suite's requests (the same in every trial) and, per trial, how long each took: its
    # size times its own run-to-run jitter, so the plateau is as long as its requests took.
    sizes = rng.lognormal(0.0, 0.5, requests)
    spans = [sizes * rng.lognormal(0.0, lognormal_sigma(request_cv), requests) for _ in order]
    segments, windows, t = [], [], 0.0
    for f, span in zip(factors, spans):
        idle_s = rng.uniform(1.0, 2.0)
        p_w, l_s = load_w * math.sqrt(f), load_s * math.sqrt(f) * (span.sum() / sizes.sum() if requests else 1.0)
        segments += [(idle_s, IDLE_W, IDLE_W), (RAMP_S, IDLE_W, p_w), (l_s, p_w, p_w), (RAMP_S, p_w, IDLE_W)]
        t0 = t + idle_s
        t = t0 + 2 * RAMP_S + l_s
        windows.append((t0, t))
    segments.append((1.5, IDLE_W, IDLE_W))
    trace = PowerTrace(segments)
    series, phase_s = meter_series(trace, rng, trace.duration_s)
    measured, true, shares = {0: [], 1: []}, {0: [], 1: []}, {0: [], 1: []}
    for (side, _), (t0, t1), span in zip(order, windows, spans):
        measured[side].append(series.energy_at(t1) - series.energy_at(t0))
        true[side].append(trace.energy_j(t0, t1))
        # Sequential requests tile the window, each as long as its share of the trial's spans.
        cuts = t0 + (t1 - t0) * np.concatenate([[0.0], np.cumsum(span) / span.sum()]) if requests else []
        shares[side].append(np.diff([series.energy_at(c) for c in list(cuts)]))
    return Session(tuple(measured[1]), tuple(measured[0]), tuple(true[1]), tuple(true[0]),
                   tuple(shares[1]), tuple(shares[0]), trace, series, phase_s)


def compare(session: Session) -> EnergyComparison:
    """The harness's comparison of the session's measured per-trial energies."""
    return compare_trials(session.variant_j, session.baseline_j, variant_source="measured",
                          baseline_source="measured", confidence=0.95)


def gap_rates(seed: int, sessions: int, trials: int, *, cv: float, drift: float = 0.0,
              gap: float = 1.0) -> dict[str, float]:
    """Fraction of `sessions` independent sessions ending in each gap verdict (harness.score.energy.GAPS)."""
    rng = np.random.default_rng(seed)
    counts = Counter(compare(simulate_session(rng, trials, cv=cv, drift=drift, gap=gap)).gap
                     for _ in range(sessions))
    return {g: counts[g] / sessions for g in ("lower", "higher", "not_resolved", "not_measured")}
