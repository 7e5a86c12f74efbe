"""The build step: the variant's checkpoint, from the cache or made by `compress`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from compress.configs import calibrates, config_to_dict, uses_llama_cpp
from compress.llama_cpp_home import build_info
from harness.build.calibration import suite_source
from harness.build.disk import require_space
from harness.build.headers import check_headers
from harness.config.schema import CompressSpec, RunConfig, to_compress_config
from harness.errors import BuildError

COMPRESS_SRC = Path(__file__).resolve().parents[2] / "compress"
# What a base model's fingerprint reads of each weight file (see _weights_digest).
FULL_HASH_BYTES = 64 * 2**20
SAMPLES, SAMPLE_BYTES = 64, 64 * 2**10
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "tokenizer.model")
# What a served or compressed checkpoint needs from a hub repository (weights, configs, tokenizer,
# chat template), leaving out what vLLM never reads (other formats, images of the model card).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]
# BUILD.json fields that say when and how fast llama.cpp was built, not what was built.
BUILD_TIMING = ("date", "build_seconds", "download_seconds")


def is_hub_id(path_or_id: str) -> bool:
    """Whether ``path_or_id`` names a hub repository (org/name) rather than a local folder."""
    looks_local = path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1
    return not looks_local and not Path(path_or_id).expanduser().exists()


def local_model_dir(path_or_id: str, log=None) -> Path:
    """A local folder for `path_or_id`: the folder itself, or its hub snapshot (fetch_hub_model)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BuildError(f"{path} has no config.json: point model.path at a transformers checkpoint folder")
        return path
    if not is_hub_id(path_or_id):
        raise BuildError(f"model path {path_or_id!r} is not a folder: give a checkpoint folder or a hub id "
                         "like org/name")
    return fetch_hub_model(path_or_id, log)


def fetch_hub_model(repo_id: str, log=None) -> Path:
    """The hub checkpoint ``repo_id`` as a folder of the hub cache, downloaded now where files are missing.

    Called by the build step, before any server starts, so that a first run's download (about
    16 GB for Gemma 4 E4B) shows its progress here and never counts against
    serve.startup_timeout_s: the server is given the folder, never the hub id. Files already
    cached are not fetched again; with HF_HUB_OFFLINE=1 the cached snapshot is used as it is.
    """
    from huggingface_hub import snapshot_download  # lazy; only real models come from a hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if log is not None:
        log(f"build: {repo_id} from the hub cache (files missing there are downloaded now, with progress, "
            "before the server starts)")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise BuildError(f"cannot fetch {repo_id} from the hub ({err}); download it first and set model.path "
                         "to the folder") from err


def check_model(path_or_id: str) -> None:
    """Refuses, before any work, a model path that is neither a checkpoint folder nor a hub id."""
    if Path(path_or_id).expanduser().exists():
        local_model_dir(path_or_id)  # a folder with a config.json, or one line saying what is wrong
        return
    if not is_hub_id(path_or_id):
        hint = (" (the committed tiny model is missing: restore it with git or rebuild it with "
                "`python -m harness.tiny.train`)" if "tiny-gemma4" in path_or_id else "")
        raise BuildError(f"model folder {path_or_id} does not exist{hint}: set model.path to a checkpoint folder "
                         "or hub id")


def fingerprint(model_dir: Path) -> str:
    """Hash of a checkpoint folder's config.json, tokenizer and chat template files and weight files' contents.

    Contents, not names and sizes: a retrained or fine-tuned model of the same shape must
    not be handed another model's build (see _weights_digest for what is read).
    """
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    # What a built checkpoint copies beside the weights (a GGUF holds the tokenizer and template).
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            digest.update(name.encode() + hashlib.sha256((model_dir / name).read_bytes()).digest())
    for weights in sorted(model_dir.glob("*.safetensors")):
        digest.update(f"{weights.name}:{_weights_digest(weights)}".encode())
    return digest.hexdigest()[:16]


