"""Shared fixtures: one real vLLM server on the tiny model for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Tests share 2 cores with other work: keep torch to one thread in this process.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed tiny Gemma 4 when present, else a random-weight one built for this session."""
    from harness.tiny import DEFAULT_MODEL_DIR

    if (DEFAULT_MODEL_DIR / "config.json").is_file():
        return DEFAULT_MODEL_DIR
    from harness.tiny.build import build_random_tiny

    return build_random_tiny(tmp_path_factory.mktemp("tiny-gemma4"), seed=0)


@pytest.fixture(scope="session")
def served_tiny(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """A running VllmServer on the tiny model, shared by the whole session.

    ``served_tiny.target`` holds base_url, api_key and model_name. Do not stop it: tests
    that need to stop a server start their own.
    """
    from harness.config import compose
    from harness.server import VllmServer

    run = compose(["serve.startup_timeout_s=300"])
    run_dir = tmp_path_factory.mktemp("served-tiny")
    with VllmServer(tiny_model_dir, run.serve, run_dir, served_model_name=run.model.name,
                    dtype=run.model.dtype) as server:
        yield server


@pytest.fixture(scope="session")
def checkpoints(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scheme name -> compressed checkpoint of the tiny model, built once per test session."""
    import torch

    from compress import compress_checkpoint
    from compress.configs import config_from_name

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    schemes = ("fp8_dynamic", "w8a8_int8", "w4a16_rtn", "w4a16_gptq")
    return {s: compress_checkpoint(tiny_model_dir, root / s, config_from_name(s)) for s in schemes}
