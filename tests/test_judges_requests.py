"""The judges' requests on the real server: what messages-only requests are decoded with, and the length
levers (a brevity chat template, a max_new_tokens default) run end to end, gated and on the leaderboard."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml

from harness.config.schema import compose
from harness.leaderboard.data import build_board
from harness.replay.client import replay
from harness.replay.workloads.base import load_samples
from harness.serve.vllm import VllmServer
from tests.real_runs import run_harness

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def samples():
    return load_samples(seed=0, split="test", limit=6)


def _run(*overrides: str):
    return compose(["serve.startup_timeout_s=300", *overrides])


def _replay(server, samples, run, **sampling):
    workload = dataclasses.replace(run.workload, warmup_requests=0)
    return replay(server.target, samples, workload, dataclasses.replace(run.sampling, **sampling),
                  chat_template_kwargs=run.serve.chat_template_kwargs, show_progress=False).records


def test_messages_mode_takes_the_limit_from_the_checkpoints_generation_config(tiny_model_dir, tmp_path, samples):
    """A checkpoint whose generation_config.json sets max_new_tokens 16: 16 is every judged answer's limit,
    while a request that sends max_tokens keeps its own (the file's value is only a default)."""
    folder = tmp_path / "max16"
    shutil.copytree(tiny_model_dir, folder)
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "max_new_tokens": 16}))
    run = _run()
    with VllmServer(folder, run.serve, tmp_path / "run", served_model_name="m", dtype=run.model.dtype) as server:
        judged = _replay(server, samples, run, send="messages")
        sized = _replay(server, samples, run, max_tokens=24, ignore_eos=True)
    assert all(r.error is None for r in judged + sized)
    assert {(r.max_tokens, r.max_tokens_from) for r in judged} == {(16, "generation_config")}
    assert all(r.output_tokens <= 16 and r.seed is None for r in judged)
    assert {(r.max_tokens, r.max_tokens_from) for r in sized} == {(24, "request")}
    assert {r.output_tokens for r in sized} == {24}  # ignore_eos: the recorded limit is the one the server used


def test_an_override_max_new_tokens_caps_even_requests_that_send_max_tokens(tiny_model_dir, tmp_path, samples):
    run = _run("+serve.generation_config.max_new_tokens=3")
    with VllmServer(tiny_model_dir, run.serve, tmp_path, served_model_name="m", dtype=run.model.dtype) as server:
        records = _replay(server, samples, run, max_tokens=24, ignore_eos=True)
    assert all(r.error is None for r in records)
    assert {(r.output_tokens, r.max_tokens, r.max_tokens_from) for r in records} == {
        (3, 3, "override_generation_config")}
    assert yaml.safe_load((tmp_path / "vllm_config.yaml").read_text())["override-generation-config"] == {
        "max_new_tokens": 3}


@pytest.fixture(scope="module")
def lever_runs(tmp_path_factory) -> Path:
    """The two length-lever variants, each with its bf16 baseline in the same session."""
    results = tmp_path_factory.mktemp("levers")
    run_harness("+variant=bf16_brevity", results=results)
    run_harness("+variant=bf16_max_new16", "sampling.send=messages", results=results)
    return results


def _newest(results: Path, variant: str) -> tuple[Path, dict]:
    rows = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    run_id = [r["run_id"] for r in rows if r["variant"] == variant][-1]
    run_dir = results / "runs" / run_id
    return run_dir, json.loads((run_dir / "result.json").read_text())


@pytest.mark.parametrize(("variant", "key"), [("bf16_brevity", "chat-template"),
                                              ("bf16_max_new16", "override-generation-config")])
def test_length_levers_run_end_to_end_gated_like_any_variant(lever_runs, variant, key):
    run_dir, result = _newest(lever_runs, variant)
    assert result["status"] == "ok" and result["gate"]["verdict"] in ("pass", "fail", "uncertain")
    assert result["gate"]["energy"] is not None  # compared with its own session's bf16 trials
    assert key in yaml.safe_load((run_dir / "vllm_config.yaml").read_text())
    assert result["serve"]["changes_from_base"]  # flagged, with what it changes
    lengths = result["lengths"]
    assert lengths["all"]["n"] > 0 and len(lengths) > 2  # "all" and each task of the suite
    for trial in result["energy"]["trials"]:
        assert 0 < trial["decode"]["decode_share"] < 1 and "not a separate meter reading" in trial["decode"][
            "attribution"]


def test_messages_mode_records_the_servers_limit_on_every_request(lever_runs):
    run_dir, result = _newest(lever_runs, "bf16_max_new16")
    assert result["config"]["sampling"]["send"] == "messages"
    rows = [json.loads(line) for line in (run_dir / "requests.jsonl").read_text().splitlines()]
    assert {(r["max_tokens"], r["max_tokens_from"]) for r in rows} == {(16, "override_generation_config")}
    from harness.serve.generation import generation_config
    from harness.tiny import DEFAULT_MODEL_DIR

    # what the tiny checkpoint's generation_config.json sets, else vLLM's default (0: off)
    assert {r["sampling"]["top_k"] for r in rows} == {generation_config(DEFAULT_MODEL_DIR).get("top_k", 0)}
    _, baseline = _newest(lever_runs, "bf16")
    assert baseline["config"]["sampling"]["send"] == "messages"  # its baseline was sent the same requests


def test_length_levers_appear_on_the_leaderboard_with_their_lengths(lever_runs):
    board = build_board(lever_runs)
    assert {"bf16_brevity", "bf16_max_new16"} <= set(board.table["variant"])
    assert {"bf16_brevity", "bf16_max_new16"} <= set(board.lengths["variant"])
    assert board.table["decode_share"].notna().all()
