"""Atomic file writes: a reader sees the old file or the new one, never a half-written one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Replaces `path` with `text` so a reader sees the old file or the new one, never half.

    The text goes to a temporary file in the same directory, is fsynced, then renamed over
    `path` (os.replace is atomic within one filesystem). If anything fails, the old file
    is left as it was and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o644)  # mkstemp makes 0600; results are for everyone to read
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def to_json(obj: Any) -> str:
    """Strict JSON (no NaN or Infinity, which other tools cannot read), indented."""
    try:
        return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"cannot write as JSON ({error}); convert the value to plain numbers, strings, "
                         "lists or dicts, and NaN to None") from error


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    """Serialises `obj` first (so a bad value never touches the file), then writes it atomically."""
    return write_text_atomic(path, to_json(obj))


def write_yaml_atomic(path: Path | str, obj: Any) -> Path:
    """Writes `obj` as YAML (key order kept), atomically."""
    import yaml

    return write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def write_jsonl_atomic(path: Path | str, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Writes one JSON object a line (e.g. the per-request records), atomically."""
    return write_text_atomic(path, "".join(json_line(row, path) + "\n" for row in rows))


def json_line(row: Mapping[str, Any], path: Path | str) -> str:
    """`row` as one line of strict JSON; the error names `path` and what to change."""
    try:
        return json.dumps(dict(row), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"row for {path} is not plain JSON ({error}); use numbers, strings, lists, dicts, "
                         "and None for NaN") from error
