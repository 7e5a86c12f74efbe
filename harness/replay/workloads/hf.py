"""Suites from Hugging Face datasets: open a split (local or hub cache), pick a seeded subsample.

A workload with ``source: hf`` names its data with ``dataset`` (a hub id, read through the
normal hub cache) or ``path`` (a local copy, read instead of the hub when given: a
``save_to_disk`` folder, a folder laid out like a hub repository, or parquet / arrow /
json / csv files, globs allowed), ``subset``
(the hub config name), ``split``, ``columns`` (see harness.replay.workloads.rows.Columns),
``filters`` (column -> required value, or list of accepted values), ``prompt`` and
``metric``. Every YAML in conf/workload/ besides synthetic.yaml is one.

The subsample: rows that pass the filters (and carry exactly one image) are ordered by
sha256("{seed}/{row index}") and ``limit`` of them are taken from position ``offset``. The
order of a row depends only on the seed and its own index, so a larger limit extends a
smaller one, and runs with the same seed on the same split replay the same items.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.replay.workloads.base import Sample
from harness.replay.workloads.rows import Columns, check_template, parse_columns, to_sample

# datasets' builder for each local file kind.
_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}
_SAVED_MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes


def check_hf(workload: Any) -> Columns:
    """The checks that need no data: a source named, columns, template, metric.

    Raises:
        ConfigError: what is missing or wrong, and the setting that fixes it.
    """
    from harness.score.metrics import METRIC_NAMES

    if workload.dataset is None and workload.path is None:
        raise ConfigError("a source: hf workload needs workload.dataset (a hub id) or workload.path "
                          "(a local folder or files)")
    if workload.metric not in METRIC_NAMES:
        raise ConfigError(f"workload.metric={workload.metric!r} is unknown; choose one of {', '.join(METRIC_NAMES)}")
    columns = parse_columns(workload.columns)
    check_template(workload.prompt, columns)
    return columns


def load_hf(workload: Any) -> list[Sample]:
    """The workload's samples, in subsample order (see the module docstring).

    Raises:
        ConfigError: the dataset, split or a column cannot be found, or no row is left.
    """
    columns = check_hf(workload)
    split = open_split(workload)
    missing = [c for c in columns.names() if c not in split.column_names]
    if missing:
        raise ConfigError(f"column(s) {missing} are not in {_source(workload)} split {workload.split!r}; it has "
                          f"{split.column_names}: set workload.columns to match")
    chosen = pick_rows(eligible_rows(split, columns, workload.filters), workload.seed, workload.offset,
                       workload.limit)
    if not chosen:
        raise ConfigError(f"no row of {_source(workload)} split {workload.split!r} is left after filters "
                          f"{dict(workload.filters)} and offset {workload.offset}; loosen workload.filters or "
                          "lower workload.offset")
    rows = split.select(chosen)
    return [to_sample(row, index, columns, workload) for index, row in zip(chosen, rows)]


def pick_rows(eligible: list[int], seed: int, offset: int, limit: int) -> list[int]:
    """``limit`` row indices from ``offset`` in the seeded order (sha256 of seed and index)."""
    def key(index: int) -> bytes:
        return hashlib.sha256(f"{seed}/{index}".encode()).digest()

    return sorted(eligible, key=key)[offset:offset + limit]


def eligible_rows(split: Any, columns: Columns, filters: dict[str, Any]) -> list[int]:
    """Indices of rows with exactly one image that pass every filter; no image is decoded."""
    table = split.with_format("arrow")
    present = [table[c].is_valid().to_pylist() for c in columns.images]
    keep = [sum(flags) == 1 for flags in zip(*present)]
    for column, wanted in filters.items():
        if column not in split.column_names:
            raise ConfigError(f"workload.filters names column {column!r}, not in {split.column_names}")
        accepted = set(wanted) if isinstance(wanted, (list, tuple)) else {wanted}
        keep = [k and v in accepted for k, v in zip(keep, table[column].to_pylist())]
    return [i for i, k in enumerate(keep) if k]


def open_split(workload: Any) -> Any:
    """The ``datasets.Dataset`` of the workload's split, from ``path`` or the hub cache."""
    import datasets

    try:
        loaded = _open_path(workload) if workload.path is not None else _open_hub(workload)
    except (ValueError, KeyError) as err:  # unknown split or config name
        raise ConfigError(f"{_source(workload)}: {err}; check workload.subset and workload.split") from err
    if isinstance(loaded, datasets.DatasetDict):
        if workload.split not in loaded:
            raise ConfigError(f"split {workload.split!r} is not in {_source(workload)}; it has {list(loaded)}: "
                              f"set workload.split")
        loaded = loaded[workload.split]
    return loaded


def _open_hub(workload: Any) -> Any:
    import datasets

    try:
        return datasets.load_dataset(workload.dataset, workload.subset, split=workload.split)
    except OSError as err:  # ConnectionError, DatasetNotFoundError (a FileNotFoundError), offline mode
        raise ConfigError(f"dataset {workload.dataset!r} could not be loaded ({type(err).__name__}): "
                          f"it is not in the local hub cache; pass workload.path=LOCAL_DIR") from err


def _open_path(workload: Any) -> Any:
    import datasets

    path = Path(workload.path).expanduser()
    if path.is_dir() and any((path / m).is_file() for m in _SAVED_MARKERS):
        return datasets.load_from_disk(str(path))
    if path.is_dir():  # a folder laid out like a hub repository (data/test-*.parquet, README configs)
        if not any(f.suffix in _BUILDERS for f in path.rglob("*")):
            raise ConfigError(f"workload.path={workload.path!r} holds no data files ({', '.join(_BUILDERS)}) and is no "
                              "save_to_disk folder: point it at the dataset's folder or files")
        return datasets.load_dataset(str(path), workload.subset, split=workload.split)
    files = sorted(path.parent.glob(path.name)) if any(ch in path.name for ch in "*?[") else [path]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"workload.path={workload.path!r} matches no file or folder: point it at a "
                          f"save_to_disk folder, a dataset folder, or parquet/arrow/json/csv files")
    builder = _BUILDERS.get(files[0].suffix)
    if builder is None:
        raise ConfigError(f"workload.path files end in {files[0].suffix!r}; readable kinds: {', '.join(_BUILDERS)}")
    return datasets.load_dataset(builder, data_files={workload.split: [str(f) for f in files]}, split=workload.split)


def _source(workload: Any) -> str:
    return f"dataset {workload.dataset!r}" if workload.path is None else f"workload.path {workload.path!r}"
