"""Calibration data: where calibrated steps (GPTQ, FLAP, distillation) draw their image-text items.

compress owns no data set. The caller says where items come from, either as the items
themselves ((PIL image, prompt) pairs or processor-output dicts) or as a CalibrationSource
that makes any number of them from a seed (the harness passes its suite's train split; the
CLI a JSONL file). Prompts are chat-formatted exactly as a served request is.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Example = tuple[Any, str, str]  # (PIL image, prompt, reference answer)


@dataclass(frozen=True)
class CalibrationSource:
    """Image-text examples made on demand: ``examples(count, seed)``.

    Attributes:
        name: what the data is, recorded in each checkpoint's recipe.
        fingerprint: changes whenever the examples would (a build cache keys on it).
        examples: (count, seed) -> (image, prompt, answer) triples; the same arguments give
            the same items.
    """

    name: str
    fingerprint: str
    examples: Callable[[int, int], Sequence[Example]]

    def pairs(self, count: int, seed: int) -> list[tuple[Any, str]]:
        """(image, prompt) pairs: what GPTQ and FLAP statistics run over."""
        return [(image, prompt) for image, prompt, _ in self.examples(count, seed)]

    @classmethod
    def from_jsonl(cls, path: Path) -> CalibrationSource:
        """Examples from a JSONL file of {"image": path, "prompt": text, "answer": text} lines
        (image paths relative to the file), drawn without replacement by seed."""
        path = Path(path)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not rows or any(not {"image", "prompt"} <= set(r) for r in rows):
            raise ValueError(f"{path}: every line needs \"image\" and \"prompt\" (and \"answer\" for distillation)")

        def examples(count: int, seed: int) -> list[Example]:
            from PIL import Image

            if count > len(rows):
                raise ValueError(f"{path} has {len(rows)} examples; {count} were asked for")
            chosen = random.Random(seed).sample(rows, count)
            return [(Image.open(path.parent / r["image"]).convert("RGB"), r["prompt"], r.get("answer", ""))
                    for r in chosen]

        return cls(f"file {path.name}", hashlib.sha256(path.read_bytes()).hexdigest()[:16], examples)


def resolve(calibration: CalibrationSource | Iterable | None, count: int, seed: int,
            needed_by: str) -> tuple[list, dict]:
    """The items a calibrated step runs over, and their description for the recipe's lineage.

    Raises:
        ValueError: no calibration was given (compress has no data of its own).
    """
    if calibration is None:
        raise ValueError(f"{needed_by} needs calibration data: pass calibration= (a CalibrationSource, or "
                         "(image, prompt) pairs) or, on the command line, --calibration FILE.jsonl")
    if isinstance(calibration, CalibrationSource):
        return calibration.pairs(count, seed), {"source": calibration.name, "fingerprint": calibration.fingerprint,
                                                "num_samples": count, "seed": seed}
    items = list(calibration)
    return items, {"source": "caller-provided", "num_samples": len(items)}


def processor_inputs(processor, pairs: Iterable[tuple[Any, str]]) -> list[dict]:
    """Model keyword arguments for each (PIL image, prompt) pair, as the chat template formats them.

    Each prompt becomes one user turn holding the image then the text, followed by the
    generation prompt, exactly as a served chat request is laid out.
    """
    samples = []
    for image, prompt in pairs:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        samples.append(dict(processor(text=text, images=[image], return_tensors="pt")))
    return samples


def as_model_inputs(calibration: Iterable, src_dir: Path) -> list[dict]:
    """Calibration as model inputs: dicts pass through, (image, prompt) pairs go through the processor."""
    items = list(calibration)
    pairs = [item for item in items if isinstance(item, tuple)]
    if not pairs:
        return items
    if len(pairs) != len(items):
        raise TypeError("calibration mixes (image, prompt) pairs and input dicts: give one kind")
    from transformers import AutoProcessor

    return processor_inputs(AutoProcessor.from_pretrained(src_dir), pairs)
