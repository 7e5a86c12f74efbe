"""The steady-state window from per-request start and end times."""

from __future__ import annotations

import pytest

from harness.energy import steady_window


def _closed_loop(workers: int, per_worker: int, latency_s: float, turnaround_s: float,
                 stagger_s: float) -> list[list[tuple[float, float]]]:
    """Requests of a closed-loop replay: each worker sends its next request after a turnaround."""
    chains = []
    for w in range(workers):
        t, chain = w * stagger_s, []
        for _ in range(per_worker):
            chain.append((t, t + latency_s))
            t += latency_s + turnaround_s
        chains.append(chain)
    return chains


def test_sequential_replay_spans_first_start_to_last_end() -> None:
    (chain,) = _closed_loop(1, per_worker=6, latency_s=0.8, turnaround_s=0.02, stagger_s=0.0)
    assert steady_window(chain, concurrency=1) == (chain[0][0], chain[-1][1])


def test_a_long_pause_splits_the_run_and_the_longer_part_wins() -> None:
    (first,) = _closed_loop(1, per_worker=2, latency_s=0.8, turnaround_s=0.0, stagger_s=0.0)
    later = [(10.0 + a, 10.0 + b) for a, b in _closed_loop(1, 4, 0.8, 0.0, 0.0)[0]]
    assert steady_window(first + later, concurrency=1, max_gap_s=1.0) == (later[0][0], later[-1][1])


def test_concurrency_window_excludes_ramp_up_and_tail() -> None:
    chains = _closed_loop(4, per_worker=5, latency_s=1.0, turnaround_s=0.005, stagger_s=0.05)
    requests = [r for chain in chains for r in chain]
    t0_s, t1_s = steady_window(requests, concurrency=4, max_gap_s=0.1)
    assert t0_s == chains[-1][0][0]  # the fourth worker's first request starts the window
    assert t1_s == min(chain[-1][1] for chain in chains)  # the first worker to finish ends it
    assert steady_window(requests, concurrency=5) is None  # never 5 in flight


def test_skip_first_drops_warm_up_requests() -> None:
    (chain,) = _closed_loop(1, per_worker=4, latency_s=1.0, turnaround_s=0.01, stagger_s=0.0)
    assert steady_window(chain, concurrency=1, skip_first=1) == (chain[1][0], chain[-1][1])


def test_too_short_or_empty_gives_none() -> None:
    assert steady_window([(0.0, 0.3)], concurrency=1, min_duration_s=1.0) is None
    assert steady_window([], concurrency=1) is None


@pytest.mark.parametrize(("intervals", "concurrency"), [([(1.0, 0.5)], 1), ([(0.0, 1.0)], 0)])
def test_invalid_input_is_rejected(intervals: list[tuple[float, float]], concurrency: int) -> None:
    with pytest.raises(ValueError):
        steady_window(intervals, concurrency=concurrency)


def test_saturated_window_runs_from_a_full_batch_to_the_last_target_remaining():
    from harness.energy.steady import saturated_window

    # Six requests at concurrency 2: first tokens at 1.0, 1.5, ...; ends at 3, 4, 5, 6, 7, 8.
    firsts, ends = [1.0, 1.5, 3.5, 4.5, 5.5, 6.5], [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    # Opens when the 2nd request has its first token; closes when the 4th ends and 2 remain.
    assert saturated_window(firsts, ends, target=2) == (1.5, 6.0)
    assert saturated_window(firsts[:2], ends[:2], target=2) is None  # never more requests than the batch
    assert saturated_window(firsts, ends, target=1) == (1.0, 7.0)
    with pytest.raises(ValueError, match=">= 1"):
        saturated_window(firsts, ends, target=0)


def test_steady_span_by_arrival_mode_and_tokens_inside_it():
    from harness.replay.client import ReplayResult, RequestRecord
    from harness.replay.tokens import tokens_between
    from harness.trials import steady_span

    def record(start: float, end: float, ttft_ms: float) -> RequestRecord:
        # 10 tokens, one per 100 ms from the first token on, as the server's running usage says.
        usage = tuple((ttft_ms + 100.0 * i, i + 1) for i in range(10))
        return RequestRecord("r", "colour", 5, 10, ttft_ms, (end - start) * 1e3, (), "x", "stop", None, start, end,
                             usage_ms=usage)

    records = tuple(record(s, s + 1.2, 200.0) for s in (0.0, 0.1, 1.3, 1.4, 2.6, 2.7))
    played = ReplayResult(records, (), 0.0, 3.9)
    assert steady_span("sequential", played, 1, 1.0) == (0.0, 3.9)
    assert steady_span("concurrent", played, 2, 1.0) == pytest.approx((0.3, 2.6))
    assert steady_span("poisson", played, 2, 30.0) is None  # not saturated for the minimum: no window
    # Tokens generated inside [0.3, 2.6]: counted from each request's usage timeline.
    inside = tokens_between(records, 0.3, 2.6)
    assert inside == sum(sum(1 for ms, _ in r.usage_ms if 0.3 < r.start_s + ms / 1e3 <= 2.6) for r in records)
    assert 0 < inside < sum(r.output_tokens for r in records)
