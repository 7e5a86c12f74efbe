"""Scoring the real suite samples with the real replay record type."""

from __future__ import annotations

import pytest

from harness.replay.client import RequestRecord
from harness.replay.workloads.base import load_samples
from harness.replay.workloads.synthetic import FAMILIES
from harness.score.quality import score


def record(sample, text: str, finish_reason: str = "stop", error: str | None = None) -> RequestRecord:
    return RequestRecord(
        id=sample.id, task=sample.task, prompt_tokens=86, output_tokens=2, ttft_ms=12.0, latency_ms=20.0,
        itl_ms=(8.0,), output_text=text, finish_reason=finish_reason, error=error, start_s=0.0, end_s=0.02,
    )


def test_answers_as_a_model_writes_them_score_per_family():
    samples = load_samples(seed=0, split="test", limit=16)
    # A model that answers in its own casing and punctuation, right on every item.
    right = [record(s, f" {s.reference.capitalize()}.\n") for s in samples]
    report = score(samples, right)
    assert set(report.per_task) == set(FAMILIES)
    assert report.overall == 1.0
    # One that always gives each family's first answer scores its share of those items.
    fixed = [record(s, FAMILIES[s.task].answers[0]) for s in samples]
    fixed_report = score(samples, fixed)
    for task, accuracy in fixed_report.per_task.items():
        items = [s for s in samples if s.task == task]
        expected = sum(s.reference == FAMILIES[task].answers[0] for s in items) / len(items)
        assert accuracy == pytest.approx(expected)


def test_a_truncated_right_answer_scores_zero_on_the_real_suite():
    samples = load_samples(seed=0, split="test", limit=4)
    records = [record(s, s.reference, finish_reason="length") for s in samples]
    report = score(samples, records)
    assert report.overall == 0.0 and report.counts["truncated"] == 4
