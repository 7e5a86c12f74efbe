"""Preflight: every check that needs no build or server, cheapest first, before any work starts."""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path
from typing import Any

from harness.build.headers import check_headers, read_config
from harness.build.variant import check_build, check_model
from harness.config.schema import RunConfig, ServeConfig, group_options
from harness.energy import check_meter
from harness.errors import ConfigError, PlatformError
from harness.score.lmeval.engine import check_engine
from harness.serve.capabilities import Platform, PlatformCheck, check_platform
from harness.serve.generation import Change, changes_from_base, describe_defaults, server_defaults
from harness.serve.llama_cpp import check_llama_config, server_help
from harness.serve.llama_cpp_home import LlamaCppMissing, binary, build_info
from harness.serve.vllm import vllm_args
from harness.trials import server_mode

log = logging.getLogger(__name__)


def preflight(run_cfg: RunConfig) -> PlatformCheck:
    """Every check that needs no build or server: platform capabilities, model, inputs, quality engine.

    Returns:
        The PlatformCheck (effective serve settings and the fallbacks taken).

    Raises:
        HarnessError: one sentence naming the problem and the fix.
    """
    check_serving_engine(run_cfg)
    check = check_platform(run_cfg)
    check_llama_platform(run_cfg, check.platform)
    check_results_dir(run_cfg.results_dir)
    check_meter(run_cfg.energy.meter)
    check_model(run_cfg.model.resolved_path())
    check_inputs(run_cfg, check)  # port, checkpoint headers, code in the model folder, disk space
    check_engine(run_cfg)  # quality.engine=lm_eval: lm-eval tasks known and generative
    for note in generation_notes(run_cfg, check.serve):
        log.warning(note)
    return check


# compress schemes that write a GGUF folder (compress/gguf.py): served by llama.cpp only, and only they are.
GGUF_PREFIX = "gguf_"
# Serve settings that change what the judges' vLLM decodes but that llama-server cannot take.
_VLLM_ONLY_BEHAVIOUR = ("chat_template", "generation_config")
# vLLM sizing settings a model or variant file may set; llama-server runs at its own defaults instead.
_VLLM_ONLY_SIZING = ("max_model_len", "max_num_seqs", "enable_chunked_prefill", "enable_prefix_caching",
                     "max_soft_tokens")


def check_serving_engine(run: RunConfig) -> None:
    """The engine can serve the variant: GGUF folders on llama.cpp (built here), everything else on vLLM.

    Raises:
        ConfigError: one sentence naming the fix.
    """
    gguf = run.compress.scheme.startswith(GGUF_PREFIX)
    if run.engine.name == "vllm":
        if gguf:
            raise ConfigError(f"compress scheme {run.compress.scheme} writes a GGUF, which vLLM does not serve here: "
                              "run it with engine=llama_cpp (the gguf_* variants set it)")
        return
    if not gguf:
        raise ConfigError(f"engine=llama_cpp serves GGUF variants only, and compress scheme {run.compress.scheme} "
                          "is a vLLM checkpoint: pick a gguf_* variant (e.g. +variant=gguf_q4_k_m) or engine=vllm")
    set_here = [f"serve.{key}" for key in _VLLM_ONLY_BEHAVIOUR if getattr(run.serve, key)]
    if set_here:
        raise ConfigError(f"{', '.join(set_here)} is a vLLM setting that llama-server cannot take (the GGUF carries "
                          "the chat template): drop it, or pass llama-server's own option in engine.llama_config")
    try:
        binary("llama-server")
    except LlamaCppMissing as err:
        raise ConfigError(str(err)) from err
    problem = check_llama_config(run.engine.llama_config, server_help() if run.engine.llama_config else "")
    if problem:
        raise ConfigError(problem)
    ignored = [f"serve.{key}={getattr(run.serve, key)}" for key in _VLLM_ONLY_SIZING if getattr(run.serve, key)]
    if ignored:
        log.warning("engine=llama_cpp: %s apply to vLLM only; llama-server runs at its own defaults unless "
                    "engine.llama_config sets its options (e.g. ctx-size, parallel)", ", ".join(ignored))


