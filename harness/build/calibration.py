"""The calibration data the harness gives `compress`: its own suite's train split (never the scored test split)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from compress.calibration import CalibrationSource
from harness.replay.workloads.base import load_samples

_SUITE_CODE = Path(__file__).resolve().parents[1] / "replay" / "workloads"


def suite_source() -> CalibrationSource:
    """Examples (image, prompt, reference answer) of the synthetic suite's train split.

    The fingerprint hashes the suite generator's source: a change to how items are drawn
    changes the data, so every build calibrated on it is made again.
    """
    digest = hashlib.sha256()
    for source in sorted(_SUITE_CODE.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())

    def examples(count: int, seed: int) -> list[tuple]:
        return [(s.image, s.prompt, s.reference) for s in load_samples(seed=seed, split="train", limit=count)]

    return CalibrationSource("harness synthetic suite, train split", digest.hexdigest()[:16], examples)
