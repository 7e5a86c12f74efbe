"""The build step: the variant's checkpoint, from the cache or made by `compress`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from harness.atomic_io import write_text_atomic
from harness.config import CompressSpec, RunConfig, to_compress_config

COMPRESS_SRC = Path(__file__).resolve().parents[1] / "compress"
FINGERPRINTS = "fingerprints.json"  # in cache_dir: weight-file digests by path, size and mtime
_DIGESTS: dict[str, dict] = {}  # the same, for this process


class BuildError(RuntimeError):
    """The base model cannot be found or the variant cannot be built; says how to fix it."""


def local_model_dir(path_or_id: str) -> Path:
    """A local folder for `path_or_id`: the folder itself, or a hub snapshot (downloaded once)."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise BuildError(f"{path} has no config.json: point model.path at a transformers checkpoint folder")
        return path
    if path.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise BuildError(f"model path {path_or_id!r} is not a folder: give a checkpoint folder or a hub id like org/name")
    from huggingface_hub import snapshot_download  # lazy; only real models come from a hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(path_or_id, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise BuildError(f"cannot fetch {path_or_id} from the hub ({err}); download it first and set model.path to the folder") from err


def check_model(path_or_id: str) -> None:
    """Refuses, before any work, a model path that is neither a checkpoint folder nor a hub id."""
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        local_model_dir(path_or_id)
        return
    looks_local = path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1
    if looks_local:
        hint = (" (the committed tiny model is missing: restore it with git or rebuild it with "
                "`python -m harness.tiny.train`)" if "tiny-gemma4" in path_or_id else "")
        raise BuildError(f"model folder {path_or_id} does not exist{hint}: set model.path to a checkpoint folder or hub id")


def fingerprint(model_dir: Path, memo: Path | None = None) -> str:
    """Hash of a checkpoint folder's config.json and of its weight files' contents.

    Contents, not names and sizes: a retrained or fine-tuned model of the same shape must
    not be handed another model's build. Hashing a 16 GB checkpoint takes a while, so each
    file's digest is remembered in ``memo`` (a JSON file) under its path, size and mtime and
    recomputed only when one of those changes (the file is written only where cache_dir
    already exists: a refused run creates nothing).
    """
    known = {**_read_memo(memo), **_DIGESTS}
    digest = hashlib.sha256((model_dir / "config.json").read_bytes())
    for weights in sorted(model_dir.glob("*.safetensors")):
        stat = weights.stat()
        where, stamp = str(weights.resolve()), [stat.st_size, stat.st_mtime_ns]
        entry = known.get(where)
        if entry is None or entry["stamp"] != stamp:
            entry = known[where] = {"stamp": stamp, "sha256": _file_sha256(weights)}
        digest.update(f"{weights.name}:{entry['sha256']}".encode())
    _DIGESTS.update(known)
    if memo is not None and memo.parent.is_dir():
        write_text_atomic(memo, json.dumps(known, indent=1, sort_keys=True))
    return digest.hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_memo(memo: Path | None) -> dict:
    try:
        return json.loads(memo.read_text()) if memo is not None else {}
    except (OSError, ValueError):  # absent or damaged: the digests are simply recomputed
        return {}


def code_version() -> str:
    """Hash of the compress package's source: a change to the code rebuilds every variant."""
    digest = hashlib.sha256()
    for source in sorted(COMPRESS_SRC.rglob("*.py")):
        digest.update(source.relative_to(COMPRESS_SRC).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(model_dir: Path, compress_params: dict, memo: Path | None = None) -> str:
    """Key of a built variant: (base model, compress config, code version)."""
    blob = json.dumps({"model": fingerprint(model_dir, memo), "compress": compress_params, "code": code_version()},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_build_dir(run: RunConfig, spec: CompressSpec, src: Path, config) -> Path:
    """Where the build of ``spec`` from the base model folder ``src`` lives in run.cache_dir."""
    from compress.configs import config_to_dict  # lazy: compress imports torch

    cache = Path(run.cache_dir)
    key = cache_key(src, {"scheme": spec.scheme, **config_to_dict(config)}, memo=cache / FINGERPRINTS)
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
    if config is None:
        return local_model_dir(base) if Path(base).expanduser().exists() else Path(base)
    from compress import compress_checkpoint  # lazy: imports torch

    src = local_model_dir(base)
    out = cached_build_dir(run, spec, src, config)
    if (out / "config.json").is_file():
        log(f"build: cached {spec.scheme} checkpoint {out}")
        return out
    _check_disk(src, out.parent, config)
    log(f"build: compressing {src} with {spec.scheme} -> {out}")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        return compress_checkpoint(src, out, config)
    except BaseException:  # failed or interrupted (Ctrl-C, SIGTERM): no half-written checkpoint stays
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _check_disk(src: Path, cache: Path, config) -> None:
    """Refuses to start a build that cannot fit: needs the estimated output size free."""
    from harness.input_checks import estimate_checkpoint_bytes

    cache.mkdir(parents=True, exist_ok=True)
    need = estimate_checkpoint_bytes(src, config)
    free = shutil.disk_usage(cache).free
    if free < need:
        raise BuildError(f"{cache} has {free / 2**30:.1f} GiB free but the build may need {need / 2**30:.1f} GiB: free space or set cache_dir elsewhere")
