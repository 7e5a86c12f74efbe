"""`python -m harness.merge OUT SRC [SRC ...]`: results folders from several machines merged into one.

Rows of each SRC/runs.jsonl and their run folders are added to OUT (created if needed; it
may be one of the sources). A run already in OUT with the same run_id and the same
result.json is skipped; the same run_id with different content, or a schema version this
harness does not read, refuses the whole merge before anything is written. Then
`python -m harness.leaderboard --results OUT` ranks them, grouped by hardware as always.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compress.folders import atomic_folder
from harness.errors import HarnessError
from harness.record.result import RESULT_FILE, SCHEMA_VERSION, append_row, read_rows


class MergeError(HarnessError, ValueError):
    """The sources cannot be merged as they are; the message names the run and the fix."""


@dataclass(frozen=True)
class Incoming:
    """One run to add: its runs.jsonl row and the folder it comes from (None: no folder)."""

    row: dict[str, Any]
    folder: Path | None


@dataclass(frozen=True)
class MergeReport:
    """What a merge did: runs added, runs skipped as already present, sources read."""

    added: tuple[str, ...]
    duplicates: tuple[str, ...]
    sources: tuple[str, ...]


def merge_results(out: Path | str, sources: Sequence[Path | str]) -> MergeReport:
    """Adds every run of ``sources`` to ``out``, deduplicated by run_id.

    Raises:
        MergeError: a source has no runs.jsonl, a row has another schema_version, or one
            run_id names different runs; nothing is written then.
    """
    out = Path(out)
    known = {str(r.get("run_id")): _digest(out, r) for r in read_rows(out / "runs.jsonl")}
    plan, duplicates = [], []
    for source in map(Path, sources):
        for item in _incoming(source):
            run_id, digest = str(item.row["run_id"]), _digest(source, item.row)
            if run_id in known:
                if known[run_id] != digest:
                    raise MergeError(f"run {run_id} exists in {source} and in another source or {out} with different "
                                     "results: rename one run folder and its runs.jsonl row before merging")
                if source.resolve() != out.resolve():
                    duplicates.append(run_id)
                continue
            known[run_id] = digest
            plan.append(_unless_present(out, item, digest))
    for item in plan:
        _add(out, item)
    return MergeReport(tuple(str(i.row["run_id"]) for i in plan), tuple(duplicates), tuple(map(str, sources)))


def _unless_present(out: Path, item: Incoming, digest: str) -> Incoming:
    """A folder already in OUT/runs but missing from its runs.jsonl (a merge cut short) is kept
    when it holds the same run; only its row is added then."""
    run_id = str(item.row["run_id"])
    if item.folder is None or not (out / "runs" / run_id).exists():
        return item
    if _digest(out, item.row) != digest:
        raise MergeError(f"{out / 'runs' / run_id} exists with other content than the run in {item.folder}: "
                         "move it away before merging")
    return Incoming(item.row, None)


def _incoming(source: Path) -> list[Incoming]:
    log = source / "runs.jsonl"
    if not log.is_file():
        raise MergeError(f"{log} does not exist: pass results folders (each holds runs.jsonl and runs/)")
    items = []
    for row in read_rows(log):
        run_id = row.get("run_id")
        if not run_id:
            raise MergeError(f"{log} has a row without run_id: remove that line or rerun that variant")
        version = row.get("schema_version")
        if version != SCHEMA_VERSION:
            raise MergeError(f"run {run_id} in {source} has schema_version {version!r} but this harness reads "
                             f"{SCHEMA_VERSION}: merge it with the harness version that wrote it, or rerun it")
        folder = source / "runs" / str(run_id)
        items.append(Incoming(row, folder if folder.is_dir() else None))
    return items


def _digest(root: Path, row: dict[str, Any]) -> str:
    """What identifies a run's content: its result.json bytes, else its row."""
    result = root / "runs" / str(row.get("run_id")) / RESULT_FILE
    if result.is_file():
        return hashlib.sha256(result.read_bytes()).hexdigest()
    return hashlib.sha256(repr(sorted(row.items())).encode()).hexdigest()


def _add(out: Path, item: Incoming) -> None:
    """Copies the run folder (complete or not at all), then appends its row."""
    if item.folder is not None:
        with atomic_folder(out / "runs" / item.folder.name) as partial:
            shutil.copytree(item.folder, partial, dirs_exist_ok=True)
    append_row(out / "runs.jsonl", item.row)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.merge", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="results folder to merge into (created if missing)")
    parser.add_argument("sources", type=Path, nargs="+", help="results folders to read (each holds runs.jsonl)")
    args = parser.parse_args(argv)
    try:
        report = merge_results(args.out, args.sources)
    except MergeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"merged {len(report.sources)} folders into {args.out}: {len(report.added)} runs added, "
          f"{len(report.duplicates)} already present")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
