"""Suites a run replays: the synthetic suite or a Hugging Face dataset, picked by workload.source."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config.schema import WorkloadConfig
    from harness.replay.workloads.base import Sample


def check_workload(workload: "WorkloadConfig") -> None:
    """Checks that need no data (run at config time, before any build or server start).

    Raises:
        ConfigError: a setting that cannot work, with the setting that fixes it.
    """
    from harness.errors import ConfigError
    from harness.replay.workloads.base import SPLITS

    if workload.offset < 0:
        raise ConfigError(f"workload.offset must be >= 0, got {workload.offset}")
    if workload.image_max_side_px is not None and workload.image_max_side_px <= 0:
        raise ConfigError(f"workload.image_max_side_px must be > 0 pixels or null, got {workload.image_max_side_px}")
    if workload.source == "hf":
        from harness.replay.workloads.hf import check_hf

        check_hf(workload)
    elif workload.split not in SPLITS:
        raise ConfigError(f"workload.split={workload.split!r}: the synthetic suite has splits {', '.join(SPLITS)}")


def load_workload(workload: "WorkloadConfig") -> list["Sample"]:
    """The samples a run replays, in replay order.

    Raises:
        ConfigError: the dataset, a split or a column cannot be found (hf), before any
            build or server start.
    """
    check_workload(workload)
    if workload.source == "hf":
        from harness.replay.workloads.hf import load_hf

        return load_hf(workload)
    import dataclasses

    from harness.replay.workloads.base import load_samples
    from harness.replay.workloads.rows import fit_image

    samples = load_samples(workload.seed, workload.split, workload.limit, workload.offset)
    if workload.image_max_side_px is None:
        return samples
    return [dataclasses.replace(s, image=fit_image(s.image, workload.image_max_side_px)) for s in samples]


def load_warmup(workload: "WorkloadConfig", suite: list["Sample"]) -> list["Sample"]:
    """``workload.warmup_requests`` samples from outside the measured suite, to warm the server.

    They come from just past the suite (offset + limit) in the same order, so no warm-up
    request repeats a measured one (which, with prefix caching on, would let the measured
    request hit the cache). A dataset too small to give them falls back to the suite's own
    samples under new ids (so new seeds); the caches are reset after warm-up either way.
    """
    import dataclasses

    count = workload.warmup_requests
    if count == 0:
        return []
    suite_ids = {str(s.id) for s in suite}
    try:
        extra = load_workload(dataclasses.replace(workload, offset=workload.offset + workload.limit, limit=count))
    except Exception:  # noqa: BLE001 - a dataset with nothing past the suite: use the fallback below
        extra = []
    outside = [s for s in extra if str(s.id) not in suite_ids][:count]
    if len(outside) < count and suite:
        reused = [suite[i % len(suite)] for i in range(count - len(outside))]
        outside += [dataclasses.replace(s, id=f"warmup-{i}-{s.id}") for i, s in enumerate(reused)]
    return outside
