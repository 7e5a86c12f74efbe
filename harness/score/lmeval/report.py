"""lm-eval's logged samples as the harness's quality items (QualityReport) and per-sample rows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from harness.score.lmeval.tasks import LmEvalTaskError
from harness.score.quality import ItemScore, QualityReport, aggregate, outcome_of

# Filter lm-eval applies when a task declares none: the raw response.
RAW_FILTER = "none"


def score_key(task: str, task_results: Mapping[str, Any], chosen: str | None) -> tuple[str, str]:
    """(metric, filter) whose per-sample value is the item score of ``task``.

    ``task_results`` is lm-eval's ``results["results"][task]`` (keys "metric,filter").
    The metric is ``chosen`` or else the task's first; the filter is "none" when the
    metric has it, else the first one lm-eval reports.

    Raises:
        LmEvalTaskError: ``chosen`` is not a metric of the task.
    """
    pairs = [tuple(k.split(",", 1)) for k in task_results if "," in k and not k.split(",")[0].endswith("_stderr")]
    names = list(dict.fromkeys(m for m, _ in pairs))
    metric = chosen or (names[0] if names else None)
    if metric not in names:
        raise LmEvalTaskError(f"quality.lm_eval.metrics.{task}={chosen!r} is not a metric of lm-eval task {task}; "
                              f"it reports: {', '.join(names) or 'none'}")
    filters = [f for m, f in pairs if m == metric]
    return metric, RAW_FILTER if RAW_FILTER in filters else filters[0]


def task_items(task: str, samples: Sequence[Mapping[str, Any]], served: Mapping[tuple[str, int], Any],
               key: tuple[str, str], item_columns: Mapping[str, Any]) -> tuple[list[ItemScore], list[dict]]:
    """One ItemScore and one JSON row per document of ``task`` under the chosen filter.

    The item score is lm-eval's per-sample value of the chosen metric when the answer is
    complete, else 0 (errored, truncated at max_gen_toks, or empty: the harness's rule,
    so that answering less cannot pass the gate).

    Args:
        task: lm-eval task name.
        samples: lm-eval's logged samples of that task (``results["samples"][task]``).
        served: (task, doc_id) -> ServedRequest recorded by the model.
        key: (metric, filter) from `score_key`.
        item_columns: the task's metadata; ``item_id_column`` / ``item_task_column`` name the
            doc fields used as item id and family (default: "<task>/<doc_id>" and the task).
    """
    metric, filter_key = key
    id_col, family_col = item_columns.get("item_id_column"), item_columns.get("item_task_column")
    items, rows = [], []
    for sample in (s for s in samples if s["filter"] == filter_key):
        doc, doc_id = sample["doc"], int(sample["doc_id"])
        response = _response(sample)
        record = served.get((task, doc_id))
        why = outcome_of(record, response)
        item = ItemScore(id=str(doc[id_col]) if id_col else f"{task}/{doc_id}",
                         task=str(doc[family_col]) if family_col else task,
                         score=_value(task, metric, sample[metric]) if why == "scored" else 0.0, outcome=why)
        items.append(item)
        rows.append(_row(task, sample, item, metric, response, record))
    return items, rows


def build_report(results: Mapping[str, Any], served: Sequence[Any], metrics: Mapping[str, str]):
    """(QualityReport over every task's documents, per-sample rows, task -> "metric,filter" used).

    Raises:
        LmEvalTaskError: a chosen metric is missing, or its per-sample values are not numbers.
    """
    by_doc = {(s.task, s.doc_id): s for s in served}
    items, rows, used = [], [], {}
    for task, samples in results["samples"].items():
        key = score_key(task, results["results"][task], metrics.get(task))
        meta = results.get("configs", {}).get(task, {}).get("metadata") or {}
        task_item_list, task_rows = task_items(task, samples, by_doc, key, meta)
        items += task_item_list
        rows += task_rows
        used[task] = ",".join(key)
    if not items:
        raise LmEvalTaskError("lm-eval returned no scored documents; check quality.lm_eval.tasks and limit")
    report: QualityReport = aggregate(used_metric_name(used), items)
    return report, rows, used


def used_metric_name(used: Mapping[str, str]) -> str:
    """The report's metric label: "lm_eval:" + the distinct metric names used."""
    return "lm_eval:" + "+".join(sorted({k.split(",")[0] for k in used.values()}))


def reported_metrics(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's own aggregate figures per task and group (numbers only; "N/A" stderr dropped)."""
    out: dict[str, dict[str, float]] = {}
    for section in ("results", "groups"):
        for task, values in (results.get(section) or {}).items():
            numbers = {k: float(v) for k, v in values.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            out.setdefault(task, {}).update(numbers)
    return out


def _response(sample: Mapping[str, Any]) -> str:
    """The raw generated text of the sample's (first) request."""
    resps = sample.get("resps") or [[]]
    first = resps[0][0] if resps[0] else ""
    return first if isinstance(first, str) else str(first)


def _value(task: str, metric: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise LmEvalTaskError(f"metric {metric} of lm-eval task {task} has per-sample values that are not numbers "
                              f"({value!r}); pick a per-sample metric with quality.lm_eval.metrics.{task}")
    return number


def _row(task: str, sample: Mapping[str, Any], item: ItemScore, metric: str, response: str, record) -> dict:
    """One line of lm_eval_samples.jsonl: the answer, lm-eval's metrics, the harness's item, the request."""
    served = {} if record is None else {
        "finish_reason": record.finish_reason, "prompt_tokens": record.prompt_tokens,
        "output_tokens": record.output_tokens, "start_s": record.start_s, "end_s": record.end_s, "error": record.error}
    context = (sample.get("arguments") or [[""]])[0][0]
    if isinstance(context, (tuple, list)) and context:  # lm-eval's JsonChatStr, flattened to a tuple
        context = context[0]
    return {
        "task": task, "doc_id": int(sample["doc_id"]), "id": item.id, "item_task": item.task,
        # The chat messages as JSON text (images travel apart, in the request's visual argument).
        "prompt": str(context),
        "target": str(sample.get("target")),
        "response": response, "filtered": str(sample["filtered_resps"][0]) if sample.get("filtered_resps") else "",
        "filter": sample["filter"], "metric": metric,
        "metrics": {m: sample[m] for m in sample.get("metrics", []) if isinstance(sample.get(m), (int, float))},
        "score": item.score, "outcome": item.outcome, **served,
    }
