"""run_steps: a StepsConfig applied in order, each step reading the previous one's folder."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable, Iterable

from compress.calibration import CalibrationSource
from compress.configs import StepsConfig
from compress.distill_config import DistillConfig


def run_steps(src_dir: Path, out_dir: Path, config: StepsConfig, calibration: Iterable | None = None, *,
              compress_one: Callable[..., Path], device: str = "auto") -> Path:
    """Runs every step of `config`; intermediate folders live inside `out_dir`.partial.

    Each step writes a complete checkpoint folder (with recipe.json, whose steps list grows
    by one each time, so the final folder carries the whole lineage); the last one is
    renamed to `out_dir` and the partial folder is removed. An interrupted run leaves only
    the partial folder, which the next run clears.

    Args:
        src_dir: the dense source checkpoint.
        out_dir: destination; must not exist.
        config: the steps.
        calibration: passed to every step that calibrates (FLAP, GPTQ, and distillation,
            which needs a CalibrationSource: its examples carry answers).
        compress_one: runs one step (compress.checkpoint.compress_checkpoint, passed in by
            it: a steps config is one of the configs that function dispatches).
        device: where each calibrated step computes (compress.device); every step records its own.
    """
    from compress.device import resolve_device
    from compress.distill import distill_checkpoint
    from compress.folders import check_paths, fresh_partial

    resolve_device(device)  # an unusable device fails before the first step
    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_paths(src_dir, out_dir)
    partial = fresh_partial(out_dir)
    # A source is passed on as it is (each step draws its own count); fixed items are read once.
    items = calibration if calibration is None or isinstance(calibration, CalibrationSource) else list(calibration)
    current = src_dir
    for i, step in enumerate(config.steps):
        out = partial / f"step-{i}-{step.SCHEME}"
        if isinstance(step, DistillConfig):  # the teacher is the dense source, not the previous step
            current = distill_checkpoint(src_dir, current, out, step, source=calibration, device=device)
        else:
            current = compress_one(current, out, step, items, device=device)
    current.rename(out_dir)
    shutil.rmtree(partial)
    return out_dir
