"""Shared fixtures: one real vLLM server on the tiny model for the whole test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.build.calibration import suite_source
from tests.procs import EngineWatch, become_subreaper, kill_leftovers

# Tests share 2 cores with other work: keep torch to one thread in this process.
os.environ.setdefault("OMP_NUM_THREADS", "1")
_ENGINES = EngineWatch()


def pytest_sessionstart(session: pytest.Session) -> None:
    # Orphans come to pytest, not init: whatever the suite left running is a descendant of pytest.
    become_subreaper()
    _ENGINES.start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Fails a test that started a vLLM engine (a server or an offline one) without the `server` mark.

    `-m "not server"` is the fast development loop: it must really start no server.
    """
    outcome = yield
    report = outcome.get_result()
    if call.when != "teardown":
        return
    _ENGINES.poll()  # an engine started just now is counted before the verdict
    started = _ENGINES.started_under(item.nodeid)
    if started and item.get_closest_marker("server") is None and report.passed:
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid} started {started} vLLM engine(s) but is not marked `server`"


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    terminalreporter.write_line(f"vLLM engine starts in this session: {len(_ENGINES.started)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run if any process the suite started (a server, a harness, a helper) is still alive.

    Fixtures stop what they start, pass or fail; this catches whatever escaped them (an orphaned
    engine, a server of a harness that was killed), kills it, and says which it was.
    """
    _ENGINES.stop()
    left = kill_leftovers()
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"  pid {pid}: {cmdline[:200]}" for pid, cmdline in left]
    message = f"{len(left)} process(es) started by the test suite outlived it (now killed):\n" + "\n".join(lines)
    if reporter is not None:
        reporter.write_line(message, red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    """A factory of fresh float32 copies of the tiny model (each test quantizes its own), on 1 thread."""
    import torch
    from transformers import AutoModelForImageTextToText

    torch.set_num_threads(1)
    return lambda: AutoModelForImageTextToText.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


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
    from harness.config.schema import compose
    from harness.serve.vllm import VllmServer

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
    return {s: compress_checkpoint(tiny_model_dir, root / s, config_from_name(s), suite_source()) for s in schemes}
