"""Launches llama.cpp's `llama-server` the judges' way on a GGUF variant folder, and always stops it.

The judges run `llama-server -hf <repo>`: llama-server takes the repository's model GGUF and
the mmproj (vision projector) GGUF beside it, and every other setting at its own default. The
harness does the same with the variant's folder (the one model GGUF and its mmproj), adding
only what belongs to this machine and run (loopback host, a free port, the run's API key, the
served name) and the options of the submission's own llama config (``engine.llama_config``,
written to llama_config.yaml in the run directory). After readiness it reads back what the
server really uses (context, slots, threads, batch sizes, GPU layers, flash attention, chat
template) from its /props route and its log, for the result (harness.serve.llama_cpp_settings).
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.config.schema import EngineConfig, ServeConfig
from harness.errors import ServerError
from harness.serve.capabilities import Platform, detect_platform
from harness.serve.generation import ServerDefaults
from harness.serve.llama_cpp_home import binary
from harness.serve.llama_cpp_settings import effective_settings, probe_log, server_defaults
from harness.serve.vllm import (
    LOG_NAME,
    LOG_TAIL_LINES,
    ChildServer,
    free_port,
    install_sigterm_handler,
    served_model_card,
)

CONFIG_NAME = "llama_config.yaml"
# llama-server applies a machine's config.ini before its command line (llama.cpp docs/preset.md): the
# system-wide one, and $XDG_CONFIG_HOME/llama.cpp/config.ini. A measured launch uses neither.
SYSTEM_CONFIG = Path("/etc/llama.cpp/config.ini")
USER_CONFIG_DIR = "llama_xdg_config"  # an empty XDG_CONFIG_HOME in the run directory
PROBE_LOG_NAME = "llama_probe.log"
MMPROJ_PREFIX = "mmproj"
_POLL_S = 0.2
# Options the harness sets itself: the model files come from the variant folder, the rest from this run.
RESERVED_OPTIONS = frozenset({
    "model", "m", "mmproj", "no-mmproj", "mmproj-auto", "no-mmproj-auto", "mmproj-url", "model-url", "mu",
    "hf-repo", "hf", "hfr", "hf-file", "hff", "hf-token", "hft", "alias", "a", "host", "port", "api-key",
    "api-key-file", "ssl-key-file", "ssl-cert-file", "log-file",
})



def gguf_files(folder: str | Path) -> tuple[Path, Path]:
    """(model GGUF, mmproj GGUF) of a variant folder, as `llama-server -hf` resolves a repository.

    Raises:
        ServerError: the folder does not hold exactly one model GGUF and one mmproj GGUF.
    """
    folder = Path(folder)
    ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    models = [p for p in ggufs if not p.name.startswith(MMPROJ_PREFIX)]
    projectors = [p for p in ggufs if p.name.startswith(MMPROJ_PREFIX)]
    if len(models) != 1 or len(projectors) != 1:
        found = ", ".join(p.name for p in ggufs) or "none"
        raise ServerError(f"{folder} is not a GGUF variant folder: it needs one model GGUF and one "
                          f"{MMPROJ_PREFIX}*.gguf (found: {found}); rebuild it with `python -m compress SRC OUT "
                          "--scheme gguf_...`")
    return models[0], projectors[0]


def machine_free_env(config_home: Path) -> dict[str, str]:
    """This process's environment minus what would change a llama-server launch unseen: inherited
    LLAMA_ARG_* settings, and this user's config.ini (XDG_CONFIG_HOME becomes ``config_home``, created
    empty if missing). The system-wide SYSTEM_CONFIG cannot be masked: callers refuse to launch with it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
    config_home.mkdir(parents=True, exist_ok=True)
    env["XDG_CONFIG_HOME"] = str(config_home)
    return env


def llama_args(llama_config: Mapping[str, Any]) -> list[str]:
    """The llama config as llama-server arguments: ``--NAME VALUE``; true a bare flag; false or null left out."""
    args: list[str] = []
    for name, value in llama_config.items():
        if value is None or value is False:
            continue
        args.append(f"--{name}")
        if value is not True:
            args.append(str(value))
    return args


