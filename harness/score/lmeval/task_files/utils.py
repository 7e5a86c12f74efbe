"""Dataset loader for the harness_synthetic lm-eval task (lm-eval imports it by file path)."""

from __future__ import annotations

from typing import Any


def load_suite(suite_dir: str | None = None, seed: int = 0, split: str = "test", limit: int = 40,
               **_metadata: Any):
    """The synthetic suite as a DatasetDict with the asked split exposed as ``test``.

    Args:
        suite_dir: a folder written by ``harness.replay.workloads.base.save_dataset``; None builds
            the suite in memory from ``seed``.
        seed: suite seed (used only when ``suite_dir`` is None).
        split: which suite split is evaluated ("train" or "test").
        limit: how many items (used only when ``suite_dir`` is None).
        **_metadata: lm-eval passes the task's metadata too; not used here.
    """
    import datasets

    if suite_dir:
        suite = datasets.load_from_disk(suite_dir)
    else:
        from harness.replay.workloads.base import build_dataset

        sizes = {"n_train": limit, "n_test": 1} if split == "train" else {"n_train": 1, "n_test": limit}
        suite = build_dataset(seed, **sizes)
    return datasets.DatasetDict({"test": suite[split]})
