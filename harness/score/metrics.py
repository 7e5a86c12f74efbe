"""Task metrics over several reference answers, and corpus metrics, behind quality.score.

Two kinds, one registry:

- item metrics ``(prediction, references) -> float`` score one answer on its own: the
  pairwise metrics of harness.score.quality (exact, relaxed, anls) take their best reference;
  ``vqa`` (TextVQA, VQAv2) and ``choice`` (MMMU letters) use all references at once;
- corpus metrics ``(predictions, references per item) -> per-item floats`` need the whole
  suite (CIDEr weighs n-grams by how rare they are across all the suite's references), but
  still return one score per item, so the gate can bootstrap over items.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

ItemMetric = Callable[[str, Sequence[str]], float]
CorpusMetric = Callable[[Sequence[str], Sequence[Sequence[str]]], list[float]]

# Characters stripped from both ends of an answer. "-", "+", "%", "$" and "#" are kept:
# they carry meaning at the edge of an answer ("-5", "50%", "$3").
EDGE_PUNCTUATION = ".,;:!?\"'`()[]{}*\u201c\u201d\u2018\u2019"
_WHITESPACE = re.compile(r"\s+")
_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}\b)")  # "1,250" -> "1250"


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
    cleaned = _THOUSANDS_SEPARATOR.sub("", text)
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


_NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten".split())}
_ARTICLES = {"a", "an", "the"}
_VQA_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")  # VQA normalisation drops any comma between digits
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
    text = _VQA_DIGIT_COMMA.sub("", text.lower().strip())
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
