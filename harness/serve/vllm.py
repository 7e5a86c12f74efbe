"""Launches vLLM's OpenAI server the judges' way (a vllm_config.yaml) and always stops it."""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from harness.config.schema import ServeConfig
from harness.errors import ServerError
from harness.serve.capabilities import Platform, check_plugin_support, default_enforce_eager, detect_platform
from harness.serve.generation import ServerDefaults, server_defaults

CONFIG_NAME = "vllm_config.yaml"
LOG_NAME = "server.log"
LOG_TAIL_LINES = 40
STOP_GRACE_S = 20.0
_POLL_S = 0.5
_LIVE: set[ChildServer] = set()  # servers to stop if the interpreter exits without closing them
_HANDLERS_INSTALLED = False



@dataclass(frozen=True)
class ServerTarget:
    """Where a running server answers: OpenAI base URL, API key and served model name.

    ``defaults``: what the server fills into a request that leaves sampling out (None when
    unknown: a model that is not a local folder, or a server the harness did not start).
    """

    base_url: str
    api_key: str
    model_name: str
    defaults: ServerDefaults | None = None


def vllm_args(model_path: str | Path, serve: ServeConfig, *, served_model_name: str,
              dtype: str = "auto") -> dict[str, Any]:
    """The serve settings as vLLM config-file keys (the long CLI option names without '--').

    Host, port and API key are left out: they belong to this machine and run, not to the
    submission. ``serve.enforce_eager`` None means the platform default is not decided yet
    and the key is omitted (vLLM's own default, CUDA graphs on GPU).
    """
    mm_kwargs = {"max_soft_tokens": serve.max_soft_tokens} if serve.max_soft_tokens else None
    args: dict[str, Any] = {
        "model": str(model_path),
        "served-model-name": served_model_name,
        "dtype": dtype,
        "max-model-len": serve.max_model_len,
        "kv-cache-dtype": serve.kv_cache_dtype,
        "enforce-eager": serve.enforce_eager,
        "enable-chunked-prefill": serve.enable_chunked_prefill,
        "enable-prefix-caching": serve.enable_prefix_caching,
        "max-num-seqs": serve.max_num_seqs,
        "gpu-memory-utilization": serve.gpu_memory_utilization,
        "limit-mm-per-prompt": dict(serve.limit_mm_per_prompt) or None,
        "mm-processor-kwargs": mm_kwargs,
        "default-chat-template-kwargs": dict(serve.chat_template_kwargs) or None,
        "chat-template": serve.chat_template,
        "override-generation-config": dict(serve.generation_config) or None,
        "trust-remote-code": True if serve.trust_remote_code else None,
    }
    return {key: value for key, value in args.items() if value is not None}


def write_vllm_config(path: Path, args: Mapping[str, Any]) -> Path:
    """Writes ``args`` (from :func:`vllm_args`) as the YAML file ``vllm serve --config`` reads."""
    import yaml  # lazy: PyYAML comes with vLLM and Hydra

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(args), sort_keys=False))
    return path


class ChildServer:
    """What every server the harness launches shares: a child process in its own process group,
    used as a context manager, that on every way out (error, Ctrl-C, SIGTERM, interpreter exit)
    stops the whole group. Subclasses set ``serve``, ``api_key``, ``model_name``, ``log_path`` and
    ``defaults``, and define ``start`` (launch, then ``_launched``), ``wait_ready`` and ``_log_tail``.
    """

    PROGRAM = "server"  # how its death is reported
    _proc: subprocess.Popen[bytes] | None = None
    port = 0
    defaults: ServerDefaults | None = None

    @property
    def target(self) -> ServerTarget:
        return ServerTarget(f"http://{self.serve.host}:{self.port}/v1", self.api_key, self.model_name, self.defaults)

    @property
    def pgid(self) -> int | None:
        """Process group of the server and its children (None before start)."""
        return self._proc.pid if self._proc is not None else None

    def __enter__(self):
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def _log_tail(self) -> str:
        raise NotImplementedError

    def _launched(self, proc: subprocess.Popen[bytes]) -> None:
        """Takes charge of a started process: stopped at interpreter exit (and SIGTERM) if not before."""
        self._proc = proc
        _LIVE.add(self)

    def check_alive(self) -> None:
        """Raises ServerError with the log tail if the server process has exited."""
        self._raise_if_exited("while serving")

    def stop(self) -> None:
        """Stops the whole process group: SIGTERM, then SIGKILL after STOP_GRACE_S. Idempotent."""
        proc = self._proc
        _LIVE.discard(self)
        if proc is None:
            return
        try:
            stop_process_group(proc)
        finally:
            self._proc = None

    def _raise_if_exited(self, when: str) -> None:
        if self._proc is not None and (code := self._proc.poll()) is not None:
            self.stop()
            raise ServerError(f"{self.PROGRAM} exited with code {code} {when}; {self._log_tail()}")


