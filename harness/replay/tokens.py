"""Token accounting, defined once: output tokens are what the server reports in ``usage``.

An output token is one generated token as counted by the serving engine itself: the
``usage.completion_tokens`` of an OpenAI-compatible response (for a streamed response, the
final chunk that ``STREAM_OPTIONS`` asks for). No client-side re-tokenisation: the client
may not hold the tokenizer, and a chunk can carry several tokens or none, so counting
chunks or words would make energy per token differ between engines for the same answers.
Replay, request statistics, the leaderboard and lm-eval runs all count through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

# Sent with every streamed request: the server appends one chunk carrying the final `usage`, and
# (continuous_usage_stats) puts the running usage in every chunk, so the client knows how many
# tokens existed at each instant (harness.replay.tokens.tokens_between, the steady window).
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


class Counted(Protocol):
    output_tokens: int
    error: str | None


def usage_tokens(usage: Any) -> tuple[int, int]:
    """(prompt_tokens, output_tokens) of a response ``usage`` object or mapping; (0, 0) if absent."""
    if usage is None:
        return 0, 0
    if isinstance(usage, dict):  # the replay's parsed chunks: called once per streamed token
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return int(getattr(usage, "prompt_tokens", None) or 0), int(getattr(usage, "completion_tokens", None) or 0)


def output_tokens(records: Iterable[Counted]) -> int:
    """Output tokens of the successful requests (a failed request's partial output is not counted)."""
    return sum(r.output_tokens for r in records if r.error is None)


def joules_per_output_token(energy_j: float | None, tokens: int | None) -> float | None:
    """Energy over a window divided by the output tokens generated in it; None when either is unknown or zero."""
    if energy_j is None or not tokens:
        return None
    return float(energy_j) / tokens


def tokens_between(records: Iterable[Any], t0_s: float, t1_s: float) -> int:
    """Output tokens the server generated within [t0_s, t1_s], over the successful requests.

    Each record's ``usage_ms`` holds (ms after the request was sent, completion tokens so
    far) for every chunk, from the server's own running usage; the count at an instant is that
    of the last chunk at or before it.
    """
    total = 0
    for r in records:
        if r.error is not None or not r.usage_ms:
            continue
        at = [(r.start_s + ms / 1e3, n) for ms, n in r.usage_ms]
        total += _count_at(at, t1_s) - _count_at(at, t0_s)
    return total


def _count_at(points: list[tuple[float, int]], t_s: float) -> int:
    count = 0
    for when, n in points:
        if when > t_s:
            break
        count = n
    return count
