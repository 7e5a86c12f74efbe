"""Preflight checks of user input that need no build or server: values, port, disk, model folder code."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from harness.build import BuildError
from harness.config import RunConfig, ServeConfig
from harness.config_build import ConfigError

log = logging.getLogger(__name__)

# The smallest prompt a suite request can have: Gemma 4's smallest image budget (70) gives
# 64 soft tokens, plus the image delimiters and the question (measured: ~86 with the tiny model).
MIN_PROMPT_TOKENS = 64
# Room for config.json, tokenizer and recipe files beside the weights of a built checkpoint.
SIDE_FILES_MARGIN_BYTES = 16 * 2**20


def check_ranges(run: RunConfig) -> None:
    """Values the schema's types allow but no run can use (called by config._check_values).

    Raises:
        ConfigError: names the key, the value and the accepted range.
    """
    s, serve, e = run.sampling, run.serve, run.energy
    rules = [
        ("sampling.temperature", s.temperature, s.temperature >= 0, ">= 0 (0 is greedy)"),
        ("sampling.top_p", s.top_p, 0 < s.top_p <= 1, "in (0, 1]"),
        ("sampling.top_k", s.top_k, s.top_k >= -1, "-1 or 0 (off) or a positive count"),
        ("serve.port", serve.port, 0 <= serve.port <= 65535, "in [0, 65535] (0 = a free port)"),
        ("serve.max_num_seqs", serve.max_num_seqs, serve.max_num_seqs is None or serve.max_num_seqs >= 1, ">= 1 or null"),
        ("serve.max_model_len", serve.max_model_len, serve.max_model_len is None or serve.max_model_len > 0, "> 0 or null"),
        ("serve.cpu_kvcache_space_gib", serve.cpu_kvcache_space_gib, serve.cpu_kvcache_space_gib >= 1, ">= 1"),
        ("serve.limit_mm_per_prompt.image", serve.limit_mm_per_prompt.get("image", 0),
         serve.limit_mm_per_prompt.get("image", 0) >= 1, ">= 1 (every suite request carries one image)"),
        ("energy.cpu_idle_w", e.cpu_idle_w, e.cpu_idle_w >= 0, ">= 0"),
        ("energy.cpu_active_w", e.cpu_active_w, e.cpu_active_w >= e.cpu_idle_w, f">= energy.cpu_idle_w ({e.cpu_idle_w:g})"),
        ("quality.confidence", run.quality.confidence, 0 < run.quality.confidence < 1, "in (0, 1)"),
    ]
    for key, value, ok, accepted in rules:
        if not ok:
            raise ConfigError(f"{key}={value} is out of range: use a value {accepted}")
    _check_context(serve, s.max_tokens)


def _check_context(serve: ServeConfig, max_tokens: int) -> None:
    need = max_tokens + (serve.max_soft_tokens or MIN_PROMPT_TOKENS)
    if serve.max_model_len is not None and serve.max_model_len < need:
        raise ConfigError(f"serve.max_model_len={serve.max_model_len} cannot hold sampling.max_tokens={max_tokens} "
                          f"plus an image prompt (at least {need - max_tokens} tokens): raise serve.max_model_len to "
                          f">= {need} or lower sampling.max_tokens")


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


def estimate_checkpoint_bytes(src: Path, compress_config: Any) -> int:
    """Bytes a compressed copy of ``src`` will take: quantized linears at the scheme's bytes per
    weight plus their scales, every other tensor as stored in the source, plus side files.
    Pruning and multi-step configs are bounded by the source's own size (they only shrink it)."""
    from compress.plan import plan_modules

    from harness.checkpoint_check import DTYPE_BYTES, read_tensors

    tensors = read_tensors(src)
    if not hasattr(compress_config, "effective_targets"):
        return SIDE_FILES_MARGIN_BYTES + sum(t.nbytes for t in tensors.values())
    shapes = {n[: -len(".weight")]: t.shape for n, t in tensors.items() if n.endswith(".weight")}
    try:
        plan = plan_modules(shapes, compress_config)
    except ValueError as err:
        raise BuildError(f"cannot compress {src}: {err}") from err
    total = SIDE_FILES_MARGIN_BYTES
    for name, info in tensors.items():
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module in plan:
            total += _stored_bytes(info.shape, plan[module], DTYPE_BYTES[info.dtype])
        else:
            total += info.nbytes
    return total


def _stored_bytes(shape: tuple[int, ...], spec: Any, scale_bytes: int) -> int:
    """Bytes of one quantized [out, in] weight: its codes and its scales (in the source dtype)."""
    out_f, in_f = shape
    if spec.weight == "int4_group":
        return out_f * in_f // 2 + out_f * (in_f // spec.group_size) * scale_bytes + 2 * 8  # + weight_shape
    scales = 1 if spec.weight.endswith("_tensor") else out_f
    return out_f * in_f + scales * scale_bytes  # one byte per FP8 or int8 code


def check_build(run: RunConfig, spec: Any) -> None:
    """Refuses a damaged cached build, or a new build whose estimated output does not fit in
    the free space of cache_dir."""
    from harness.build import cached_build_dir, local_model_dir
    from harness.checkpoint_check import check_checkpoint
    from harness.config import to_compress_config

    config = to_compress_config(spec)
    base = Path(run.model.resolved_path()).expanduser()
    if config is None or not base.is_dir():
        return
    src = local_model_dir(str(base))
    cache = Path(run.cache_dir)
    cached = cached_build_dir(run, spec, src, config)
    if (cached / "config.json").is_file():
        check_checkpoint(cached)  # refused now rather than when the server loads it
        return
    need = estimate_checkpoint_bytes(src, config)
    free = shutil.disk_usage(_existing_parent(cache)).free
    if free < need:
        raise BuildError(f"cache_dir {cache} has {free / 2**30:.2f} GiB free but the {spec.scheme} checkpoint needs about "
                         f"{need / 2**30:.2f} GiB: free space there or set cache_dir to a larger disk")


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path


def check_model_code(folder: Path, serve: ServeConfig, environ: dict[str, str] | None = None) -> list[str]:
    """Code shipped inside a model folder (*.py, config.json auto_map) runs only on opt-in.

    Returns:
        Notes to show the user (what code was found and that it is not imported).

    Raises:
        ConfigError: PYTHONPATH (of this process or serve.env) points into the folder, so
            the server would import its code, and serve.trust_remote_code is off.
    """
    from harness.checkpoint_check import read_config

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
        raise ConfigError(f"PYTHONPATH entry {inside[0]} lies inside model folder {folder}, which ships code ({found}) "
                          "the server would import: remove it from PYTHONPATH, or opt in with serve.trust_remote_code=true")
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
    from harness.checkpoint_check import check_checkpoint

    check_port(check.serve)
    folder = Path(run.model.resolved_path()).expanduser()
    if folder.is_dir():
        check_checkpoint(folder)
        for note in check_model_code(folder, check.serve):
            log.warning(note)
    check_build(run, check.compress or run.compress)


def unknown_variant(argv: list[str]) -> str | None:
    """The one-line error for a ``variant=`` override naming no file in conf/variant/, else None.

    Sweep expressions (``glob(*)``, ``range(...)``) are left to Hydra; comma lists are checked
    item by item.
    """
    from harness.config import group_options

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
