"""The steady-state window of a replay: when the server held the target load."""

from __future__ import annotations

from typing import Sequence

# A steady window shorter than this is kept but flagged: a ~100 ms energy counter cannot
# resolve it well, and a short plateau says little about sustained load. On a GPU the bar is
# ML.ENERGY's 30 s (clocks and temperature take that long to settle); on a CPU, where the
# tiny default model serves a suite in seconds, 1 s.
STEADY_MIN_S = 1.0
STEADY_MIN_GPU_S = 30.0
FLAG_SHORT_STEADY = "steady_shorter_than_min"


def steady_min_s(device: str) -> float:
    """The shortest steady window that is not flagged, on this device ("cuda" or "cpu")."""
    return STEADY_MIN_GPU_S if device == "cuda" else STEADY_MIN_S


def saturated_window(first_token_s: Sequence[float], end_s: Sequence[float], target: int) -> tuple[float, float] | None:
    """The steady state as ML.ENERGY defines it, for a replay that keeps ``target`` requests in flight.

    It opens when ``target`` requests have their first token (the batch is full and past
    prefill) and closes when only the last ``target`` requests remain unfinished (the queue
    is empty and the batch starts to drain). ``target`` is the lower of the client's
    concurrency and the server's max_num_seqs. None when the suite never fills the batch
    (no more requests than ``target``) or the two instants do not leave a span.

    Args:
        first_token_s: per request, when its first token arrived (harness.energy.clock).
        end_s: per request, when it ended.
        target: requests the server runs at once at full load (>= 1).
    """
    if target < 1:
        raise ValueError(f"target must be >= 1, got {target}")
    if len(end_s) <= target or len(first_token_s) < target:
        return None
    t0_s = sorted(first_token_s)[target - 1]
    t1_s = sorted(end_s)[len(end_s) - target - 1]
    return (t0_s, t1_s) if t1_s > t0_s else None


def steady_window(
    intervals: Sequence[tuple[float, float]],
    concurrency: int,
    *,
    max_gap_s: float = 1.0,
    min_duration_s: float = 0.0,
    skip_first: int = 0,
) -> tuple[float, float] | None:
    """The longest span during which at least `concurrency` requests were in flight.

    Definition: a request is in flight from its start_s to its end_s (harness.energy.clock,
    as the replay records them). Let n(t) be the number in flight at t; at an instant where
    one request ends and another starts, the start is counted first, so a hand-over does
    not dip. The candidate spans are the maximal intervals with n(t) >= concurrency.
    Two candidates separated by a dip shorter than or equal to `max_gap_s` are joined: such
    a dip is the client's turnaround between one answer and the next request (reading the
    response, encoding the next image), part of how the load is offered, not a change of
    load. The steady-state window is the longest joined span; None when it is shorter
    than `min_duration_s` or when there are no requests. The pipeline keeps every span and
    flags a short one (FLAG_SHORT_STEADY) instead: whether a window exists must not depend
    on how fast the machine served the suite.

    With sequential replay (concurrency 1) this is the first request's start to the last
    request's end, unless a pause longer than max_gap_s splits the run. At concurrency N
    it excludes the ramp-up before N requests are running and the tail once fewer than N
    remain. No request is dropped as warm-up by default (`skip_first=0`): the replay runs
    an uncounted warm-up before the measured requests, so dropping more would discard
    steady load.

    Args:
        intervals: per-request (start_s, end_s).
        concurrency: target number of requests in flight (>= 1).
        max_gap_s: longest dip below the target that does not end the window.
        min_duration_s: shortest window worth returning.
        skip_first: number of earliest-starting requests to ignore (extra warm-up).

    Returns:
        (t0_s, t1_s), or None.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if max_gap_s < 0 or skip_first < 0:
        raise ValueError("max_gap_s and skip_first must be >= 0")
    for start_s, end_s in intervals:
        if end_s < start_s:
            raise ValueError(f"a request ends before it starts: ({start_s}, {end_s})")
    kept = sorted(intervals)[skip_first:]
    spans = _join(_spans_at_least(kept, concurrency), max_gap_s)
    if not spans:
        return None
    t0_s, t1_s = max(spans, key=lambda span: span[1] - span[0])
    return (t0_s, t1_s) if t1_s - t0_s >= min_duration_s else None


def _spans_at_least(intervals: Sequence[tuple[float, float]], target: int) -> list[tuple[float, float]]:
    """Maximal spans with at least `target` requests in flight."""
    # (time, order, change): order 0 sorts starts before ends at the same instant.
    events = sorted([(s, 0, +1) for s, _ in intervals] + [(e, 1, -1) for _, e in intervals])
    spans, in_flight, opened_s = [], 0, None
    for t_s, _, change in events:
        in_flight += change
        if opened_s is None and in_flight >= target:
            opened_s = t_s
        elif opened_s is not None and in_flight < target:
            if t_s > opened_s:
                spans.append((opened_s, t_s))
            opened_s = None
    return spans


def _join(spans: list[tuple[float, float]], max_gap_s: float) -> list[tuple[float, float]]:
    joined: list[tuple[float, float]] = []
    for start_s, end_s in spans:
        if joined and start_s - joined[-1][1] <= max_gap_s:
            joined[-1] = (joined[-1][0], end_s)
        else:
            joined.append((start_s, end_s))
    return joined
