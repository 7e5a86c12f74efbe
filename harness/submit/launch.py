"""Serves a submission folder exactly as the judges do and asks it one suite image question."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.serve.vllm import LOG_TAIL_LINES, free_port, stop_process_group

HOST = "127.0.0.1"
ANSWER_MAX_TOKENS = 16


class LaunchError(HarnessError, RuntimeError):
    """The folder did not serve or did not answer; `fix` says what to look at."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


def vllm_command() -> list[str]:
    """The `vllm` console script beside this interpreter (the judges' entry point)."""
    script = Path(sys.executable).parent / "vllm"
    if not script.is_file():
        raise LaunchError(f"no vllm console script at {script}", "install vLLM into this environment")
    return [str(script)]


def cli_flags(settings: Mapping[str, Any]) -> list[str]:
    """Settings as `vllm serve` options, written as vLLM reads a config file (`key: false` is `--no-key`).

    Given after `--config vllm_config.yaml` they win over the file's values (vLLM: cli > config > defaults).
    """
    flags: list[str] = []
    for key, value in settings.items():
        if isinstance(value, bool):
            flags.append(f"--{key}" if value else f"--no-{key}")
        else:
            flags += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return flags


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return f"last {len(lines)} lines of the server log:\n" + "\n".join(lines)


def _served_name(root: str, key: str, proc: subprocess.Popen, log: Path, timeout_s: float) -> str:
    """Waits for /health and returns the first model id /v1/models lists."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if (code := proc.poll()) is not None:
                raise LaunchError(f"`vllm serve --config vllm_config.yaml` exited with code {code}; {_tail(log)}",
                                  "fix what the log names (usually a key of vllm_config.yaml or a missing file)")
            try:
                if client.get(f"{root}/health").status_code == 200:
                    models = client.get(f"{root}/v1/models", headers={"Authorization": f"Bearer {key}"}).json()
                    if models.get("data"):
                        return models["data"][0]["id"]
            except httpx.TransportError:  # not listening yet
                pass
            time.sleep(0.5)
    raise LaunchError(f"not ready after {timeout_s:g} s; {_tail(log)}", "raise the startup timeout or look at the log")


def _ask(base_url: str, key: str, model: str) -> str:
    """The answer to the first test-split suite sample, at the competition's sampling."""
    import openai

    from harness.replay.client import chat_messages
    from harness.replay.workloads.base import load_samples

    sample = load_samples(seed=0, split="test", limit=1)[0]
    client = openai.OpenAI(base_url=base_url, api_key=key, timeout=120.0)
    try:
        reply = client.chat.completions.create(model=model, messages=chat_messages(sample),
                                               max_tokens=ANSWER_MAX_TOKENS, temperature=1.0, top_p=0.95, seed=0,
                                               extra_body={"top_k": 64})
    except openai.OpenAIError as err:
        raise LaunchError(f"the image request failed: {err}",
                          "serve the folder by hand and send an image request") from err
    return reply.choices[0].message.content or ""


def ask_one_image(folder: Path, *, flags: Sequence[str] = (), startup_timeout_s: float = 600.0) -> str:
    """Runs `vllm serve --config vllm_config.yaml` in `folder` on loopback, asks one image
    question, and always stops the server. Port, host and API key go on the command line, and
    so do `flags`: this host's own settings (e.g. `--enforce-eager` on a CPU), never the folder's.

    Returns:
        The answer text. The server log is kept outside the folder (a temp file) so the
        submission is left as it was.
    """
    port, key = free_port(HOST), secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # read only by the CPU build; keeps this host's memory free
    log = Path(tempfile.mkdtemp(prefix="submit-check-")) / "server.log"
    command = vllm_command() + ["serve", "--config", "vllm_config.yaml", "--host", HOST, "--port", str(port),
                                "--api-key", key, *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
    try:
        model = _served_name(f"http://{HOST}:{port}", key, proc, log, startup_timeout_s)
        return _ask(f"http://{HOST}:{port}/v1", key, model)
    finally:
        stop_process_group(proc)
