"""Suite samples and their storage as a Hugging Face dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from harness.replay.workloads.synthetic import FAMILIES, make_item

if TYPE_CHECKING:
    from PIL.Image import Image

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One request of a suite: an image, the prompt about it, the reference answer(s).

    ``references`` holds every accepted answer (e.g. TextVQA's ten annotators); when left
    empty it becomes ``(reference,)``. ``reference`` is always the first of them.
    """

    id: str
    task: str
    image: "Image"
    prompt: str
    reference: str
    references: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.references:
            object.__setattr__(self, "references", (self.reference,))


def load_samples(seed: int = 0, split: str = "test", limit: int | None = 200, offset: int = 0) -> list[Sample]:
    """The first `limit` samples of a synthetic split (families interleaved, so balanced).

    Args:
        seed: suite seed; the same seed gives the same images and answers everywhere.
        split: "train" or "test"; the two never share items (their seed streams differ).
        limit: number of samples (a multiple of the family count keeps families equal).
        offset: index of the first sample, for paging through a split.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if limit is None or limit <= 0:
        raise ValueError(f"limit must be a positive number of samples, got {limit!r}")
    items = (make_item(seed, split, i) for i in range(offset, offset + limit))
    return [Sample(it.id, it.task, it.image, it.question, it.answer) for it in items]


def build_dataset(seed: int = 0, n_train: int = 2000, n_test: int = 400):
    """The suite as a `datasets.DatasetDict` with train and test splits.

    Columns: id, task, image (an Image feature), question, answer, chance.
    """
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "task": datasets.Value("string"),
            "image": datasets.Image(),
            "question": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "chance": datasets.Value("float32"),
        }
    )

    def rows(split: str, n: int):
        for s in load_samples(seed, split, n):
            yield {"id": s.id, "task": s.task, "image": s.image, "question": s.prompt,
                   "answer": s.reference, "chance": FAMILIES[s.task].chance}

    return datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_generator(rows, gen_kwargs={"split": "train", "n": n_train},
                                                     features=features),
            "test": datasets.Dataset.from_generator(rows, gen_kwargs={"split": "test", "n": n_test},
                                                    features=features),
        }
    )


def save_dataset(out_dir: Path, seed: int = 0, n_train: int = 2000, n_test: int = 400) -> Path:
    """Writes the suite with `DatasetDict.save_to_disk` (reload with `datasets.load_from_disk`)."""
    build_dataset(seed, n_train, n_test).save_to_disk(str(out_dir))
    return Path(out_dir)