def check_llama_platform(run: RunConfig, platform: Platform) -> None:
    """llama.cpp's build must fit this machine: built for this CPU's instruction set (-march=native), and
    with CUDA when the run meters a GPU (else the meter would read a GPU the server never uses).

    Raises:
        PlatformError: one sentence naming the fix.
    """
    if run.engine.name != "llama_cpp":
        return
    info = build_info()
    missing = sorted(set(info.get("cpu_flags") or ()) - platform.cpu_flags) if platform.cpu_flags else []
    if missing:
        raise PlatformError(f"llama.cpp here was built for a CPU with {', '.join(missing[:4])}, which this CPU lacks: "
                            "rebuild it for this machine with `bash scripts/install.sh`")
    if platform.device == "cuda" and info.get("flavour") != "gpu":
        raise PlatformError("llama.cpp here is a CPU build, but the run would meter the GPU: build it with CUDA "
                            "(`bash scripts/install.sh gpu`), or serve on the CPU with CUDA_VISIBLE_DEVICES=")


def generation_changes(run: RunConfig, serve: ServeConfig, served_dir: str | Path | None = None) -> list[Change]:
    """How the generation config and chat template served differ from the base model's, with what each changes.

    ``served_dir``: the checkpoint served (None: the base model, whose generation and template
    files a build copies unchanged, compress.export.copy_side_files); serve.generation_config
    and serve.chat_template count as served. [] when the base model is not a local folder.
    """
    base = Path(run.model.resolved_path()).expanduser()
    if not base.is_dir() or run.engine.name == "llama_cpp":  # a GGUF's template: read back from the server
        return []
    served = Path(served_dir) if served_dir is not None and Path(served_dir).is_dir() else base
    return changes_from_base(served, base, vllm_args(served, serve, served_model_name="model"))


def generation_notes(run: RunConfig, serve: ServeConfig) -> list[str]:
    """Warnings for what changes the judged behaviour: every change from the base model's generation
    config or chat template and, when requests carry no sampling, what the server fills in."""
    notes = [str(change) for change in generation_changes(run, serve)]
    if run.engine.name == "llama_cpp":
        return notes + (["sampling.send=messages: requests carry no sampling; llama-server fills in its own "
                         "defaults (read back from it and recorded in result.json serve.engine.sampling)"]
                        if run.sampling.send == "messages" else [])
    defaults = server_defaults(Path(run.model.resolved_path()).expanduser(), serve.generation_config)
    if run.sampling.send == "messages" and defaults is not None:
        notes.append(f"sampling.send=messages: requests carry no sampling; the server fills in "
                     f"{describe_defaults(defaults)}")
    return notes


def check_session(run_cfg: RunConfig, check: PlatformCheck, with_baseline: bool) -> str:
    """How the trials' servers run (``trial_server`` resolved for this platform), refusing what cannot work.

    Shared mode with a baseline keeps two servers up at once: they cannot share a fixed port,
    and on a GPU both must fit in its memory.

    Raises:
        ConfigError: the setting that fixes it.
    """
    try:
        server_mode(run_cfg.trial_server, check.platform.device, run_cfg.engine.name)  # llama.cpp: never shared
    except ValueError as err:
        raise ConfigError(str(err)) from err
    mode = server_mode(run_cfg.trial_server, check.platform.device)  # vLLM arms'; llama.cpp arms run fresh
    if mode != "shared" or not with_baseline:
        return mode
    if run_cfg.serve.port:
        raise ConfigError(f"serve.port={run_cfg.serve.port} is fixed, but trial_server=shared runs the baseline's and "
                          "the variant's servers at once: set serve.port=0 or trial_server=fresh")
    if check.platform.device == "cuda" and run_cfg.serve.gpu_memory_utilization > 0.45:
        raise ConfigError("trial_server=shared keeps the baseline's and the variant's servers on the GPU at once: "
                          "set trial_server=fresh (or serve.gpu_memory_utilization<=0.45)")
    return mode