def check_llama_config(llama_config: Mapping[str, Any], help_text: str) -> str | None:
    """Why ``llama_config`` cannot be passed to this llama-server (``help_text``: its --help), else None."""
    known = set(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", help_text))
    for name, value in llama_config.items():
        name = str(name)
        if name.startswith("-"):
            return f"engine.llama_config.{name}: write the option without its leading dashes"
        if name in RESERVED_OPTIONS:
            return (f"engine.llama_config.{name}: the harness sets it (model files from the variant folder; host, "
                    "port, API key and alias per run): remove it")
        if known and name not in known:
            return f"engine.llama_config.{name}: llama-server has no option --{name} (see `llama-server --help`)"
        if isinstance(value, (Mapping, list, tuple)):
            return f"engine.llama_config.{name}: give one value (a string, number or true/false), not {value!r}"
    return None


def server_help() -> str:
    """`llama-server --help` of the build (the option names it accepts)."""
    done = subprocess.run([str(binary("llama-server")), "--help"], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL, check=False)
    return done.stdout + done.stderr


class LlamaServer(ChildServer):
    """A llama-server child process in its own process group, used as a context manager.

    The lifecycle is ChildServer's, as for VllmServer (``target``, ``pgid``, ``gpus``,
    ``log_path``, ``defaults``), plus ``effective``: the settings read
    back from the running server (``effective_settings``). ``probe``: first launch the same
    command once with --verbosity 4 to read the settings the default log leaves out (about a
    second on the tiny model; fresh trials of one variant need it only once).
    """

    engine = "llama_cpp"
    PROGRAM = "llama-server"

    def __init__(
        self,
        model_dir: str | Path,
        serve: ServeConfig,
        engine: EngineConfig,
        run_dir: Path,
        *,
        served_model_name: str,
        platform: Platform | None = None,
        env: Mapping[str, str] | None = None,
        probe: bool = True,
    ) -> None:
        self.serve, self.engine_config = serve, engine
        self.probe = probe  # read the loader's settings from a probe launch first (probe_log)
        self._probe_text = ""
        self._extra_env = dict(env or {})
        self.run_dir = Path(run_dir).resolve()
        self.config_path = self.run_dir / CONFIG_NAME
        self.log_path = self.run_dir / LOG_NAME
        self.model_name = served_model_name
        self.api_key = serve.api_key or secrets.token_urlsafe(24)
        self.model_dir = Path(model_dir).resolve()
        self._platform = platform
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where this start's lines begin in the (appended) log
        self.port = 0
        self.defaults: ServerDefaults | None = None
        self.effective: dict[str, Any] = {}
        self.gpus: tuple[str, ...] = ()
        self.startup_timeout_s = engine.startup_timeout_s or serve.startup_timeout_s

    def command(self, port: int) -> list[str]:
        """llama-server's argv (no secret in it: the API key goes by environment)."""
        model, mmproj = gguf_files(self.model_dir)
        return [str(binary("llama-server")), "--model", str(model), "--mmproj", str(mmproj),
                "--alias", self.model_name, "--host", self.serve.host, "--port", str(port),
                *llama_args(self.engine_config.llama_config)]

    def start(self) -> None:
        """Writes llama_config.yaml and launches the server (returns without waiting)."""
        import yaml  # lazy: PyYAML comes with Hydra

        platform = self._platform or detect_platform()
        env = self._env(platform)
        if platform.device == "cuda":
            self.gpus = tuple(g.strip() for g in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(dict(self.engine_config.llama_config), sort_keys=False))
        self.port = self.serve.port or free_port(self.serve.host)
        command = self.command(self.port)
        install_sigterm_handler()
        if self.probe:
            probe_env = {**env, "LLAMA_API_KEY": secrets.token_urlsafe(24)}
            self._probe_text = probe_log(self.command(free_port(self.serve.host)), probe_env,
                                         self.run_dir / PROBE_LOG_NAME, self.startup_timeout_s)
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._launched(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, cwd=self.run_dir, start_new_session=True))

    def wait_ready(self) -> None:
        """Blocks until /health answers and /v1/models lists the served name, then reads the settings back.

        Raises:
            ServerError: the server exited, or the startup timeout passed; with the log tail.
        """
        import httpx  # lazy: comes with the openai client

        deadline = time.monotonic() + self.startup_timeout_s
        root = f"http://{self.serve.host}:{self.port}"
        headers = {"Authorization": f"Bearer {self.api_key}"}
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                self._raise_if_exited("during startup")
                if served_model_card(client, root, headers, self.model_name) is not None:
                    props = client.get(f"{root}/props", headers=headers)
                    props.raise_for_status()
                    self.effective = effective_settings(props.json(), self._own_log(), self._probe_text)
                    self.defaults = server_defaults(self.effective)
                    return
                time.sleep(_POLL_S)
        raise ServerError(f"llama-server not ready after {self.startup_timeout_s:g} s (raise "
                          f"engine.startup_timeout_s if it was still loading); {self._log_tail()}")

    def _env(self, platform: Platform) -> dict[str, str]:
        """Ours without inherited LLAMA_ARG_* settings or a config.ini (they would change the judged launch unseen), the
        GPUs pinned by UUID as for vLLM, serve.env, and the API key (by environment: never in argv or files)."""
        if SYSTEM_CONFIG.exists():
            raise ServerError(f"{SYSTEM_CONFIG} exists: llama-server would apply it to this launch, which would not "
                              f"be the judges' one; move it away to measure")
        env = machine_free_env(self.run_dir / USER_CONFIG_DIR)
        if platform.device == "cuda" and platform.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(platform.gpus)
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        env.update({str(k): str(v) for k, v in self.serve.env.items()})
        env.update(self._extra_env)
        env["LLAMA_API_KEY"] = self.api_key
        return env

    def _own_log(self) -> str:
        """This start's lines of the server log (fresh trials append to one log)."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                return log.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _log_tail(self) -> str:
        lines = self._own_log().splitlines()[-LOG_TAIL_LINES:]
        return f"last {len(lines)} lines of {self.log_path}:\n" + "\n".join(lines)
