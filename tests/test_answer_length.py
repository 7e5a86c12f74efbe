"""Answer length as a measured lever: output tokens by task and the decode share, in results and on the leaderboard."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from harness.config.schema import compose
from harness.energy.modeled import ModeledMeter
from harness.leaderboard.data import build_board
from harness.leaderboard.report import main
from harness.record.decode import ATTRIBUTION, decode_split
from harness.record.provenance import collect
from harness.record.result import (
    RunResult,
    append_row,
    config_dict,
    flat_row,
    load_result,
    new_run_dir,
    write_jsonl_atomic,
    write_result,
)
from harness.record.summary import print_summary
from harness.replay.client import RequestRecord
from harness.replay.stats import output_lengths, summarize_requests

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _record(rid: str, task: str, start: float, end: float, first: float | None, tokens: int = 2,
            limit: int | None = 64, **changes) -> RequestRecord:
    values = dict(id=rid, task=task, prompt_tokens=90, output_tokens=tokens,
                  ttft_ms=None if first is None else (first - start) * 1e3, latency_ms=(end - start) * 1e3,
                  itl_ms=(), output_text="red", finish_reason="stop", error=None, start_s=start, end_s=end,
                  max_tokens=limit, max_tokens_from="request" if limit else None)
    return RequestRecord(**{**values, **changes})


def _window(start: float, end: float, energy_j: float) -> dict:
    return {"name": "suite", "start_s": start, "end_s": end, "duration_s": end - start, "energy_j": energy_j,
            "source": "modeled"}


def test_sequential_requests_split_into_prefill_decode_and_idle_time() -> None:
    records = [_record("a", "colour", 0.0, 1.0, 0.2), _record("b", "colour", 1.5, 2.5, 1.7)]
    split = decode_split(records, _window(0.0, 3.0, 30.0))
    assert split["decode_s"] == pytest.approx(1.6) and split["prefill_s"] == pytest.approx(0.4)
    assert split["idle_s"] == pytest.approx(1.0)  # between the requests, and after the last one
    assert split["decode_share"] == pytest.approx(1.6 / 3)
    assert split["decode_j"] == pytest.approx(16.0) and split["rest_j"] == pytest.approx(14.0)
    assert split["attribution"] == ATTRIBUTION and "not a separate meter reading" in ATTRIBUTION


def test_concurrent_requests_share_each_instant() -> None:
    records = [_record("a", "colour", 0.0, 2.0, 0.5), _record("b", "colour", 0.0, 2.0, 1.0),
               _record("c", "colour", 0.0, 2.0, None, error="Timeout")]  # no token: all of its time is prefill
    split = decode_split(records, _window(0.0, 2.0, 10.0))
    assert split["decode_s"] == pytest.approx(0.5 / 3 + 2 * 1.0 / 3)
    assert split["decode_s"] + split["prefill_s"] + split["idle_s"] == pytest.approx(2.0)
    assert decode_split(records, None) is None


def test_the_first_token_is_the_servers_first_counted_token() -> None:
    """A token whose bytes decode to no text yet still ends the prefill: usage counts it, TTFT does not."""
    record = _record("a", "colour", 0.0, 1.0, 0.6, usage_ms=((200.0, 1), (600.0, 2)))
    assert decode_split([record], _window(0.0, 1.0, 1.0))["decode_s"] == pytest.approx(0.8)


def test_output_lengths_per_task_with_their_limits() -> None:
    records = [_record(str(i), task, 0, 1, 0.1, tokens=n, limit=limit)
               for i, (task, n, limit) in enumerate([("colour", 1, 16), ("colour", 3, 16), ("count", 16, 16),
                                                     ("count", 2, 16), ("count", 9, None)])]
    records.append(_record("x", "count", 0, 1, None, tokens=40, error="Timeout"))  # failed: not counted
    lengths = output_lengths(records)
    assert list(lengths) == ["all", "colour", "count"]
    assert lengths["colour"] == {"n": 2, "mean": 2.0, "median": 2.0, "p90": pytest.approx(2.8), "max": 3,
                                 "max_tokens_min": 16, "max_tokens_max": 16, "max_tokens_from": ["request"]}
    assert (lengths["all"]["n"], lengths["all"]["max"], lengths["count"]["median"]) == (5, 16, 9.0)


def _write_run(results: Path, overrides: list[str], started: datetime, tokens: list[int], limit: int,
               decode_share: float | None) -> str:
    """One run recorded with the harness's own writers: result.json, requests.jsonl, a runs.jsonl row."""
    run_cfg = compose(overrides)
    paths = new_run_dir(results, run_cfg.name, started)
    records = [_record(str(i), ("colour", "count")[i % 2], i, i + 1, i + 0.25, tokens=n, limit=limit)
               for i, n in enumerate(tokens)]
    write_jsonl_atomic(paths.requests, [asdict(r) for r in records])
    with ModeledMeter(hz=50) as meter:  # a real trace for the leaderboard's power plot
        time.sleep(0.05)
    meter.write_trace(paths.power_trace)
    latency, throughput, counts = summarize_requests(records, len(tokens))
    trials = [{"trial": k, "suite": _window(0, len(tokens), 10.0 * len(tokens)),
               "decode": None if decode_share is None else {"decode_share": decode_share}} for k in (1, 2)]
    result = RunResult(run_id=paths.root.name, variant=run_cfg.name, status="ok", started_at=started.isoformat(),
                       ended_at=(started + timedelta(seconds=30)).isoformat(), config=config_dict(run_cfg),
                       provenance=collect(), serve={}, latency=latency, throughput=throughput, counts=counts,
                       energy={"source": "modeled", "windows": [trials[0]["suite"]], "trials": trials},
                       quality={"metric": "exact", "overall": 1.0, "overall_micro": 1.0, "per_task": {}},
                       lengths=output_lengths(records))
    write_result(paths.root, result)
    append_row(results / "runs.jsonl", flat_row(result))
    return paths.root.name


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    _write_run(folder, ["+variant=bf16"], T0, [1, 2, 30, 40], 64, 0.5)
    _write_run(folder, ["+variant=bf16"], T0 + timedelta(minutes=1), [1, 2, 3, 4], 64, None)  # an older harness's
    _write_run(folder, ["+variant=bf16_max_new16"], T0 + timedelta(minutes=2), [1, 2, 16, 16], 16, 0.25)
    return folder


