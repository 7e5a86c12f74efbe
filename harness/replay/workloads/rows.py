"""One dataset row as a suite Sample: column mapping, prompt template, choices, image size."""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.config.typed import build_dataclass
from harness.errors import ConfigError
from harness.replay.workloads.base import Sample

# Interleaved datasets (MMMU) mark where each image goes, "<image 1>"; the replay sends the
# one image before the text, so the mark is read as a reference to it.
_IMAGE_TAG = re.compile(r"<image\s*\d+>")
TEMPLATE_FIELDS = ("question", "choices")
LETTERS = string.ascii_uppercase


@dataclass(frozen=True)
class Columns:
    """Which dataset columns hold what (``workload.columns``).

    Attributes:
        image: the image column, or several (MMMU's image_1..image_7): the first one
            present in a row is sent; rows with more than one image are skipped, since a
            request carries one image.
        answer: the reference answer(s): a string column or a list-of-strings column.
        question: the question text, put into the prompt as {question}; None for tasks
            without one (captioning).
        choices: multiple-choice options (a list, or its Python repr as MMMU stores it),
            put into the prompt as lettered lines, {choices}.
        id: a unique row id to keep in results; None uses the row's index in the split.
        task: a column whose value names the item's task family (per-task scores); None
            puts every item under the workload name.
    """

    image: str | tuple[str, ...]
    answer: str
    question: str | None = None
    choices: str | None = None
    id: str | None = None
    task: str | None = None

    @property
    def images(self) -> tuple[str, ...]:
        return (self.image,) if isinstance(self.image, str) else self.image

    def names(self) -> tuple[str, ...]:
        """Every dataset column this mapping reads."""
        single = (self.answer, self.question, self.choices, self.id, self.task)
        return (*self.images, *(c for c in single if c is not None))


def parse_columns(mapping: Mapping[str, Any]) -> Columns:
    """``workload.columns`` as Columns; ConfigError naming the keys when it does not fit."""
    if not mapping:
        raise ConfigError("workload.columns is empty: name at least image and answer, "
                          "e.g. workload.columns={image: image, question: query, answer: label}")
    return build_dataclass(Columns, mapping, "workload.columns")


def check_template(template: str, columns: Columns) -> None:
    """Refuses a prompt template with unknown fields, or a field with no column behind it."""
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as err:
        raise ConfigError(f"workload.prompt {template!r} is not a valid template: {err}") from err
    unknown = used - set(TEMPLATE_FIELDS)
    if unknown:
        raise ConfigError(f"workload.prompt uses {sorted(unknown)}; templates may use {{question}} and {{choices}}")
    for name in used:
        if getattr(columns, name) is None:
            raise ConfigError(f"workload.prompt uses {{{name}}} but workload.columns.{name} is not set")


def format_choices(value: Any) -> str:
    """Options as "A. first\\nB. second"; a string holding a Python list is parsed first."""
    options = ast.literal_eval(value) if isinstance(value, str) else value
    if not isinstance(options, Sequence) or isinstance(options, str) or len(options) > len(LETTERS):
        raise ConfigError(f"choices {value!r} are not a list of at most {len(LETTERS)} options")
    return "\n".join(f"{LETTERS[i]}. {option}" for i, option in enumerate(options))


def references(value: Any) -> tuple[str, ...]:
    """The non-empty reference answers in a string or list-of-strings cell."""
    answers = [value] if isinstance(value, str) else list(value or ())
    return tuple(str(a).strip() for a in answers if str(a).strip())


def fit_image(image: Any, max_side_px: int | None) -> Any:
    """The image in RGB, shrunk (aspect kept) so its longer side is at most ``max_side_px``.

    None keeps the size. This bounds what is encoded and sent; the Gemma 4 processor then
    rescales to its soft-token budget (serve.max_soft_tokens) whatever the size.
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    if max_side_px is not None and max(image.size) > max_side_px:
        from PIL import Image

        image = image.copy()
        image.thumbnail((max_side_px, max_side_px), Image.Resampling.BICUBIC)
    return image


def to_sample(row: Mapping[str, Any], index: int, columns: Columns, workload: Any) -> Sample:
    """Builds the Sample of dataset row ``index`` (its position in the split).

    Raises:
        ConfigError: the row has no reference answer (e.g. a test split without labels).
    """
    refs = references(row[columns.answer])
    if not refs:
        raise ConfigError(f"row {index} of split {workload.split!r} has no answer in column {columns.answer!r} "
                          f"(a test split without labels?); pick a labelled split with workload.split=")
    image = next(row[c] for c in columns.images if row[c] is not None)
    fields = {}
    if columns.question is not None:
        fields["question"] = _IMAGE_TAG.sub("the image", str(row[columns.question])).strip()
    if columns.choices is not None:
        fields["choices"] = format_choices(row[columns.choices])
    return Sample(
        id=str(row[columns.id]) if columns.id is not None else f"{workload.split}-{index:06d}",
        task=str(row[columns.task]) if columns.task is not None else workload.name,
        image=fit_image(image, workload.image_max_side_px),
        prompt=workload.prompt.format(**fields),
        reference=refs[0],
        references=refs,
    )
