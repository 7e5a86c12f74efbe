"""Latency percentiles, throughput and counts computed from replay records."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from harness.replay.stats import percentiles, summarize_requests


@dataclass(frozen=True)
class Record:
    ttft_ms: float | None
    latency_ms: float | None
    output_tokens: int
    prompt_tokens: int = 80
    itl_ms: tuple[float, ...] = field(default_factory=tuple)
    finish_reason: str | None = "stop"
    error: str | None = None


def test_percentiles_interpolate_and_ignore_missing_values():
    p = percentiles([10.0, 20.0, None, 30.0, 40.0, 50.0])
    assert p.p50 == 30.0
    assert p.p90 == pytest.approx(46.0)
    assert percentiles([None]).p50 is None


def test_summary_counts_only_successful_requests_in_latency_and_throughput():
    records = [
        Record(20.0, 200.0, 10, itl_ms=(5.0, 6.0)),
        Record(30.0, 300.0, 20, itl_ms=(7.0,), finish_reason="length"),
        Record(None, None, 0, error="HTTP 500"),
    ]
    latency, throughput, counts = summarize_requests(records, suite_duration_s=10.0)
    assert latency.ttft_ms.p50 == 25.0
    assert latency.itl_ms.p50 == 6.0
    assert throughput.output_tok_per_s == pytest.approx(3.0)
    assert throughput.requests_per_s == pytest.approx(0.2)
    assert (counts.requests, counts.ok, counts.errors, counts.truncated) == (3, 2, 1, 1)
    assert counts.prompt_tokens == 160 and counts.output_tokens == 30


def test_unknown_suite_duration_leaves_throughput_unknown():
    _, throughput, _ = summarize_requests([Record(20.0, 200.0, 10)], suite_duration_s=None)
    assert throughput.output_tok_per_s is None and throughput.requests_per_s is None