class VllmServer(ChildServer):
    """A vLLM OpenAI server child process in its own process group, used as a context manager.

    ``with VllmServer(path, serve, run_dir, served_model_name="m") as server:`` writes
    run_dir/vllm_config.yaml, starts the server on loopback with a fresh API key, waits for
    /health and /v1/models, and on every way out stops the whole process group.
    """

    PROGRAM = "vLLM server"

    def __init__(
        self,
        model_path: str | Path,
        serve: ServeConfig,
        run_dir: Path,
        *,
        served_model_name: str,
        dtype: str = "auto",
        platform: Platform | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.serve = serve
        self._extra_env = dict(env or {})  # the harness's own additions (e.g. cache-reset routes)
        # Absolute: the server runs in run_dir, where a path relative to our cwd means nothing.
        self.run_dir = Path(run_dir).resolve()
        self.config_path = self.run_dir / CONFIG_NAME
        self.log_path = self.run_dir / LOG_NAME
        self.model_name = served_model_name
        self.api_key = serve.api_key or secrets.token_urlsafe(24)
        self._platform = platform
        self._model_path = str(Path(model_path).resolve()) if Path(model_path).exists() else str(model_path)
        self._dtype = dtype
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.defaults: ServerDefaults | None = None  # read once the server is ready
        self.gpus: tuple[str, ...] = ()  # its CUDA_VISIBLE_DEVICES entries once started (GPU UUIDs); () on a CPU

    def start(self) -> None:
        """Writes vllm_config.yaml and launches the server (returns without waiting)."""
        platform = self._platform or detect_platform()
        env = self._env(platform)
        check_plugin_support(self._model_path, env)  # a FLAP-pruned one needs our vLLM plugin
        if platform.device == "cuda":  # what the meter reads: the platform's UUIDs, unless serve.env names others
            self.gpus = tuple(g.strip() for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip())
        serve = self.serve
        if serve.enforce_eager is None:
            serve = replace(serve, enforce_eager=default_enforce_eager(platform))
        args = vllm_args(self._model_path, serve, served_model_name=self.model_name, dtype=self._dtype)
        write_vllm_config(self.config_path, args)
        self.port = self.serve.port or free_port(self.serve.host)
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--config", str(self.config_path),
                   "--host", self.serve.host, "--port", str(self.port)]
        install_sigterm_handler()
        with self.log_path.open("ab") as log:
            self._launched(subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=self.run_dir, start_new_session=True,
            ))

    def wait_ready(self) -> None:
        """Blocks until /health answers and /v1/models lists the served model.

        Raises:
            ServerError: the server exited, or startup_timeout_s passed; with the log tail.
        """
        import httpx  # lazy: comes with the openai client

        deadline = time.monotonic() + self.serve.startup_timeout_s
        root = f"http://{self.serve.host}:{self.port}"
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                self._raise_if_exited("during startup")
                if (card := served_model_card(client, root, headers, self.model_name)) is not None:
                    # The checkpoint's generation config as this server read it, and its context length.
                    self.defaults = server_defaults(self._model_path, self.serve.generation_config,
                                                    card.get("max_model_len"))
                    return
                time.sleep(_POLL_S)
        raise ServerError(
            f"vLLM server not ready after {self.serve.startup_timeout_s:g} s "
            f"(raise serve.startup_timeout_s if it was still loading); {self._log_tail()}"
        )

    def _env(self, platform: Platform) -> dict[str, str]:
        env = server_env(self.serve, platform)
        env["VLLM_API_KEY"] = self.api_key  # by environment: never in the YAML, argv or the log
        env.update(self._extra_env)
        return env

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError as err:
            return f"its log {self.log_path} could not be read ({err})"
        return f"last {len(lines)} lines of {self.log_path}:\n" + "\n".join(lines)


def server_env(serve: ServeConfig, platform: Platform, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: ours (``environ``, default os.environ), what the platform needs, then serve.env.

    On a GPU the server runs on exactly ``platform.gpus``, named by UUID with PCI bus order, so
    that it and the NVML meter (which reads the same UUIDs) mean the same GPUs whatever order
    CUDA would enumerate them in. serve.env is applied last: a setting the user gives there wins.
    """
    env = dict(os.environ if environ is None else environ)
    if platform.device == "cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(serve.cpu_kvcache_space_gib))
    if platform.device == "cuda":
        # vLLM 0.33 turns on the FlashInfer top-k/top-p sampler, which JIT-compiles at engine
        # warm-up and needs nvcc, ninja on PATH and a C++ compiler, else the engine dies. Seeded
        # requests (sampling.send=explicit) take vLLM's native sampler anyway; with this, unseeded
        # ones (sampling.send=messages) do too. serve.env.VLLM_USE_FLASHINFER_SAMPLER=1 turns it back on.
        env.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
        if platform.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(platform.gpus)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env.update({str(k): str(v) for k, v in serve.env.items()})
    return env


def served_model_card(client: Any, root: str, headers: dict[str, str], model_name: str) -> dict[str, Any] | None:
    """The served model's /v1/models entry once the server answers, else None."""
    import httpx

    try:
        if client.get(f"{root}/health").status_code != 200:
            return None
        models = client.get(f"{root}/v1/models", headers=headers)
    except httpx.TransportError:  # not listening yet
        return None
    if models.status_code != 200:
        return None
    return next((m for m in models.json().get("data", []) if m.get("id") == model_name), None)


def stop_process_group(proc: subprocess.Popen) -> None:
    """Stops a child started in its own process group: SIGTERM, then SIGKILL what is left."""
    _signal_group(proc.pid, signal.SIGTERM)
    _signal_group(proc.pid, signal.SIGCONT)  # a stopped (Ctrl-Z, SIGSTOP) group acts on SIGTERM only once continued
    try:
        proc.wait(timeout=STOP_GRACE_S)
        _wait_group_gone(proc.pid, STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    finally:  # also on a second Ctrl-C while waiting: never leave the group behind
        if proc.poll() is None or _group_alive(proc.pid):
            _signal_group(proc.pid, signal.SIGKILL)  # whatever ignored SIGTERM
        proc.wait()


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group is already gone
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _stop_all() -> None:
    for server in list(_LIVE):
        server.stop()


def install_sigterm_handler() -> None:
    """Makes SIGTERM unwind like Ctrl-C so context managers stop servers (only if unhandled)."""
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: atexit still covers a normal exit
        pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"interrupted by {signal.Signals(signum).name}")

