"""Per-request energy: each instant's energy split evenly among the requests in flight."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any


def in_flight_pieces(spans: Sequence[tuple[Any, float, float]],
                     extra_cuts: Iterable[float] = ()) -> Iterator[tuple[float, float, list[Any]]]:
    """The timeline cut at every span's start and end (and at ``extra_cuts``): each piece
    (t0, t1) with the keys of the spans (key, start, end) in flight throughout it (maybe none)."""
    cuts = sorted({*(t for _, a, b in spans for t in (a, b)), *extra_cuts})
    for t0, t1 in zip(cuts, cuts[1:]):
        yield t0, t1, [key for key, a, b in spans if a <= t0 and b >= t1]


def per_request_energy_j(meter: Any, records: Sequence[Any]) -> dict[str, float]:
    """Joules attributed to each request id.

    Definition: cut the suite window at every request start and end; the energy of each
    piece (from the meter's sampled series) goes in equal shares to the requests in flight
    during it. Pieces with no request in flight (client turnaround) are attributed to no
    one, so the sum is at most the suite energy. Sequential replay gives each request the
    energy between its own start and end.

    Raises:
        ValueError: a record ends before it starts.
    """
    backwards = [r.id for r in records if r.end_s < r.start_s]
    if backwards:
        raise ValueError(f"requests end before they start: {backwards[:5]}")
    spans = [(r.id, r.start_s, r.end_s) for r in records if r.end_s > r.start_s]
    shares = {r.id: 0.0 for r in records}
    for t0, t1, live in in_flight_pieces(spans):
        if live:
            joules = meter.energy_between(t0, t1, name="piece").energy_j
            for rid in live:
                shares[rid] += joules / len(live)
    return shares
