"""How much of a trial's suite energy went to decoding answers: an attribution by time, not a meter reading."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from harness.energy.attribution import in_flight_pieces

ATTRIBUTION = ("by time: each instant of the suite window split evenly among the requests in flight, each share "
               "counted as decode once that request's first output token arrived, else as prefill; instants with "
               "no request in flight are idle; joules = suite energy x share of the window's time (its average "
               "power), not a separate meter reading")


def first_token_s(record: Any) -> float | None:
    """When a request's first output token reached the client: its first usage chunk with tokens, else its TTFT."""
    ms = next((ms for ms, tokens in record.usage_ms if tokens > 0), None) if record.usage_ms else None
    if ms is None and record.ttft_ms is not None:
        ms = record.ttft_ms
    return None if ms is None else record.start_s + ms / 1e3


def decode_split(records: Sequence[Any], window: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The suite window's time and energy split into decode and the rest (prefill, queueing, idle).

    Definition (ATTRIBUTION): cut the window at every request's send, first token and end; the
    length of each piece goes in equal shares to the requests in flight during it, to decode
    after that request's first token and to prefill before it (image encoding, queueing and
    prompt prefill alike); a piece with no request in flight is idle (client turnaround). With
    chunked prefill a server step mixes both phases: the split says how long answers were being
    decoded, not which kernels ran. Energy follows time at the window's average power.

    Args:
        records: the trial's requests (RequestRecord: start_s, end_s, ttft_ms, usage_ms).
        window: the trial's suite window (Window.to_dict(): start_s, end_s, energy_j).

    Returns:
        decode_s, prefill_s, idle_s, decode_share (of the window's time), decode_j, rest_j and
        the attribution in words; None without a window of positive length.
    """
    if not window or window.get("duration_s", 0) <= 0 or window.get("energy_j") is None:
        return None
    w0, w1 = window["start_s"], window["end_s"]
    spans = [(first_token_s(r), max(r.start_s, w0), min(r.end_s, w1)) for r in records]
    spans = [(first, a, b) for first, a, b in spans if b > a]
    firsts = [first for first, _, _ in spans if first is not None and w0 <= first <= w1]
    decode = prefill = idle = 0.0
    for t0, t1, live in in_flight_pieces(spans, (w0, w1, *firsts)):
        if not live:
            idle += t1 - t0
            continue
        share = (t1 - t0) / len(live)
        decoding = sum(first is not None and first <= t0 for first in live)
        decode += share * decoding
        prefill += share * (len(live) - decoding)
    duration = w1 - w0
    decode_j = window["energy_j"] * decode / duration
    return {"decode_s": decode, "prefill_s": prefill, "idle_s": idle, "decode_share": decode / duration,
            "decode_j": decode_j, "rest_j": window["energy_j"] - decode_j, "attribution": ATTRIBUTION}
