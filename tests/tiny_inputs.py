"""Inputs for tests that calibrate compress's schemes on the tiny model."""

from __future__ import annotations

from pathlib import Path


def calibration_inputs(model_dir: Path, count: int):
    """Processor inputs of `count` suite calibration pairs, as compress's calibrating schemes take them."""
    from transformers import AutoProcessor

    from compress.calibration import processor_inputs
    from harness.build.calibration import suite_source

    return processor_inputs(AutoProcessor.from_pretrained(model_dir), suite_source().pairs(count, 0))
