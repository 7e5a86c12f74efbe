"""Latency percentiles, throughput, counts and answer lengths of a run's replay records."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from harness.replay.tokens import output_tokens as count_output_tokens


class TimedRecord(Protocol):
    prompt_tokens: int
    output_tokens: int
    ttft_ms: float | None
    latency_ms: float | None
    itl_ms: Sequence[float]
    finish_reason: str | None
    error: str | None


class SizedRecord(Protocol):
    task: str
    output_tokens: int
    error: str | None
    max_tokens: int | None
    max_tokens_from: str | None


@dataclass(frozen=True)
class Percentiles:
    """p50/p90/p99 (linear interpolation) of one per-request quantity; None with no data.

    The unit is in the name of the field holding this object (e.g. Latency.ttft_ms).
    """

    p50: float | None
    p90: float | None
    p99: float | None


@dataclass(frozen=True)
class Latency:
    """Latencies of the successful requests, in milliseconds.

    ttft_ms: request sent to first output token received; latency_ms: request sent to
    last token received; itl_ms: gaps between consecutive output tokens, pooled over requests.
    """

    ttft_ms: Percentiles
    latency_ms: Percentiles
    itl_ms: Percentiles


@dataclass(frozen=True)
class Throughput:
    """Rates over the suite window: output tokens and completed requests per second.

    Only successful requests count; the denominator is the suite window's duration_s.
    """

    output_tok_per_s: float | None
    requests_per_s: float | None


@dataclass(frozen=True)
class Counts:
    """Request and token counts over the measured suite (warm-up excluded)."""

    requests: int
    ok: int
    errors: int
    truncated: int
    prompt_tokens: int
    output_tokens: int


def percentiles(values: Iterable[float | None]) -> Percentiles:
    """p50/p90/p99 of the values that are not None."""
    import numpy as np

    data = [float(v) for v in values if v is not None]
    if not data:
        return Percentiles(None, None, None)
    p50, p90, p99 = np.percentile(data, [50, 90, 99])
    return Percentiles(float(p50), float(p90), float(p99))


def summarize_requests(records: Sequence[TimedRecord],
                       suite_duration_s: float | None) -> tuple[Latency, Throughput, Counts]:
    """Latency percentiles, throughput and counts of one run's replay records.

    Args:
        records: the measured requests (RequestRecord), warm-up excluded.
        suite_duration_s: length of the suite energy window in seconds; None or 0 leaves
            the throughput unknown (None) rather than inventing a denominator.
    """
    ok = [r for r in records if r.error is None]
    latency = Latency(
        ttft_ms=percentiles(r.ttft_ms for r in ok),
        latency_ms=percentiles(r.latency_ms for r in ok),
        itl_ms=percentiles(gap for r in ok for gap in r.itl_ms),
    )
    output_tokens = count_output_tokens(ok)  # the server's usage figures (harness.replay.tokens)
    if suite_duration_s:
        throughput = Throughput(output_tokens / suite_duration_s, len(ok) / suite_duration_s)
    else:
        throughput = Throughput(None, None)
    counts = Counts(
        requests=len(records),
        ok=len(ok),
        errors=len(records) - len(ok),
        truncated=sum(r.finish_reason == "length" for r in ok),
        prompt_tokens=sum(r.prompt_tokens for r in ok),
        output_tokens=output_tokens,
    )
    return latency, throughput, counts


def output_lengths(records: Sequence[SizedRecord]) -> dict[str, dict[str, Any]]:
    """Answer length as the server counted it: per task, the output tokens of the successful requests.

    Each task (and "all") gets n, mean, median, p90 (linear interpolation) and max output tokens
    per request, and the effective max_tokens limits those requests had (min and max over them,
    with what set them; see RequestRecord.max_tokens). Answer length is energy: the suite's
    total is not normalised per token.
    """
    ok = [r for r in records if r.error is None]
    tasks = {"all": ok}
    for r in ok:
        tasks.setdefault(r.task, []).append(r)
    return {task: {**length_stats([r.output_tokens for r in group],
                                  [r.max_tokens for r in group if r.max_tokens is not None]),
                   "max_tokens_from": sorted({r.max_tokens_from for r in group if r.max_tokens_from})}
            for task, group in sorted(tasks.items(), key=lambda kv: (kv[0] != "all", kv[0]))}


def length_stats(tokens: Sequence[int], limits: Sequence[int] = ()) -> dict[str, Any]:
    """n, mean, median, p90 (linear interpolation) and max of output tokens per request, and the
    lowest and highest effective max_tokens those requests had (None where unknown)."""
    import numpy as np

    stats = {"n": len(tokens), "mean": None, "median": None, "p90": None, "max": None,
             "max_tokens_min": min(limits) if limits else None, "max_tokens_max": max(limits) if limits else None}
    if tokens:
        median, p90 = np.percentile(tokens, [50, 90])
        stats.update(mean=float(np.mean(tokens)), median=float(median), p90=float(p90), max=int(max(tokens)))
    return stats
