"""Task metrics over several reference answers, and corpus metrics, behind quality.score.

Two kinds, one registry:

- item metrics ``(prediction, references) -> float`` score one answer on its own: the
  pairwise metrics of harness.quality (exact, relaxed, anls) take their best reference;
  ``vqa`` (TextVQA, VQAv2) and ``choice`` (MMMU letters) use all references at once;
- corpus metrics ``(predictions, references per item) -> per-item floats`` need the whole
  suite (CIDEr weighs n-grams by how rare they are across all the suite's references), but
  still return one score per item, so the gate can bootstrap over items.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from harness.quality import ItemScore, anls, exact_match, outcome_of, relaxed_match

ItemMetric = Callable[[str, Sequence[str]], float]
CorpusMetric = Callable[[Sequence[str], Sequence[Sequence[str]]], list[float]]

_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_ARTICLES = {"a", "an", "the"}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d)")
_LONE_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$:'~|]")
_CHOICE_PATTERNS = (
    re.compile(r"^\s*\(?([A-Z])\)?\s*(?:[.):]|$)"),  # "B", "(B)", "B.", "B) the text"
    re.compile(r"(?i:answer)(?:\s+is)?\s*[:=]?\s*\(?([A-Z])\)?(?![A-Za-z])"),  # "The answer is (C)"
    re.compile(r"\(([A-Z])\)"),  # "... so (D) ..."
)
_CAPTION_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def best_of(pairwise: Callable[[str, str], float]) -> ItemMetric:
    """Lifts a (prediction, reference) metric to the best score over several references."""

    def metric(prediction: str, references: Sequence[str]) -> float:
        return max((pairwise(prediction, ref) for ref in references), default=0.0)

    metric.__name__ = f"best_{pairwise.__name__}"
    return metric


def vqa_normalize(text: str) -> str:
    """The VQA answer form: lowercase, no punctuation, digits for number words, no articles.

    Commas between digits and periods that are not decimal points are dropped; every
    other punctuation mark becomes a space; "two" becomes "2"; "a", "an", "the" go.
    """
    text = _THOUSANDS.sub("", text.lower().strip())
    text = _PUNCTUATION.sub(" ", _LONE_PERIOD.sub("", text))
    words = (_NUMBER_WORDS.get(w, w) for w in text.split())
    return " ".join(w for w in words if w not in _ARTICLES)


def vqa_accuracy(prediction: str, references: Sequence[str]) -> float:
    """VQA accuracy: min(1, annotators giving the answer / 3), averaged leaving each one out.

    With the usual ten annotators, for each annotator i the answer earns
    min(1, matches among the other nine / 3); the score is the mean over i. So an answer
    given by four or more of ten annotators scores 1, by three 0.9, by two 0.6, by one 0.3.
    With a single reference this reduces to exact match of the normalised answers.
    """
    pred = vqa_normalize(prediction)
    refs = [vqa_normalize(r) for r in references]
    if len(refs) <= 1:
        return float(bool(refs) and pred == refs[0])
    matches = sum(r == pred for r in refs)
    per_left_out = (min(1.0, (matches - (r == pred)) / 3.0) for r in refs)
    return sum(per_left_out) / len(refs)


def extract_choice(text: str) -> str | None:
    """The option letter an answer picks, or None when it names no letter.

    Tried in order: the answer is a letter ("B", "(B)", "B.", "B) 42 m"); "answer is C"
    or "Answer: C"; the first "(D)" anywhere. A sentence starting with the article "A"
    is not read as option A.
    """
    for pattern in _CHOICE_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1).upper()
    return None


def choice_accuracy(prediction: str, references: Sequence[str]) -> float:
    """Multiple-choice accuracy: 1.0 when the letter picked is the reference letter."""
    letter = extract_choice(prediction)
    return float(letter is not None and any(letter == r.strip().upper() for r in references))


def caption_tokens(text: str) -> str:
    """Lowercased words and numbers joined by spaces, punctuation dropped.

    Stands in for the PTB tokenizer of the COCO toolkit (which needs Java): it keeps the
    same lowercase word tokens and drops punctuation, but keeps "dog's" as one token.
    """
    return " ".join(_CAPTION_TOKEN.findall(text.lower()))


def cider_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
    """Per-item CIDEr-D (pycocoevalcap; n-grams 1-4, sigma 6, scaled by 10 as COCO reports it).

    The document frequencies come from the references of every item given, so the scores
    depend on the suite: a suite of one image scores 0 (every n-gram is in every
    document). The suite's CIDEr is the mean of the returned scores.
    """
    from pycocoevalcap.cider.cider import Cider  # lazy: only caption suites need it

    if any(not refs for refs in references):
        raise ValueError("CIDEr needs at least one reference caption per item")
    keys = range(len(predictions))
    gts = {k: [caption_tokens(r) for r in references[k]] for k in keys}
    res = {k: [caption_tokens(predictions[k])] for k in keys}
    _, per_item = Cider().compute_score(gts, res)
    return [float(v) for v in per_item]


ITEM_METRICS: dict[str, ItemMetric] = {
    "exact": best_of(exact_match),
    "relaxed": best_of(relaxed_match),
    "anls": best_of(anls),
    "vqa": vqa_accuracy,
    "choice": choice_accuracy,
}
CORPUS_METRICS: dict[str, CorpusMetric] = {"cider": cider_scores}
METRIC_NAMES = tuple(sorted({*ITEM_METRICS, *CORPUS_METRICS}))


def check_metric(name: str) -> None:
    """Raises ValueError naming the metrics when ``name`` is not one of them."""
    if name not in ITEM_METRICS and name not in CORPUS_METRICS:
        raise ValueError(f"unknown quality metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")


def references_of(sample: Any) -> tuple[str, ...]:
    """Every accepted answer of a sample (``.references``, else ``(.reference,)``)."""
    return tuple(getattr(sample, "references", ()) or (sample.reference,))


def score_items(samples: Sequence[Any], records: Sequence[Any], metric: str) -> list[ItemScore]:
    """One ItemScore per sample; ``records[i]`` answers ``samples[i]`` (None if it is missing).

    Items whose answer is not complete (see harness.quality.OUTCOMES) score 0. A corpus
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