def check_results_dir(results_dir: str | Path) -> None:
    """results_dir must be a folder, or creatable as one (nothing is created here).

    Raises:
        ConfigError: the path, or one of its parents, is a file or not writable.
    """
    path = Path(results_dir).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"results_dir={results_dir}: {existing} is a file, not a folder: set results_dir to a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"results_dir={results_dir}: {existing} is not writable: set results_dir to a folder "
                          "you can write")


def check_port(serve: ServeConfig) -> None:
    """A fixed serve.port must be free now (0 lets the server pick one at launch)."""
    if not serve.port:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As uvicorn does: a port left in TIME_WAIT by a finished server is usable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((serve.host, serve.port))
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise ConfigError(f"serve.host={serve.host} serve.port={serve.port} cannot be bound ({err.strerror}): "
                                  "use a local address such as 127.0.0.1") from err
            raise ConfigError(f"serve.port={serve.port} on {serve.host} is already in use by another process: stop it, "
                              "pick another port, or set serve.port=0 to let the harness choose a free one") from err


def check_model_code(folder: Path, serve: ServeConfig, environ: dict[str, str] | None = None) -> list[str]:
    """Code shipped inside a model folder (*.py, config.json auto_map) runs only on opt-in.

    Returns:
        Notes to show the user (what code was found and that it is not imported).

    Raises:
        ConfigError: PYTHONPATH (of this process or serve.env) points into the folder, so
            the server would import its code, and serve.trust_remote_code is off.
    """
    code = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.py"))
    auto_map = read_config(folder).get("auto_map")
    if not code and not auto_map:
        return []
    found = ", ".join(code[:3] + (["..."] if len(code) > 3 else []) + (["config.json auto_map"] if auto_map else []))
    if serve.trust_remote_code:
        return [f"model folder {folder} ships code ({found}) and serve.trust_remote_code=true: the server may run it"]
    env = {**(environ if environ is not None else os.environ), **{str(k): str(v) for k, v in serve.env.items()}}
    inside = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and _is_within(Path(p), folder)]
    if inside:
        raise ConfigError(f"PYTHONPATH entry {inside[0]} lies inside model folder {folder}, which ships code "
                          f"({found}) the server would import: remove it from PYTHONPATH, or opt in with "
                          "serve.trust_remote_code=true")
    return [f"model folder {folder} ships code ({found}); it is not imported (serve.trust_remote_code=false, folder "
            "not on PYTHONPATH): set serve.trust_remote_code=true to opt in"]


def _is_within(path: Path, folder: Path) -> bool:
    path, folder = path.expanduser().resolve(), folder.resolve()
    return path == folder or folder in path.parents


def check_inputs(run: RunConfig, check: Any) -> None:
    """Every input check that needs neither a build nor a server, in order of cost.

    Args:
        run: the run's configuration.
        check: the PlatformCheck (its ``compress`` is the scheme that will be built).

    Raises:
        ConfigError or BuildError: one sentence naming the problem and the fix.
    """
    check_port(check.serve)
    folder = Path(run.model.resolved_path()).expanduser()
    if folder.is_dir():
        check_headers(folder)
        for note in check_model_code(folder, check.serve):
            log.warning(note)
    check_build(run, check.compress or run.compress)


def unknown_variant(argv: list[str]) -> str | None:
    """The one-line error for a ``variant=`` override naming no file in conf/variant/, else None.

    Sweep expressions (``glob(*)``, ``range(...)``) are left to Hydra; comma lists are checked
    item by item.
    """
    known = group_options("variant")
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key != "variant" or "(" in value:
            continue
        for name in (v.strip() for v in value.split(",")):
            if name not in known:
                return (f"unknown variant {name!r}: choose one of {', '.join(known)} "
                        f"(or add conf/variant/{name}.yaml)")
    return None
