"""A real vLLM server on the tiny model: starts the judges' way, answers, and always stops."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from harness.config.schema import compose
from harness.errors import ServerError
from harness.serve.vllm import VllmServer
from tests.procs import group_alive, spawn

pytestmark = pytest.mark.server


def test_serves_on_loopback_behind_its_key(served_tiny) -> None:
    target = served_tiny.target
    assert target.base_url.startswith("http://127.0.0.1:")
    models = httpx.get(f"{target.base_url}/models", headers={"Authorization": f"Bearer {target.api_key}"})
    assert [m["id"] for m in models.json()["data"]] == [target.model_name]
    assert httpx.get(f"{target.base_url}/models").status_code == 401


def test_run_dir_holds_config_and_log_without_the_key(served_tiny) -> None:
    config = yaml.safe_load(served_tiny.config_path.read_text())
    assert config["served-model-name"] == served_tiny.target.model_name
    assert config["enforce-eager"] is True  # this machine is a CPU
    log = served_tiny.log_path.read_text()
    assert log.strip() != ""
    assert served_tiny.api_key not in log and served_tiny.api_key not in served_tiny.config_path.read_text()


def test_stop_leaves_no_process_in_the_group(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = compose(["serve.startup_timeout_s=300"])
    with VllmServer(tiny_model_dir, run.serve, tmp_path, served_model_name="stop-check") as server:
        pgid = server.pgid
        assert group_alive(pgid)
        server.check_alive()
    assert not group_alive(pgid)
    server.stop()  # idempotent


def test_startup_timeout_raises_with_log_tail(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = compose(["serve.startup_timeout_s=2"])
    server = VllmServer(tiny_model_dir, run.serve, tmp_path, served_model_name="held")
    server.start()
    pgid = server.pgid
    try:
        # Held: a stopped server can never become ready, so the timeout fires however fast the machine.
        os.killpg(pgid, signal.SIGSTOP)
        with pytest.raises(ServerError, match="not ready after 2 s") as err:
            server.wait_ready()
    finally:
        server.stop()  # must stop a stopped (held) group too
    assert not group_alive(pgid)
    tail = (tmp_path / "server.log").read_text().splitlines()[-40:]
    assert str(err.value).endswith("\n".join(tail))
    assert "server.log" in str(err.value)
    assert server.pgid is None


def test_early_exit_is_reported_with_log_tail(tmp_path: Path) -> None:
    run = compose(["serve.startup_timeout_s=300"])
    missing = tmp_path / "no-such-model"
    with pytest.raises(ServerError, match="exited with code") as err:
        with VllmServer(missing, run.serve, tmp_path, served_model_name="ghost"):
            pass
    assert "no-such-model" in str(err.value)


_HOLDER = """
import sys, time
from pathlib import Path
from harness.config.schema import compose
from harness.serve.vllm import VllmServer
run = compose(["serve.startup_timeout_s=300"])
with VllmServer(Path(sys.argv[1]), run.serve, Path(sys.argv[2]), served_model_name="held"):
    time.sleep(600)
"""


def _child_pid(pid: int, timeout_s: float) -> int:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = children.read_text().split()
        if found:
            return int(found[0])
        time.sleep(0.2)
    raise AssertionError(f"process {pid} started no server within {timeout_s} s")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_parent_leaves_no_orphans(tiny_model_dir: Path, tmp_path: Path, sig: int) -> None:
    # spawn(): the parent gets default SIGINT handling however pytest was started, and its whole
    # tree (the server's own session included) is killed when the test ends, pass or fail.
    with spawn([sys.executable, "-c", _HOLDER, str(tiny_model_dir), str(tmp_path)],
               cwd=Path(__file__).resolve().parents[1]) as parent:
        pgid = _child_pid(parent.pid, 120)
        _wait_for_log(tmp_path / "server.log")  # the signal lands while vLLM is starting up
        parent.send_signal(sig)
        code = parent.wait(timeout=600)  # a hang guard: unwinding on a loaded 2-core machine is slow
        assert code != 0  # the parent was interrupted, not finished
        assert not group_alive(pgid)  # checked before spawn() cleans up after the test


def _wait_for_log(path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server wrote nothing to {path}")
