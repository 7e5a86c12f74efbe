"""Calibration samples for GPTQ: chat-formatted image+text prompts turned into model inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable


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


def suite_pairs(num_samples: int, seed: int) -> list[tuple[Any, str]]:
    """(image, prompt) pairs from the harness suite's train split (never the scored test split)."""
    from harness.workloads.base import load_samples

    return [(s.image, s.prompt) for s in load_samples(seed=seed, split="train", limit=num_samples)]


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
