"""Trials and comparable baselines: the schedule, seeds, warm-up, and what may be compared with what."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config.schema import compose
from harness.energy import MEASUREMENT_VERSION
from harness.record import provenance
from harness.record.result import RunResult, append_row, config_dict, flat_row, write_result
from harness.replay.client import sample_seed
from harness.replay.workloads import load_warmup, load_workload
from harness.score.baseline import find_baseline, gate_against, incomparable
from harness.score.quality import ItemScore, aggregate
from harness.serve.cache import CacheCounters, warmer_than_first
from harness.trials import schedule

RUN = compose(["+variant=fp8", "workload.limit=8"])
BASE = compose(["+variant=bf16", "workload.limit=8"])
# This machine as provenance describes it: gate_against compares the baseline with the machine it runs on.
CPU = {"host": {"cpu_model": provenance.host_info()["cpu_model"]}, "gpus": provenance.gpu_info()}


def _quality(right: int, n: int = 8):
    return aggregate("exact", [ItemScore(f"s{i}", ("colour", "corner")[i % 2], float(i < right), "scored")
                               for i in range(n)])


def _window(name: str, joules: float) -> dict:
    return {"name": name, "energy_j": joules, "duration_s": 10.0, "start_s": 0.0, "end_s": 10.0, "flags": [],
            "source": "modeled"}


def _energy(suite_j: list[float], per_request_j: dict | None = None, partial: bool = False, **extra) -> dict:
    trials = [{"trial": k + 1, "suite": _window("suite", j)} for k, j in enumerate(suite_j)]
    return {"source": "modeled", "meter": "modeled", "measurement_version": MEASUREMENT_VERSION, "partial": partial,
            "windows": [_window("suite", suite_j[0])], "trials": trials, "per_request_j": per_request_j or {},
            "suite_j_mean": sum(suite_j) / len(suite_j), **extra}


def _baseline(results: Path, energy: dict, prov: dict = CPU, run_id: str = "base-1", quality=None) -> RunResult:
    result = RunResult(run_id=run_id, variant="bf16", status="ok", started_at="2026-12-02T00:00:00+00:00",
                       ended_at="2026-12-02T00:01:00+00:00", config=config_dict(BASE), provenance=prov,
                       serve={}, energy=energy, quality=(quality or _quality(8)).to_dict(), latency=None,
                       throughput=None, counts=None)
    (results / "runs" / run_id).mkdir(parents=True)
    write_result(results / "runs" / run_id, result)
    append_row(results / "runs.jsonl", flat_row(result))
    return result


def _ours(energy: dict, prov: dict = CPU) -> dict:
    return {"config": config_dict(RUN), "provenance": prov, "energy": energy}


def test_abba_order_pairs_each_trial_and_balances_drift():
    assert schedule(4, "abba", True) == [(0, 1), (1, 1), (1, 2), (0, 2), (0, 3), (1, 3), (1, 4), (0, 4)]
    assert schedule(2, "alternate", True) == [(0, 1), (1, 1), (0, 2), (1, 2)]
    assert schedule(3, "abba", False) == [(0, 1), (0, 2), (0, 3)]
    # Under a linear drift the mean position of each side's trials is the same for an even count.
    order = schedule(4, "abba", True)
    first = sum(i for i, (arm, _) in enumerate(order) if arm == 0)
    second = sum(i for i, (arm, _) in enumerate(order) if arm == 1)
    assert first == second


def test_seed_follows_the_sample_id_not_its_position():
    samples = load_workload(RUN.workload)
    resumed = samples[3:]  # a resumed run replays only what was left
    assert [sample_seed(0, s.id) for s in resumed] == [sample_seed(0, s.id) for s in samples][3:]
    assert len({sample_seed(0, s.id) for s in samples}) == len(samples)
    assert sample_seed(1, "a") != sample_seed(0, "a") and 0 <= sample_seed(2**31 - 1, "a") < 2**31


def test_warm_up_samples_are_outside_the_measured_suite():
    samples = load_workload(RUN.workload)
    warm = load_warmup(RUN.workload, samples)
    assert len(warm) == RUN.workload.warmup_requests > 0
    assert not {s.id for s in warm} & {s.id for s in samples}


def test_a_trial_hitting_the_cache_more_than_the_first_is_caught():
    first = CacheCounters(prefix_queries=900, prefix_hits=0, mm_queries=10, mm_hits=0)
    assert not warmer_than_first(first, first)
    assert warmer_than_first(CacheCounters(900, 600, 10, 0), first)  # prompts found cached
    assert warmer_than_first(CacheCounters(900, 0, 10, 10), first)  # image features found cached


def test_the_ratio_uses_suite_windows_not_per_request_shares(tmp_path):
    # Per-request shares leave out time with no request in flight: here they say 0.4, the suite windows 0.75.
    base = _baseline(tmp_path, _energy([100.0, 102.0, 98.0], per_request_j={"s0": 50.0}))
    gate = gate_against(RUN, config_dict(RUN), _quality(8), _energy([75.0, 76.5, 73.5], per_request_j={"s0": 20.0}),
                        base)
    assert gate["energy"]["ratio"] == pytest.approx(0.75)
    assert gate["energy"]["gap"] == "lower"


def test_a_one_item_run_is_gated_and_a_failing_gate_still_gives_a_result(tmp_path):
    base = _baseline(tmp_path, _energy([100.0]), quality=_quality(1, n=1))
    one = gate_against(RUN, config_dict(RUN), _quality(1, n=1), _energy([90.0]), base)
    assert one["energy"]["gap"] == "not_measured" and "error" not in one
    broken = gate_against(RUN, config_dict(RUN), aggregate("anls", [ItemScore("s0", "colour", 1.0, "scored")]),
                          _energy([90.0]), base)
    assert broken["verdict"] is None and "score both alike" in broken["error"]


def test_a_resumed_run_is_gated_on_quality_only(tmp_path):
    base = _baseline(tmp_path, _energy([100.0, 100.0]))
    gate = gate_against(RUN, config_dict(RUN), _quality(8), _energy([48.0], partial=True), base)
    assert gate["energy"] is None and gate["verdict"] == "pass"
    assert any("partial" in note for note in gate["notes"])


def test_partial_and_foreign_baselines_are_never_used(tmp_path):
    h200 = {"host": {"cpu_model": "AMD EPYC"}, "gpus": [{"name": "NVIDIA H200"}]}
    _baseline(tmp_path, _energy([100.0]), prov=h200, run_id="on-h200")
    ours = _energy([90.0])
    assert find_baseline(tmp_path, "bf16", config_dict(RUN), CPU, ours) is None
    _baseline(tmp_path, _energy([100.0], partial=True), run_id="resumed")
    assert find_baseline(tmp_path, "bf16", config_dict(RUN), CPU, ours) is None
    _baseline(tmp_path, _energy([100.0]), run_id="same-cpu")
    assert find_baseline(tmp_path, "bf16", config_dict(RUN), CPU, ours).run_id == "same-cpu"


@pytest.mark.parametrize(("change", "reason"), [
    ({"provenance": {"host": {"cpu_model": "other"}, "gpus": None}}, "other hardware"),
    ({"energy": {"meter": "rapl", "source": "measured"}}, "energy source differs"),
    ({"energy": {"meter": "rapl"}}, "meter differs"),
    ({"energy": {"measurement_version": MEASUREMENT_VERSION - 1}}, "measurement code differs"),
    ({"config": {"sampling": {"temperature": 0.0}}}, "sampling differ"),
])
def test_each_difference_makes_a_baseline_incomparable(tmp_path, change, reason):
    base = _baseline(tmp_path, _energy([100.0]))
    ours = _ours(_energy([90.0]))
    assert incomparable(ours, base) is None
    changed = {key: {**ours[key], **change.get(key, {})} for key in ours}
    assert reason in incomparable(changed, base)


def test_flat_row_ranks_on_the_mean_over_trials_and_says_partial():
    energy = _energy([100.0, 110.0], partial=False)
    energy["suite_j_sd"] = 7.07
    result = RunResult(run_id="r", variant="fp8", status="ok", started_at="", ended_at="", config={},
                       provenance=CPU, serve={}, energy=energy, quality={}, latency=None, throughput=None, counts=None)
    row = flat_row(result)
    assert row["suite_energy_j"] == pytest.approx(105.0) and row["trials"] == 2 and not row["energy_partial"]
    assert flat_row(dataclasses.replace(result, energy={**energy, "partial": True}))["energy_partial"]


def test_trial_server_resolves_per_platform_and_refuses_two_servers_that_cannot_coexist():
    from harness.errors import ConfigError
    from harness.preflight import check_session
    from harness.serve.capabilities import Platform, PlatformCheck

    def check(device: str, run) -> PlatformCheck:
        return PlatformCheck(Platform(device, gpu_name="NVIDIA H200" if device == "cuda" else None), run.serve, ())

    assert check_session(RUN, check("cpu", RUN), with_baseline=True) == "shared"
    assert check_session(RUN, check("cuda", RUN), with_baseline=True) == "fresh"  # auto on a GPU
    shared = compose(["+variant=fp8", "trial_server=shared"])
    with pytest.raises(ConfigError, match="trial_server=fresh"):
        check_session(shared, check("cuda", shared), with_baseline=True)  # two servers at 0.9 of the GPU each
    halves = compose(["+variant=fp8", "trial_server=shared", "serve.gpu_memory_utilization=0.4"])
    assert check_session(halves, check("cuda", halves), with_baseline=True) == "shared"
    fixed = compose(["+variant=fp8", "serve.port=8000"])
    with pytest.raises(ConfigError, match="serve.port=0"):
        check_session(fixed, check("cpu", fixed), with_baseline=True)
    assert check_session(fixed, check("cpu", fixed), with_baseline=False) == "shared"  # one server: fine
