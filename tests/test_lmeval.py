"""lm-eval as the quality engine: real lm-eval, real tiny-model vLLM server, real HTTP, no hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

LIMIT = 8  # two items per family of the synthetic suite


def _meter(server):
    from harness.energy import make_meter

    return make_meter("modeled", hz=10.0, pid=server.pgid, busy_core_w=20.0, idle_w=20.0)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def synthetic_run(served_tiny, tmp_path_factory):
    """The harness_synthetic task through lm-eval against the shared tiny server."""
    from harness.config.schema import compose
    from harness.score.lmeval.engine import evaluate

    run_cfg = compose(["quality=lm_eval", f"workload.limit={LIMIT}"])
    run_dir = tmp_path_factory.mktemp("lm-eval-synthetic")
    with _meter(served_tiny) as meter:
        lm_run = evaluate(run_cfg, served_tiny.target, meter, run_dir)
    return run_cfg, run_dir, lm_run


@pytest.mark.server
def test_synthetic_task_scores_the_suite_items_and_keeps_every_answer(synthetic_run, served_tiny):
    from harness.replay.workloads.base import load_samples

    run_cfg, run_dir, lm_run = synthetic_run
    suite = load_samples(run_cfg.workload.seed, "test", LIMIT)
    assert [i.id for i in lm_run.report.items] == [s.id for s in suite]  # same items as the replay
    assert [i.task for i in lm_run.report.items] == [s.task for s in suite]
    assert lm_run.report.overall_micro > 0.5  # the tiny model answers this suite almost always right
    rows = _rows(run_dir / "lm_eval_samples.jsonl")
    assert len(rows) == LIMIT and all(r["response"] and r["output_tokens"] > 0 for r in rows)
    assert all(r["finish_reason"] == "stop" and r["error"] is None for r in rows)
    assert served_tiny.target.api_key not in (run_dir / "lm_eval_samples.jsonl").read_text()


@pytest.mark.server
def test_lm_eval_score_equals_a_harness_rescore_of_the_same_answers(synthetic_run):
    from harness.replay.client import RequestRecord
    from harness.replay.workloads.base import load_samples
    from harness.score.quality import score

    run_cfg, run_dir, lm_run = synthetic_run
    records = [RequestRecord(id=r["id"], task=r["item_task"], prompt_tokens=r["prompt_tokens"],
                             output_tokens=r["output_tokens"], ttft_ms=None, latency_ms=0.0, itl_ms=(),
                             output_text=r["response"], finish_reason=r["finish_reason"], error=r["error"],
                             start_s=r["start_s"], end_s=r["end_s"])
               for r in _rows(run_dir / "lm_eval_samples.jsonl")]
    rescored = score(load_samples(run_cfg.workload.seed, "test", LIMIT), records)
    assert [i.score for i in rescored.items] == [i.score for i in lm_run.report.items]
    assert lm_run.info["reported"]["harness_synthetic"]["exact_match,none"] == pytest.approx(rescored.overall_micro)


@pytest.mark.server
def test_lm_eval_window_covers_its_requests_and_counts_server_tokens(synthetic_run):
    _, run_dir, lm_run = synthetic_run
    rows = _rows(run_dir / "lm_eval_samples.jsonl")
    window = lm_run.window
    assert window.name == "lm_eval" and window.source == "modeled" and window.energy_j > 0
    assert window.start_s == min(r["start_s"] for r in rows) and window.end_s == max(r["end_s"] for r in rows)
    assert lm_run.info["output_tokens"] == sum(r["output_tokens"] for r in rows)
    assert lm_run.info["j_per_output_token"] == pytest.approx(window.energy_j / lm_run.info["output_tokens"])
    assert lm_run.info["gen_kwargs"] == {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 64}


@pytest.mark.server
def test_requests_carry_the_image(served_tiny):
    """The same document with and without its image: the image adds its soft tokens to the prompt."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.api_models import JsonChatStr

    from harness.replay.workloads.base import load_samples
    from harness.score.lmeval.model import RecordingChatModel

    sample = load_samples(0, "test", 1)[0]
    target = served_tiny.target
    model = RecordingChatModel(base_url=f"{target.base_url}/chat/completions", model=target.model_name,
                               api_key=target.api_key, seed=0, timeout_s=120)
    chat = JsonChatStr(json.dumps([{"role": "user", "content": sample.prompt}]))
    kwargs = {"max_gen_toks": 4, "temperature": 0.0}
    with_image = Instance("generate_until", {}, (chat, kwargs, {"visual": [sample.image]}), 0, ("t", 0, 1))
    text_only = Instance("generate_until", {}, (chat, kwargs), 1, ("t", 1, 1))
    answers = model.generate_until([with_image, text_only], disable_tqdm=True)
    assert all(isinstance(a, str) for a in answers)
    image_req, text_req = model.served
    assert image_req.error is None and text_req.error is None
    assert image_req.prompt_tokens - text_req.prompt_tokens >= 60  # 64 soft tokens at max_soft_tokens 70


