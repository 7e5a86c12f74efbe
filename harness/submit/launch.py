"""Serves a submission folder exactly as the judges do and asks it one suite image question."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.serve.llama_cpp import SYSTEM_CONFIG, llama_args, machine_free_env
from harness.serve.llama_cpp_home import LlamaCppMissing, binary
from harness.serve.vllm import LOG_TAIL_LINES, free_port, stop_process_group

HOST = "127.0.0.1"
ANSWER_MAX_TOKENS = 16
VLLM_COMMAND = "vllm serve --config vllm_config.yaml"
VLLM_FIX = "fix what the log names (usually a key of vllm_config.yaml or a missing file)"
# The repository name the folder gets in the local Hugging Face cache (also the name llama-server serves it as).
HF_REPO = "local/submission"
_MMPROJ_LOADED = re.compile(r"loaded multimodal model, '([^']+)'")


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


def _served_name(root: str, key: str, proc: subprocess.Popen, log: Path, timeout_s: float,
                 command: str = VLLM_COMMAND, fix: str = VLLM_FIX) -> str:
    """Waits for /health and returns the first model id /v1/models lists (`command`, `fix`: for the error)."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if (code := proc.poll()) is not None:
                raise LaunchError(f"`{command}` exited with code {code}; {_tail(log)}", fix)
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


@dataclass(frozen=True)
class HfAnswer:
    """What `llama-server -hf` made of a folder: its answer, and the files it chose itself.

    Attributes:
        command: the command line run, as the card shows it (`<repo>` for the repository, no port or key).
        model_file, mmproj_file: names of the model GGUF (from /props) and projector (from its log) it loaded.
    """

    answer: str
    command: str
    model_file: str
    mmproj_file: str | None


def hf_snapshot(folder: Path, cache: Path, repo: str = HF_REPO) -> Path:
    """Lays `folder` out in `cache` as a Hugging Face cache holds a downloaded repository: refs/main
    naming one snapshot whose files link to the folder's. `llama-server -hf <repo>` reads that
    listing as it reads the hub's, and picks the model GGUF and mmproj by the same rules."""
    commit = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()  # any 40-hex id names a snapshot
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    for path in sorted(folder.iterdir()):
        if path.is_file():
            (snapshot / path.name).symlink_to(path.resolve())
    return snapshot


def ask_one_image_hf(folder: Path, llama_config: Mapping[str, Any], *, startup_timeout_s: float = 120.0) -> HfAnswer:
    """Runs `llama-server -hf <repo>` on `folder` as that repository, with the folder's llama config
    as its only flags, on loopback, asks one image question, and always stops the server.

    The folder becomes the repository's snapshot in a private Hugging Face cache (LLAMA_CACHE), and
    --offline keeps llama-server off the network (the hub could hold another repository of that
    name); it changes nothing else. A private, empty config directory (XDG_CONFIG_HOME) and no
    inherited LLAMA_ARG_* variables keep this machine's llama.cpp settings out; the API key goes
    by environment (LLAMA_API_KEY). Nothing is written into the folder.

    Raises:
        LaunchError: no llama-server build, a system-wide llama.cpp config here, or the server did
            not start or answer (with its log's tail).
    """
    if SYSTEM_CONFIG.exists():
        raise LaunchError(f"{SYSTEM_CONFIG} exists: llama-server applies it to every launch on this machine, so "
                          "this one would not be the judges'", f"move {SYSTEM_CONFIG} away while validating")
    try:
        program = binary("llama-server")
    except LlamaCppMissing as err:
        raise LaunchError(str(err), "build llama.cpp with `bash scripts/install.sh`") from err
    work = Path(tempfile.mkdtemp(prefix="submit-check-"))
    try:
        hf_snapshot(folder, work / "hub")
        port, key = free_port(HOST), secrets.token_urlsafe(24)
        env = machine_free_env(work / "config")
        env.update(LLAMA_CACHE=str(work / "hub"), LLAMA_API_KEY=key)
        judged = ["-hf", HF_REPO, "--offline", *llama_args(llama_config)]
        shown = " ".join(["llama-server", *judged]).replace(HF_REPO, "<repo>")
        log = work / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([str(program), *judged, "--host", HOST, "--port", str(port)], cwd=work,
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
        try:
            root = f"http://{HOST}:{port}"
            model = _served_name(root, key, proc, log, startup_timeout_s, command=shown,
                                 fix="fix what the log names (a GGUF llama-server cannot load, or an option of "
                                     "llama_config.yaml)")
            answer = _ask(f"{root}/v1", key, model)
            props = _props(root, key)
        finally:
            stop_process_group(proc)
        loaded = _MMPROJ_LOADED.search(log.read_text(errors="replace"))
        return HfAnswer(answer, shown, Path(str(props.get("model_path"))).name,
                        Path(loaded.group(1)).name if loaded else None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _props(root: str, key: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{root}/props", headers={"Authorization": f"Bearer {key}"}, timeout=10.0).json()
