"""Per-request energy attribution on hand-built power traces whose split is worked out by hand."""

from __future__ import annotations

import pytest

from harness.energy.attribution import per_request_energy_j
from harness.energy.base import Meter
from harness.replay.client import RequestRecord

# Power drawn in each second of the trace, [0, 1), [1, 2), ... [9, 10) (watts): steps make a
# piece's energy depend on where it lies, so attributing the wrong piece changes the answer.
POWER_W = (50.0, 100.0, 100.0, 300.0, 300.0, 200.0, 200.0, 400.0, 100.0, 100.0)


class TraceMeter(Meter):
    """A closed meter whose one device's samples are a given trace (no live source).

    Samples at t = 0, 1, ..., 10 s; the cumulative energy is the running sum of POWER_W, so
    between two samples the meter's linear interpolation is exactly constant power.
    """

    kind = "trace"
    source = "measured"

    def __init__(self, power_w: tuple[float, ...] = POWER_W) -> None:
        super().__init__(["gpu0"])
        series, energy_j = self._series["gpu0"], 0.0
        series.append(0.0, 0.0, power_w[0])
        for second, watts in enumerate(power_w, start=1):
            energy_j += watts
            series.append(float(second), energy_j, watts)
        self._closed = True  # nothing is sampled any more; windows come from the trace alone


def energy(t0_s: float, t1_s: float) -> float:
    """Joules of POWER_W over [t0_s, t1_s], integrated by hand (constant power per second)."""
    total, t = 0.0, t0_s
    while t < t1_s:
        second = int(t)
        step_end = min(float(second + 1), t1_s)
        total += POWER_W[second] * (step_end - t)
        t = step_end
    return total


def request(rid: str, start_s: float, end_s: float) -> RequestRecord:
    return RequestRecord(id=rid, task="caption", prompt_tokens=10, output_tokens=5, ttft_ms=1.0,
                         latency_ms=(end_s - start_s) * 1000, itl_ms=(), output_text="x", finish_reason="stop",
                         error=None, start_s=start_s, end_s=end_s)


def test_the_hand_integrated_trace_is_what_the_meter_reads():
    meter = TraceMeter()
    assert meter.energy_between(0.0, 10.0).energy_j == pytest.approx(sum(POWER_W))
    assert meter.energy_between(2.5, 4.5).energy_j == pytest.approx(energy(2.5, 4.5)) == 50 + 300 + 150


def test_a_request_alone_gets_all_the_energy_of_its_span():
    shares = per_request_energy_j(TraceMeter(), [request("a", 2.5, 5.5)])
    assert shares == {"a": pytest.approx(energy(2.5, 5.5))}
    assert shares["a"] == pytest.approx(50 + 300 + 300 + 100)  # 2.5-3 at 100 W, 3-5 at 300 W, 5-5.5 at 200 W


def test_sequential_requests_each_get_their_own_span():
    shares = per_request_energy_j(TraceMeter(), [request("a", 1.0, 3.0), request("b", 3.0, 7.5)])
    assert shares["a"] == pytest.approx(energy(1.0, 3.0)) == 200
    assert shares["b"] == pytest.approx(energy(3.0, 7.5)) == 300 + 300 + 200 + 200 + 200


def test_two_fully_overlapping_requests_split_evenly():
    shares = per_request_energy_j(TraceMeter(), [request("a", 1.0, 4.0), request("b", 1.0, 4.0)])
    assert energy(1.0, 4.0) / 2 == 250
    assert shares == {"a": pytest.approx(250), "b": pytest.approx(250)}


def test_partial_overlap_splits_only_the_shared_part():
    # a alone on [1, 3), both on [3, 4), b alone on [4, 7).
    shares = per_request_energy_j(TraceMeter(), [request("a", 1.0, 4.0), request("b", 3.0, 7.0)])
    assert shares["a"] == pytest.approx(energy(1.0, 3.0) + energy(3.0, 4.0) / 2) == 200 + 150
    assert shares["b"] == pytest.approx(energy(3.0, 4.0) / 2 + energy(4.0, 7.0)) == 150 + 300 + 200 + 200


def test_three_in_flight_split_in_thirds_and_a_nested_request_shares_only_its_span():
    # outer on [0, 8); mid on [2, 6); inner on [3, 4): three in flight on [3, 4) only.
    records = [request("outer", 0.0, 8.0), request("mid", 2.0, 6.0), request("inner", 3.0, 4.0)]
    shares = per_request_energy_j(TraceMeter(), records)
    assert shares["inner"] == pytest.approx(energy(3.0, 4.0) / 3) == 100
    assert shares["mid"] == pytest.approx(energy(2.0, 3.0) / 2 + 100 + energy(4.0, 6.0) / 2) == 50 + 100 + 250
    assert shares["outer"] == pytest.approx(energy(0.0, 2.0) + energy(2.0, 3.0) / 2 + 100
                                            + energy(4.0, 6.0) / 2 + energy(6.0, 8.0))


def test_shares_add_up_to_the_energy_of_the_union_and_idle_gaps_go_to_no_one():
    # Busy on [1, 4) and [6, 8.5); nothing in flight on [4, 6) (500 J) nor outside.
    records = [request("a", 1.0, 3.0), request("b", 2.0, 4.0), request("c", 6.0, 8.5), request("d", 7.0, 8.0)]
    meter = TraceMeter()
    shares = per_request_energy_j(meter, records)
    union_j = energy(1.0, 4.0) + energy(6.0, 8.5)
    assert sum(shares.values()) == pytest.approx(union_j)
    suite_j = meter.energy_between(1.0, 8.5).energy_j  # the suite window, gap included
    assert suite_j - sum(shares.values()) == pytest.approx(energy(4.0, 6.0)) == 500


def test_a_request_with_no_duration_is_listed_with_no_energy_and_takes_none_from_others():
    records = [request("long", 2.0, 6.0), request("instant", 3.0, 3.0)]
    shares = per_request_energy_j(TraceMeter(), records)
    assert shares == {"long": pytest.approx(energy(2.0, 6.0)), "instant": 0.0}


def test_a_request_outside_the_recorded_trace_is_refused():
    with pytest.raises(ValueError, match="outside the sampled span"):
        per_request_energy_j(TraceMeter(), [request("a", 8.0, 12.0)])


def test_a_request_that_ends_before_it_starts_is_refused():
    with pytest.raises(ValueError, match="end before they start"):
        per_request_energy_j(TraceMeter(), [request("a", 2.0, 5.0), request("b", 6.0, 4.0)])
