"""Settings of the lm-eval quality engine (quality.engine: lm_eval), as one frozen dataclass."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The repo's own lm-eval task: the synthetic suite (harness/score/lmeval/task_files/harness_synthetic.yaml).
SYNTHETIC_TASK = "harness_synthetic"


@dataclass(frozen=True)
class LmEvalConfig:
    """Which lm-eval tasks run against the served model, and how their scores become items.

    Attributes:
        tasks: lm-eval task or group names (built-in, or from harness/score/lmeval/task_files/).
            Only generative tasks (output_type generate_until) work through the
            chat-completions API.
        limit: documents per task; None runs every document (harness_synthetic has
            workload.limit of them, the same items the suite replay sends).
        metrics: task -> the lm-eval metric taken as each item's score (e.g.
            {chartqa: relaxed_accuracy}); a task not named here uses its first metric.
        task_overrides: task -> task-config keys to replace, e.g.
            {chartqa: {dataset_path: /data/ChartQA}} to read a local copy of a hub dataset.
        max_gen_toks: answer length limit in tokens; None keeps each task's own.
        max_images: images sent per request (lm-eval's max_images model argument).
        request_timeout_s: per-request HTTP timeout, seconds.
    """

    tasks: tuple[str, ...] = (SYNTHETIC_TASK,)
    limit: int | None = None
    metrics: Mapping[str, str] = field(default_factory=dict)
    task_overrides: Mapping[str, Any] = field(default_factory=dict)
    max_gen_toks: int | None = None
    max_images: int = 1
    request_timeout_s: float = 600.0


def quality_source(config: Mapping[str, Any]) -> tuple[str, Any]:
    """What produced a stored run's quality items: the engine and, for lm-eval, its task setup.

    Two runs are gated against each other only when this matches (older results, written
    before engines existed, count as the harness engine).
    """
    quality = config.get("quality") or {}
    engine = quality.get("engine", "harness")
    if engine != "lm_eval":
        return engine, None
    setup = dict(quality.get("lm_eval") or {})
    setup.pop("request_timeout_s", None)  # a timeout does not change what is scored
    return engine, setup
