"""Scoring: normalisation, the three metrics, and zeros for answers that are not answers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.score.metrics import anls, exact_match, levenshtein, normalize, relaxed_match
from harness.score.quality import QualityReport, score


@dataclass(frozen=True)
class Sample:
    id: str
    task: str
    reference: str


@dataclass(frozen=True)
class Record:
    id: str
    output_text: str
    finish_reason: str | None = "stop"
    error: str | None = None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Red", "red"),
        ("  red.\n", "red"),
        ("**Red**", "red"),
        ('"Top-Left."', "top-left"),
        ("bottom \t\n right", "bottom right"),
        ("3.", "3"),
        ("3.5", "3.5"),
        ("-5", "-5"),
        ("50%", "50%"),
        ("It is red.", "it is red"),
        ("...", ""),
    ],
)
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_exact_match_takes_the_answer_as_written():
    assert exact_match("Blue.", "blue") == 1.0
    assert exact_match("The colour is blue.", "blue") == 0.0
    assert exact_match("blu", "blue") == 0.0


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("104", "100", 1.0),
        ("105", "100", 1.0),
        ("105.1", "100", 0.0),
        ("96", "100", 1.0),
        ("1,020", "1000", 1.0),
        ("12%", "0.12", 1.0),
        ("0", "0", 1.0),
        ("0.01", "0", 0.0),
        ("-10.4", "-10", 1.0),
        ("red", "red", 1.0),
        ("Red.", "red", 1.0),
        ("red", "100", 0.0),
    ],
)
def test_relaxed_match(prediction, reference, expected):
    assert relaxed_match(prediction, reference) == expected


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("same", "same") == 0


def test_anls_scores_near_misses_and_zeroes_far_ones():
    assert anls("Invoice", "invoice") == 1.0
    assert anls("invoise", "invoice") == pytest.approx(1 - 1 / 7)
    assert anls("abcdxyz", "abcdefg") == pytest.approx(1 - 3 / 7)
    assert anls("xyz", "abc") == 0.0


def test_anls_threshold_boundary():
    # 2 edits over 4 characters: NL = 0.5, not below the threshold, so 0.
    assert anls("abxy", "abcd") == 0.0
    # 1 edit over 4 characters: NL = 0.25.
    assert anls("abcx", "abcd") == pytest.approx(0.75)


SAMPLES = [
    Sample("a", "colour", "red"),
    Sample("b", "colour", "blue"),
    Sample("c", "corner", "top-left"),
    Sample("d", "corner", "bottom-right"),
    Sample("e", "corner", "top-right"),
]


def test_score_per_task_macro_and_micro():
    records = [
        Record("a", "Red."),
        Record("b", "green"),
        Record("c", "top-left"),
        Record("d", "bottom-right"),
        Record("e", "top-right"),
    ]
    report = score(SAMPLES, records)
    assert report.per_task == {"colour": 0.5, "corner": 1.0}
    assert report.overall == pytest.approx(0.75)
    assert report.overall_micro == pytest.approx(0.8)
    assert [item.score for item in report.items] == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert report.counts["scored"] == 5


def test_truncated_empty_errored_and_missing_score_zero():
    records = [
        Record("a", "red", finish_reason="length"),  # right words, but cut off at max_tokens
        Record("b", "   ", finish_reason="stop"),
        Record("c", "top-left", error="HTTP 500: engine died"),
        # "d" has no record at all
        Record("e", "top-right"),
        Record("zz", "red"),  # a record for no sample: ignored
    ]
    report = score(SAMPLES, records)
    outcomes = {item.id: (item.outcome, item.score) for item in report.items}
    assert outcomes == {
        "a": ("truncated", 0.0),
        "b": ("empty", 0.0),
        "c": ("error", 0.0),
        "d": ("missing", 0.0),
        "e": ("scored", 1.0),
    }
    assert report.counts["extra_records"] == 1
    assert report.overall == pytest.approx((0.0 + 1 / 3) / 2)


def test_score_with_relaxed_and_anls_metrics():
    samples = [Sample("n1", "chart", "100"), Sample("n2", "chart", "42"), Sample("t1", "doc", "invoice")]
    records = [Record("n1", "103"), Record("n2", "50"), Record("t1", "invoise")]
    relaxed = score(samples, records, metric="relaxed")
    assert relaxed.per_task["chart"] == 0.5
    anls_report = score(samples, records, metric="anls")
    assert anls_report.per_task["doc"] == pytest.approx(1 - 1 / 7)


def test_score_rejects_unknown_metric_and_duplicate_ids():
    with pytest.raises(ValueError, match="unknown quality metric"):
        score(SAMPLES, [], metric="bleu")
    with pytest.raises(ValueError, match="share id"):
        score(SAMPLES, [Record("a", "red"), Record("a", "red")])
    with pytest.raises(ValueError, match="suite is empty"):
        score([], [])


def test_report_round_trips_through_dict():
    report = score(SAMPLES, [Record("a", "red"), Record("c", "top-left", finish_reason="length")])
    again = QualityReport.from_dict(report.to_dict())
    assert again == report
