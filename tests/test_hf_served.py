"""Each real task's local copy replayed against the real tiny server, then scored with its metric."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config.schema import compose
from harness.replay.client import replay
from harness.replay.workloads import load_workload
from harness.score.quality import score
from tests.hf_tasks import TASKS

LIMIT = 4


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf-served")
    return {name: build(root / name)[0] for name, build in TASKS.items()}


def _rotated(samples):
    """Each sample's reference given to the next sample: answers that belong to other items."""
    return [s.reference for s in samples[1:] + samples[:1]]


@pytest.mark.server
@pytest.mark.parametrize("task", sorted(TASKS))
def test_task_is_replayed_and_scored_against_its_references(served_tiny, local, task) -> None:
    run = compose([f"workload={task}", f"workload.path={local[task]}", f"workload.limit={LIMIT}",
                   "workload.warmup_requests=0", "sampling.max_tokens=16"])
    samples = load_workload(run.workload)
    result = replay(served_tiny.target, samples, run.workload, run.sampling,
                    chat_template_kwargs=run.serve.chat_template_kwargs, show_progress=False)
    records = result.records
    assert [r.id for r in records] == [s.id for s in samples]
    assert all(r.error is None and r.output_tokens > 0 and r.prompt_tokens > 0 for r in records)

    report = score(samples, records, metric=run.workload.metric)
    assert report.metric == run.workload.metric and [i.id for i in report.items] == [s.id for s in samples]
    assert report.counts["items"] == len(samples) and report.counts["error"] == 0

    # The same records answering with each sample's own first reference, then with another
    # sample's: scoring must pair every answer with its own sample's references.
    own = score(samples, [dataclasses.replace(r, output_text=s.reference, finish_reason="stop")
                          for r, s in zip(records, samples)], metric=run.workload.metric)
    other = score(samples, [dataclasses.replace(r, output_text=ref, finish_reason="stop")
                            for r, ref in zip(records, _rotated(samples))], metric=run.workload.metric)
    if run.workload.metric == "cider":
        assert all(i.score > 0 for i in own.items) and own.overall > other.overall
    else:
        assert [i.score for i in own.items] == [1.0] * len(samples)
        assert other.overall_micro < 0.5
