"""Scoring of the generations a run spent its energy on, per item and per task family."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.score.metrics import CORPUS_METRICS, ITEM_METRICS, METRICS, check_metric, normalize

# Why an item got the score it got. Anything but "scored" is a zero by rule, so a variant
# cannot pass the gate by answering less (empty, cut off at max_tokens, failed, or absent).
OUTCOMES = ("scored", "empty", "truncated", "error", "missing")


class SampleLike(Protocol):
    id: str
    task: str
    reference: str


class RecordLike(Protocol):
    id: str
    output_text: str
    finish_reason: str | None
    error: str | None


@dataclass(frozen=True)
class ItemScore:
    """The score of one suite item (0..1) and why it got it (one of OUTCOMES)."""

    id: str
    task: str
    score: float
    outcome: str


@dataclass(frozen=True)
class QualityReport:
    """Scores of one run's generations.

    Attributes:
        metric: name of the item metric (a key of METRICS).
        items: one ItemScore per suite sample, in suite order.
        per_task: task family -> mean item score over that family's items.
        overall: mean of `per_task` over families (macro; every family weighs the same).
        overall_micro: mean item score over all items (families weighed by their size).
        counts: "items", "extra_records" (records with no sample, ignored) and one count
            per outcome in OUTCOMES.
    """

    metric: str
    items: tuple[ItemScore, ...]
    per_task: Mapping[str, float]
    overall: float
    overall_micro: float
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "overall": self.overall,
            "overall_micro": self.overall_micro,
            "per_task": dict(self.per_task),
            "counts": dict(self.counts),
            "items": [asdict(item) for item in self.items],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QualityReport:
        """Rebuilds a report written by `to_dict` (e.g. the baseline's, from result.json)."""
        items = tuple(ItemScore(**item) for item in data["items"])
        return cls(
            metric=data["metric"],
            items=items,
            per_task=dict(data["per_task"]),
            overall=float(data["overall"]),
            overall_micro=float(data["overall_micro"]),
            counts=dict(data.get("counts", {})),
        )


def outcome_of(record: RecordLike | None, text: str | None = None) -> str:
    """Why an answer scores what it does: one of OUTCOMES ("scored" when it is complete).

    ``text`` is the answer as scored when it differs from ``record.output_text`` (lm-eval's
    filtered response); by default the record's own text.
    """
    if record is None:
        return "missing"
    if record.error is not None:
        return "error"
    if record.finish_reason == "length":
        return "truncated"
    if not normalize((record.output_text if text is None else text) or ""):
        return "empty"
    return "scored"


def score_item(sample: SampleLike, record: RecordLike | None, metric: str = "exact") -> ItemScore:
    """Scores one sample's generation; anything but a complete answer scores 0."""
    outcome = outcome_of(record)
    value = METRICS[metric](record.output_text, sample.reference) if outcome == "scored" else 0.0
    return ItemScore(sample.id, sample.task, float(value), outcome)


def _index_records(records: Iterable[RecordLike]) -> dict[str, RecordLike]:
    by_id: dict[str, RecordLike] = {}
    for record in records:
        if record.id in by_id:
            raise ValueError(f"two replay records share id {record.id!r}; "
                             "drop warm-up or repeated records before scoring")
        by_id[record.id] = record
    return by_id


def aggregate(metric: str, items: Sequence[ItemScore], extra_records: int = 0) -> QualityReport:
    """Builds a QualityReport (per-task, macro and micro means, counts) from item scores."""
    if not items:
        raise ValueError("no items to score: the suite is empty; check workload.limit")
    by_task: dict[str, list[float]] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item.score)
    per_task = {task: sum(scores) / len(scores) for task, scores in sorted(by_task.items())}
    counts = {"items": len(items), "extra_records": extra_records}
    counts.update({outcome: sum(item.outcome == outcome for item in items) for outcome in OUTCOMES})
    return QualityReport(
        metric=metric,
        items=tuple(items),
        per_task=per_task,
        overall=sum(per_task.values()) / len(per_task),
        overall_micro=sum(item.score for item in items) / len(items),
        counts=counts,
    )


def score(samples: Sequence[SampleLike], records: Iterable[RecordLike], metric: str = "exact") -> QualityReport:
    """Scores a run's replay records against the suite samples they answered.

    Args:
        samples: the suite, each with .id, .task and .reference; ids must be unique.
        records: replay records with .id, .output_text, .finish_reason and .error. A sample
            with no record scores 0 ("missing"); a record with no sample is ignored and
            counted as "extra_records".
        metric: "exact", "relaxed" (ChartQA) or "anls" (DocVQA), each best over a sample's
            ``references``; or one of harness.score.metrics.METRIC_NAMES ("vqa", "choice", "cider").

    Raises:
        ValueError: unknown metric, duplicate ids, or an empty suite.
    """
    check_metric(metric)
    sample_ids = [sample.id for sample in samples]
    if len(set(sample_ids)) != len(sample_ids):
        raise ValueError("suite samples share ids; each sample needs a unique id to be matched to its record")
    by_id = _index_records(records)
    items = score_items(samples, [by_id.get(sample.id) for sample in samples], metric)
    extra = len(set(by_id) - set(sample_ids))
    return aggregate(metric, items, extra_records=extra)


def references_of(sample: Any) -> tuple[str, ...]:
    """Every accepted answer of a sample (``.references``, else ``(.reference,)``)."""
    return tuple(getattr(sample, "references", ()) or (sample.reference,))


def score_items(samples: Sequence[Any], records: Sequence[Any], metric: str) -> list[ItemScore]:
    """One ItemScore per sample; ``records[i]`` answers ``samples[i]`` (None if it is missing).

    Items whose answer is not complete (see OUTCOMES) score 0. A corpus
    metric still sees every item's references (they set its n-gram weights), with an
    empty prediction for the incomplete ones.
    """
    check_metric(metric)
    outcomes = [outcome_of(r) for r in records]
    texts = [r.output_text if o == "scored" else "" for r, o in zip(records, outcomes)]
    refs = [references_of(s) for s in samples]
    if metric in CORPUS_METRICS:
        values = CORPUS_METRICS[metric](texts, refs)
    else:
        values = [ITEM_METRICS[metric](t, r) if o == "scored" else 0.0 for t, r, o in zip(texts, refs, outcomes)]
    return [ItemScore(s.id, s.task, float(v) if o == "scored" else 0.0, o)
            for s, v, o in zip(samples, values, outcomes)]