def _weights_digest(path: Path) -> str:
    """sha256 of a weight file: all of it up to FULL_HASH_BYTES, else its size and SAMPLES
    evenly spaced SAMPLE_BYTES pieces (the first and the last included).

    Training changes nearly every weight, so a retrained or fine-tuned model differs in every
    piece; reading 4 MiB keeps a 16 GB checkpoint's check (run at every preflight) cheap.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as f:
        if size <= FULL_HASH_BYTES:
            digest.update(f.read())
            return digest.hexdigest()
        for i in range(SAMPLES):
            f.seek((size - SAMPLE_BYTES) * i // (SAMPLES - 1))
            digest.update(f.read(SAMPLE_BYTES))
    return digest.hexdigest()


def code_version() -> str:
    """Hash of the compress package's source: a change to the code rebuilds every variant."""
    digest = hashlib.sha256()
    for source in sorted(COMPRESS_SRC.rglob("*.py")):
        digest.update(source.relative_to(COMPRESS_SRC).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(model_dir: Path, compress_params: dict, calibration: str | None = None) -> str:
    """Key of a built variant: (base model, compress config, code version, calibration data)."""
    blob = json.dumps({"model": fingerprint(model_dir), "compress": compress_params, "code": code_version(),
                       "calibration": calibration}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_build_dir(run: RunConfig, spec: CompressSpec, src: Path, config) -> Path:
    """Where the build of ``spec`` from the base model folder ``src`` lives in run.cache_dir."""
    cache = Path(run.cache_dir)
    data = suite_source().fingerprint if calibrates(config) else None
    params = {"scheme": spec.scheme, **config_to_dict(config)}
    if uses_llama_cpp(config):  # GGUFs are written by llama.cpp's tools: another build, another GGUF
        params["llama_cpp"] = {k: v for k, v in build_info().items() if k not in BUILD_TIMING}
    key = cache_key(src, params, calibration=data)
    return cache / f"{spec.scheme}-{key}"


def build_variant(run: RunConfig, compress: CompressSpec | None = None, log=print) -> Path:
    """The folder vLLM serves for `run`: the base model, or its compressed copy (cached).

    A cached build is reused only when complete (compress writes `<dir>.partial` and renames
    it at the end), so an interrupted build is redone rather than served half-written.
    `compress` replaces the run's scheme when the platform check chose another.
    """
    base = run.model.resolved_path()
    spec = compress or run.compress
    config = to_compress_config(spec)
    check_model(base)
    src = local_model_dir(base, log)  # a hub id is downloaded here, never by the server
    if config is None:
        return src
    from compress import compress_checkpoint  # lazy: imports torch

    out = cached_build_dir(run, spec, src, config)
    if is_built(out):
        log(f"build: cached {spec.scheme} checkpoint {out}")
        return out
    require_space(src, out.parent, config, spec.scheme)
    log(f"build: compressing {src} with {spec.scheme} -> {out}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        return compress_checkpoint(src, out, config, suite_source())
    except BaseException:  # failed or interrupted (Ctrl-C, SIGTERM): no half-written checkpoint stays
        shutil.rmtree(partial, ignore_errors=True)
        raise


def is_built(out: Path) -> bool:
    """Whether a cached build is whole: compress writes into <out>.partial and renames it at the end, and
    every folder it writes has config.json (compressed-tensors) or recipe.json (GGUF, which has no config.json)."""
    return (out / "config.json").is_file() or (out / "recipe.json").is_file()


def check_build(run: RunConfig, spec: Any) -> None:
    """Refuses a damaged cached build, or a new build whose estimated output does not fit in
    the free space of cache_dir."""
    config = to_compress_config(spec)
    base = Path(run.model.resolved_path()).expanduser()
    if config is None or not base.is_dir():
        return
    src = local_model_dir(str(base))
    cache = Path(run.cache_dir)
    cached = cached_build_dir(run, spec, src, config)
    if (cached / "config.json").is_file():
        check_headers(cached)  # refused now rather than when the server loads it
        return
    if is_built(cached):  # a GGUF folder
        return
    require_space(src, cache, config, spec.scheme)


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists():
        path = path.parent
    return path