def test_result_json_and_runs_jsonl_carry_the_lengths_and_the_decode_share(results) -> None:
    rows = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    assert [(r["output_tokens_p50"], r["output_tokens_max"], r["decode_share"]) for r in rows] == [
        (16.0, 40, 0.5), (2.5, 4, None), (9.0, 16, 0.25)]
    result = load_result(results / "runs" / rows[2]["run_id"])
    assert result.lengths["count"]["max_tokens_max"] == 16 and result.energy.decode_share() == 0.25
    console = Console(record=True, width=200)
    print_summary(result, console=console)
    text = console.export_text()
    assert "Answer length (output tokens mean/p90/max): all 8.8/16/16; colour 8.5/14/16, count 9.0/15/16" in text
    assert "max_tokens 16-16 (set by request)" in text
    assert "Decode: 25% of suite time and energy (attributed by time" in text


def test_leaderboard_shows_answer_length_by_task_and_the_decode_share(results, tmp_path) -> None:
    board = build_board(results)
    table = board.table.set_index("variant")
    assert table.loc["bf16", "output_tokens_max"] == 40 and table.loc["bf16_max_new16", "output_tokens_p90"] == 16
    assert table.loc["bf16", "decode_share"] == 0.5  # runs recorded without it are left out of the mean
    lengths = board.lengths.set_index(["variant", "task"])
    assert lengths.loc[("bf16", "all"), "n"] == 8  # both runs' answers pooled
    assert lengths.loc[("bf16_max_new16", "count"), ["max", "max_tokens_max"]].tolist() == [16, 16]
    out = tmp_path / "board"
    assert main(["--results", str(results), "--out", str(out)]) == 0
    written = pd.read_csv(out / "lengths.csv")
    assert set(written["task"]) == {"all", "colour", "count"} and set(written["variant"]) == set(table.index)
    assert {"output_tokens_p90", "decode_share"} <= set(pd.read_csv(out / "leaderboard.csv").columns)
    markdown = (out / "leaderboard.md").read_text()
    assert "Answer length in G1: output tokens per answer, by task" in markdown
    assert "an attribution by time, not a separate meter reading" in markdown


def test_runs_recorded_before_requests_could_omit_sampling_compare_as_explicit() -> None:
    from harness.record.result import same_setup

    now = config_dict(compose([]))
    older = {**now, "sampling": {k: v for k, v in now["sampling"].items() if k != "send"}}
    assert same_setup(now, older)
    assert not same_setup(config_dict(compose(["sampling.send=messages"])), older)


def test_a_group_of_messages_only_runs_says_so() -> None:
    from harness.leaderboard.data import describe_setup

    for overrides, words in ((["sampling.send=messages"], "requests carry messages only"),
                             ([], "sampling T=1.0 top_p=0.95 top_k=64 max_tokens=64")):
        config = config_dict(compose(overrides))
        key = json.dumps({**{k: config[k] for k in ("model", "workload", "sampling")}, "hardware": "CPU x",
                          "energy_source": "modeled"})
        assert words in describe_setup(key)
