"""The end-of-run summary shows each figure with its source, the gate and the fallbacks."""

from __future__ import annotations

from rich.console import Console
from test_results import make_result

from harness.record.summary import print_summary
from harness.score.energy import compare_trials
from harness.score.gate import gate
from harness.score.quality import ItemScore, aggregate


def render(result, run_dir=None) -> str:
    console = Console(record=True, width=160, force_terminal=False)
    print_summary(result, run_dir=run_dir, console=console)
    return console.export_text()


def test_modeled_energy_is_labelled_modeled_on_every_row():
    windows = [
        {"name": "idle", "duration_s": 10.0, "energy_j": 300.0, "avg_power_w": 30.0, "source": "modeled", "flags": []},
        {"name": "suite", "duration_s": 40.0, "energy_j": 2400.0, "avg_power_w": 60.0, "source": "modeled",
         "flags": ["shorter_than_resolution"]},
    ]
    text = render(make_result(energy={"source": "modeled", "windows": windows}))
    assert "Energy (source: modeled)" in text
    rows = [line for line in text.splitlines() if line.strip().startswith(("│ idle", "│ suite", "idle", "suite"))]
    assert len(rows) == 2 and all("modeled" in row for row in rows)
    assert "measured" not in text
    assert "2400.0" in text and "60.0" in text
    assert "[shorter_than_resolution]" in text  # flags are shown, not eaten as markup


def test_summary_shows_quality_with_chance_the_gate_and_the_run_dir(tmp_path):
    items = [ItemScore(f"i{i}", "colour", float(i % 10 < 9), "scored") for i in range(40)]
    baseline = aggregate("exact", items)
    energy = compare_trials([90.0, 95.0], [150.0, 160.0], variant_source="measured", baseline_source="measured")
    verdict = gate(baseline, baseline, seed=0, energy=energy).to_dict()
    serve = {"fallbacks": [{"setting": "kv_cache_dtype", "requested": "fp8", "effective": "auto",
                            "reason": "FP8 KV cache on CPU needs AVX-512"}]}
    quality = baseline.to_dict() | {"counts": {"truncated": 2, "missing": 1}}
    text = render(make_result(quality=quality, gate=verdict, serve=serve), run_dir=tmp_path)
    assert "colour" in text and "0.900" in text
    assert "0.167" in text  # chance level of the six-colour family
    assert "Gate: PASS" in text and "quality ratio 1.000 [1.000, 1.000]" in text
    ratio = (90 / 150 * 95 / 160) ** 0.5
    assert f"energy ratio {ratio:.3f} (measured, 2 trials), 95% interval over trials" in text.replace("\n", " ")
    assert "Scored 0 by rule: 2 truncated, 1 missing" in text
    assert "Fallback: kv_cache_dtype fp8 -> auto" in text
    assert "ttft_ms p50/p90/p99 20.0/30.0/45.0" in text and "120.5 output tok/s" in text
    assert str(tmp_path) in text.replace("\n", "")


def test_summary_of_a_failed_run_without_baseline():
    failed = make_result(status="failed", error="server exited [code 1]", gate=None, quality={}, latency=None,
                         throughput=None, counts=None, energy={"source": "measured", "windows": []})
    text = render(failed)
    assert "failed" in text and "server exited [code 1]" in text
    assert "Gate: not run" in text


def test_an_infinite_ratio_survives_result_json_and_the_summary(tmp_path):
    from harness.record.result import load_result, write_result

    baseline = aggregate("exact", [ItemScore(f"i{i}", "corner", 0.0, "scored") for i in range(10)])
    variant = aggregate("exact", [ItemScore(f"i{i}", "corner", float(i < 3), "scored") for i in range(10)])
    verdict = gate(variant, baseline, rule="every_task", seed=0).to_dict()
    write_result(tmp_path, make_result(gate=verdict))
    text = render(load_result(tmp_path))
    assert "Gate: PASS" in text and "quality ratio - [" in text  # +inf is null in JSON, shown as "-"


def test_summary_says_trials_spread_and_why_there_is_no_steady_window():
    trials = [{"trial": k, "suite": {"energy_j": j}, "steady_j_per_output_token": None,
               "steady_note": "no steady window: the arrivals never kept 4 requests in flight for 30 s"}
              for k, j in ((1, 100.0), (2, 110.0))]
    energy = {"source": "measured", "windows": [], "trials": trials, "suite_j_mean": 105.0, "suite_j_sd": 7.07}
    text = render(make_result(energy=energy)).replace("\n", " ")
    assert "Trials: 2, mean suite energy 105.0 J (measured), run-to-run sd 6.7%" in text
    assert "never kept 4 requests in flight for 30 s" in text
    steady = [{**t, "steady_j_per_output_token": 0.5, "steady_note": None} for t in trials]
    assert "steady state 0.5 J per output token" in render(make_result(energy={**energy, "trials": steady}))