@pytest.mark.server
def test_builtin_chartqa_task_reads_a_local_copy_of_its_dataset(served_tiny, tmp_path):
    """lm-eval's own chartqa YAML with dataset_path pointed at a local hub-format folder."""
    from harness.config.schema import compose
    from harness.score.lmeval.engine import evaluate
    from tests.hf_tasks import CHARTQA_ROWS, chartqa

    root, _ = chartqa(tmp_path / "ChartQA")
    run_cfg = compose(["quality=lm_eval", "quality.lm_eval.tasks=[chartqa]", "quality.lm_eval.limit=3",
                       "quality.lm_eval.max_gen_toks=8", f"+quality.lm_eval.task_overrides.chartqa.dataset_path={root}",
                       "+quality.lm_eval.metrics.chartqa=relaxed_accuracy"])
    with _meter(served_tiny) as meter:
        lm_run = evaluate(run_cfg, served_tiny.target, meter, tmp_path / "run")
    rows = _rows(tmp_path / "run" / "lm_eval_samples.jsonl")
    assert [r["target"] for r in rows] == [r["label"][0] for r in CHARTQA_ROWS[:3]]
    assert all(r["error"] is None and r["output_tokens"] > 0 and r["metric"] == "relaxed_accuracy" for r in rows)
    assert [i.id for i in lm_run.report.items] == ["chartqa/0", "chartqa/1", "chartqa/2"]
    assert lm_run.info["score_keys"] == {"chartqa": "relaxed_accuracy,none"}
    assert 0.0 <= lm_run.report.overall <= 1.0


def test_preflight_refuses_a_loglikelihood_task_in_one_sentence():
    from harness.config.schema import compose
    from harness.score.lmeval.engine import check_engine
    from harness.score.lmeval.tasks import LmEvalTaskError

    run_cfg = compose(["quality=lm_eval", "quality.lm_eval.tasks=[gsm8k,arc_challenge]"])
    with pytest.raises(LmEvalTaskError, match=r"arc_challenge .*log-likelihood.*chat-completions") as err:
        check_engine(run_cfg)
    assert "\n" not in str(err.value)


def test_preflight_refuses_settings_for_a_task_that_is_not_run():
    from harness.config.schema import compose
    from harness.score.lmeval.engine import check_engine
    from harness.score.lmeval.tasks import LmEvalTaskError

    run_cfg = compose(["quality=lm_eval", "+quality.lm_eval.metrics.chartqa=relaxed_accuracy"])
    with pytest.raises(LmEvalTaskError, match="chartqa"):
        check_engine(run_cfg)


def test_runs_scored_by_different_engines_or_tasks_are_never_gated_together():
    from harness.config.schema import compose
    from harness.record.result import config_dict
    from harness.score.lmeval.settings import quality_source

    def source(*overrides):
        return quality_source(config_dict(compose(list(overrides))))

    assert source() != source("quality=lm_eval")
    assert source("quality=lm_eval") != source("quality=lm_eval", "quality.lm_eval.tasks=[chartqa]")
    assert source("quality=lm_eval") == source("quality=lm_eval", "quality.lm_eval.request_timeout_s=5")
    assert source() == ("harness", None) == quality_source({"model": {}})  # results from before engines


def test_preflight_refuses_a_local_dataset_path_that_does_not_exist(tmp_path):
    from harness.config.schema import compose
    from harness.score.lmeval.engine import check_engine
    from harness.score.lmeval.tasks import LmEvalTaskError

    missing = tmp_path / "ChartQA"
    run_cfg = compose(["quality=lm_eval", "quality.lm_eval.tasks=[chartqa]",
                       f"+quality.lm_eval.task_overrides.chartqa.dataset_path={missing}"])
    with pytest.raises(LmEvalTaskError, match="does not exist"):
        check_engine(run_cfg)


def test_requests_that_reach_no_server_are_errors_that_score_zero(tmp_path):
    """A closed port: every request fails over real HTTP, each item is an "error" worth 0."""
    import os
    import socket

    from harness.config.schema import compose
    from harness.energy import make_meter
    from harness.replay.watchdog import error_rate_failure
    from harness.score.lmeval.engine import evaluate
    from harness.serve.vllm import ServerTarget

    with socket.socket() as sock:  # a port nothing listens on once this socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run_cfg = compose(["quality=lm_eval", "workload.limit=4", "quality.lm_eval.request_timeout_s=5"])
    target = ServerTarget(f"http://127.0.0.1:{port}/v1", "key", "tiny")
    with make_meter("modeled", hz=10.0, pid=os.getpid(), busy_core_w=20.0, idle_w=20.0) as meter:
        lm_run = evaluate(run_cfg, target, meter, tmp_path)
    assert lm_run.report.counts["error"] == 4 and lm_run.report.overall == 0.0
    assert lm_run.info["errors"] == 4 and lm_run.info["output_tokens"] == 0
    assert error_rate_failure(lm_run.served, run_cfg.workload.max_error_rate) is not None
