"""Task metrics on hand-checked answers: relaxed accuracy, ANLS, VQA accuracy, option letters, CIDEr."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from harness.replay.tokens import joules_per_output_token, output_tokens, usage_tokens
from harness.replay.workloads.base import Sample
from harness.score.metrics import (
    ITEM_METRICS,
    caption_tokens,
    check_metric,
    cider_scores,
    extract_choice,
    vqa_accuracy,
    vqa_normalize,
)
from harness.score.quality import score

TEN = ["coca cola"] * 3 + ["coke"] * 7


@dataclass(frozen=True)
class Record:
    id: str
    output_text: str
    finish_reason: str | None = "stop"
    error: str | None = None
    output_tokens: int = 0


@pytest.mark.parametrize("answer,expected", [("104", 1.0), ("96", 1.0), ("106", 0.0), ("93.9", 0.0),
                                             ("100.0", 1.0), ("1,04", 0.0), ("about 100", 0.0)])
def test_relaxed_accuracy_keeps_five_percent_of_the_reference(answer, expected) -> None:
    assert ITEM_METRICS["relaxed"](answer, ["100"]) == expected


def test_relaxed_accuracy_takes_the_best_reference_and_matches_words_exactly() -> None:
    assert ITEM_METRICS["relaxed"]("Brazil.", ["brazil"]) == 1.0
    assert ITEM_METRICS["relaxed"]("52", ["10", "50"]) == 1.0  # 4% off the second reference
    assert ITEM_METRICS["relaxed"]("Brasil", ["Brazil"]) == 0.0


def test_anls_is_one_minus_normalised_distance_and_zero_below_half_similarity() -> None:
    assert ITEM_METRICS["anls"]("abcdefghix", ["abcdefghij"]) == pytest.approx(0.9)  # 1 edit in 10
    assert ITEM_METRICS["anls"]("abcdef", ["abcxyz"]) == 0.0  # distance 3/6 = 0.5 is not < 0.5
    assert ITEM_METRICS["anls"]("uvwxyz", ["abcdef"]) == 0.0
    assert ITEM_METRICS["anls"]("3 may 1994", ["May 3, 1994", "3 May 1994"]) == 1.0


@pytest.mark.parametrize("answer,expected", [("coke", 1.0), ("Coca-Cola.", 0.9), ("pepsi", 0.0)])
def test_vqa_accuracy_counts_annotators_leaving_each_out(answer, expected) -> None:
    # coke: 7 annotators -> 1; coca cola: 3 of 10 -> (3 * 2/3 + 7 * 1) / 10 = 0.9.
    assert vqa_accuracy(answer, TEN) == pytest.approx(expected)


def test_vqa_accuracy_for_two_and_one_annotators() -> None:
    refs = ["stop"] * 7 + ["halt"] * 2 + ["go"]
    assert vqa_accuracy("halt", refs) == pytest.approx(0.6)  # (2 * 1/3 + 8 * 2/3) / 10
    assert vqa_accuracy("go", refs) == pytest.approx(0.3)  # (0 + 9 * 1/3) / 10


def test_vqa_normalisation_digits_articles_punctuation() -> None:
    assert vqa_normalize("The Two dogs!") == "2 dogs"
    assert vqa_normalize("1,000.") == "1000"
    assert vqa_normalize("3.5") == "3.5"
    assert vqa_accuracy("Twenty-three", ["twenty three"]) == 1.0


@pytest.mark.parametrize("text,letter", [("B", "B"), ("(C)", "C"), ("D. 24 square metres", "D"),
                                         ("The answer is (A).", "A"), ("Answer: C", "C"),
                                         ("I think it is (B) because", "B"), ("A cat is shown", None),
                                         ("Cubism", None)])
def test_option_letter_extraction(text, letter) -> None:
    assert extract_choice(text) == letter


def test_choice_accuracy_scores_the_letter() -> None:
    assert ITEM_METRICS["choice"]("(b) Cubism", ["B"]) == 0.0  # lowercase "(b)" is not an option mark
    assert ITEM_METRICS["choice"]("B) Cubism", ["B"]) == 1.0
    assert ITEM_METRICS["choice"]("C", ["B"]) == 0.0


def test_cider_of_a_copied_reference_is_ten_and_of_unrelated_words_zero() -> None:
    # Two images, one reference each, no shared n-gram: every n-gram has idf log 2, a copy has
    # cosine 1 at n = 1..4 and no length penalty, so CIDEr-D = 10 * mean(1, 1, 1, 1).
    refs = [["a red bus on the street"], ["two cats sleep on a sofa"]]
    assert cider_scores(["A red bus on the street.", "two cats sleep on a sofa"], refs) == pytest.approx([10.0, 10.0])
    assert cider_scores(["green grass", "blue sky today"], refs) == pytest.approx([0.0, 0.0])


def test_cider_of_a_one_image_suite_is_zero() -> None:
    assert cider_scores(["a red bus"], [["a red bus"]]) == [0.0]  # every n-gram is in every document


def test_caption_tokens_drop_punctuation_and_case() -> None:
    assert caption_tokens("A Red-bus, parked.") == "a red bus parked"


def test_unknown_metric_lists_the_metrics() -> None:
    with pytest.raises(ValueError, match="anls.*choice.*cider.*exact.*relaxed.*vqa"):
        check_metric("bleu")


def _samples():
    return [Sample("q1", "textvqa", None, "p", "coca cola", tuple(TEN)),
            Sample("q2", "textvqa", None, "p", "stop", ("stop",) * 10)]


def test_score_uses_every_reference_and_zeroes_incomplete_answers() -> None:
    report = score(_samples(), [Record("q1", "coke"), Record("q2", "stop", finish_reason="length")], metric="vqa")
    assert [(i.score, i.outcome) for i in report.items] == [(1.0, "scored"), (0.0, "truncated")]
    assert report.metric == "vqa" and report.overall == pytest.approx(0.5)


def test_score_with_a_corpus_metric_keeps_per_item_scores() -> None:
    samples = [Sample(f"i{k}", "coco", None, "p", refs[0], refs) for k, refs in
               enumerate([("a red bus on the street",), ("two cats sleep on a sofa",)])]
    report = score(samples, [Record("i0", "a red bus on the street"), Record("i1", "", error="boom")], metric="cider")
    assert [i.score for i in report.items] == pytest.approx([10.0, 0.0])
    assert [i.outcome for i in report.items] == ["scored", "error"]


def test_sample_reference_is_its_first_reference() -> None:
    assert Sample("x", "t", None, "p", "yes").references == ("yes",)
    assert Sample("x", "t", None, "p", "a", ("a", "b")).reference == "a"


def test_output_tokens_are_the_server_usage_of_successful_requests() -> None:
    assert usage_tokens({"prompt_tokens": 90, "completion_tokens": 7}) == (90, 7)
    assert usage_tokens(None) == (0, 0)
    records = [Record("a", "x", output_tokens=7), Record("b", "", error="timeout", output_tokens=3)]
    assert output_tokens(records) == 7
    assert joules_per_output_token(14.0, 7) == 2.0 and joules_per_output_token(14.0, 0) is None
