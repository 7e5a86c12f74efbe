"""Scoring of the generations a run spent its energy on, per item and per task family."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

# Characters stripped from both ends of an answer. "-", "+", "%", "$" and "#" are kept:
# they carry meaning at the edge of an answer ("-5", "50%", "$3").
EDGE_PUNCTUATION = ".,;:!?\"'`()[]{}*\u201c\u201d\u2018\u2019"
_WHITESPACE = re.compile(r"\s+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")

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


def normalize(text: str) -> str:
    """Puts an answer in the one form both sides are compared in.

    Steps, in order: lowercase; collapse every run of whitespace (spaces, tabs, newlines)
    into one space; strip whitespace and the characters in ``EDGE_PUNCTUATION`` from both
    ends, repeatedly, so "  **Red.**\\n" becomes "red" (a trailing period is one of them).
    The answer is taken as written: no synonyms, no fuzzy matching, no extraction of an
    answer from a longer sentence.
    """
    collapsed = _WHITESPACE.sub(" ", text.lower())
    return collapsed.strip(EDGE_PUNCTUATION + " ")


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize(prediction) == normalize(reference))


def _to_number(text: str) -> float | None:
    """The number a normalised answer states ("1,250", "12.5%", "-3"), or None."""
    cleaned = _THOUSANDS.sub("", text)
    percent = cleaned.endswith("%")
    try:
        value = float(cleaned[:-1] if percent else cleaned)
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    return value / 100.0 if percent else value


def relaxed_match(prediction: str, reference: str, tolerance: float = 0.05) -> float:
    """ChartQA's relaxed accuracy: numbers within `tolerance` relative error, else exact.

    When both answers are numbers, the prediction scores 1.0 if
    |prediction - reference| <= tolerance * |reference| (a zero reference needs an exact
    zero). Otherwise the answers are compared with `exact_match`.
    """
    pred, ref = normalize(prediction), normalize(reference)
    pred_number, ref_number = _to_number(pred), _to_number(ref)
    if pred_number is None or ref_number is None:
        return float(pred == ref)
    return float(abs(pred_number - ref_number) <= tolerance * abs(ref_number))


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions each cost 1), two-row DP."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def anls(prediction: str, reference: str, threshold: float = 0.5) -> float:
    """Average Normalised Levenshtein Similarity for one item (DocVQA's metric).

    NL = levenshtein(p, r) / max(len(p), len(r)) on normalised strings; the score is
    1 - NL when NL < `threshold`, else 0.0 (a far-off answer earns nothing).
    """
    pred, ref = normalize(prediction), normalize(reference)
    longest = max(len(pred), len(ref))
    if longest == 0:
        return 1.0
    distance = levenshtein(pred, ref) / longest
    return 1.0 - distance if distance < threshold else 0.0


METRICS: dict[str, Callable[[str, str], float]] = {
    "exact": exact_match,
    "relaxed": relaxed_match,
    "anls": anls,
}


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
            raise ValueError(f"two replay records share id {record.id!r}; drop warm-up or repeated records before scoring")
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
            ``references``; or one of harness.metrics.METRIC_NAMES ("vqa", "choice", "cider").

    Raises:
        ValueError: unknown metric, duplicate ids, or an empty suite.
    """
    from harness.metrics import check_metric, score_items  # lazy: harness.metrics imports this module

    check_metric(metric)
    sample_ids = [sample.id for sample in samples]
    if len(set(sample_ids)) != len(sample_ids):
        raise ValueError("suite samples share ids; each sample needs a unique id to be matched to its record")
    by_id = _index_records(records)
    items = score_items(samples, [by_id.get(sample.id) for sample in samples], metric)
    extra = len(set(by_id) - set(sample_ids))
    return aggregate(metric, items, extra_records=extra)
