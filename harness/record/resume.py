"""Resuming a failed run: the completed requests of the newest failed run with the same config."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.record.result import runs_newest_first


@dataclass(frozen=True)
class Resume:
    """A failed run to continue: its id and the records (RequestRecord) that completed without error."""

    run_id: str
    records: tuple[Any, ...]


def find_resume(results_dir: Path | str, variant: str, config: Mapping[str, Any],
                sample_ids: Sequence[str]) -> Resume | None:
    """The run to resume, or None.

    A run is resumed when the newest runs.jsonl row for ``variant`` with exactly this
    resolved ``config`` is a failed run whose requests.jsonl holds at least one request that
    completed without error and at least one suite sample is still missing. Only requests
    whose id is in ``sample_ids`` count.
    """
    runs = Path(results_dir) / "runs"
    for row, result in runs_newest_first(results_dir, variant):
        if dict(result.config) != dict(config):
            continue
        if row.get("status") != "failed":
            return None  # the newest comparable run succeeded: start afresh
        records = completed_records(runs / row["run_id"] / "requests.jsonl", sample_ids)
        if not records or len(records) >= len(set(sample_ids)):
            return None
        return Resume(row["run_id"], records)
    return None


def completed_records(path: Path, sample_ids: Sequence[str]) -> tuple[Any, ...]:
    """The error-free records in a requests.jsonl whose id is a suite sample, one per id (the last)."""
    from harness.replay.client import RequestRecord

    if not path.is_file():
        return ()
    wanted, by_id = set(map(str, sample_ids)), {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut off by a crash: that request is replayed again
        if row.get("error") is None and row.get("id") in wanted:
            by_id[row["id"]] = RequestRecord(**{**row, "itl_ms": tuple(row.get("itl_ms") or ())})
    return tuple(by_id.values())


def in_sample_order(records: Sequence[Any], samples: Sequence[Any]) -> list[Any]:
    """``records`` sorted by the position of their sample in ``samples`` (unknown ids last)."""
    order = {str(s.id): i for i, s in enumerate(samples)}
    return sorted(records, key=lambda r: order.get(r.id, len(order)))
