"""lm-eval as a quality engine: its tasks against the harness's own server, inside an energy window.

With ``quality.engine: lm_eval`` the run replays its suite as always (idle, suite and
steady windows, latency), then, on the same server and before it stops, runs the lm-eval
tasks of ``quality.lm_eval`` through lm-eval's ``simple_evaluate`` with a
local-chat-completions model (images as message parts, the run's sampling settings). The
"lm_eval" energy window spans from the first lm-eval request sent to the last answer
received. lm-eval's per-sample scores become the run's QualityReport, so the gate compares
them with the baseline run of the same tasks; every sample lands in lm_eval_samples.jsonl.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config.schema import RunConfig, SamplingConfig
from harness.score.lmeval.settings import SYNTHETIC_TASK, LmEvalConfig

SAMPLES_FILE = "lm_eval_samples.jsonl"
WINDOW = "lm_eval"
ENGINE = "lm_eval"


@dataclass(frozen=True)
class LmEvalRun:
    """What one lm-eval evaluation gave: the quality items, its energy window and a summary.

    Attributes:
        report: harness.score.quality.QualityReport built from lm-eval's per-sample scores.
        window: harness.energy Window named "lm_eval" (None when no request was sent).
        info: JSON-ready summary stored as result.quality["lm_eval"].
        served: tuple of harness.score.lmeval.model.ServedRequest, one per request sent.
    """

    report: Any
    window: Any
    info: dict[str, Any]
    served: tuple = ()


def check_engine(run_cfg: RunConfig) -> None:
    """Preflight for quality.engine=lm_eval: lm-eval installed, tasks known and generative.

    Raises:
        harness.score.lmeval.tasks.LmEvalTaskError: see harness.score.lmeval.tasks.check_tasks; also
            metrics or task_overrides naming a task that is not in quality.lm_eval.tasks.
    """
    if run_cfg.quality.engine != ENGINE:
        return
    from harness.score.lmeval.tasks import LmEvalTaskError, check_tasks

    cfg = run_cfg.quality.lm_eval
    for key, mapping in (("metrics", cfg.metrics), ("task_overrides", cfg.task_overrides)):
        stray = sorted(set(mapping) - set(cfg.tasks))
        if stray:
            raise LmEvalTaskError(f"quality.lm_eval.{key} names {', '.join(stray)}, which quality.lm_eval.tasks "
                                  f"({', '.join(cfg.tasks)}) does not run")
    for task, override in cfg.task_overrides.items():
        local = str((override or {}).get("dataset_path", ""))
        if local.startswith(("/", "./", "../", "~")) and not Path(local).expanduser().exists():
            raise LmEvalTaskError(f"quality.lm_eval.task_overrides.{task}.dataset_path={local} does not exist; "
                                  "point it at a local copy of the dataset (a hub-style folder or data files)")
    check_tasks(cfg.tasks)


def run_engine(run_cfg: RunConfig, server, meter, run_dir: Path, chat_template_kwargs=None) -> LmEvalRun | None:
    """Runs the lm-eval engine when the config selects it (None otherwise); see `evaluate`."""
    if run_cfg.quality.engine != ENGINE:
        return None
    from harness.replay.watchdog import error_rate_failure

    lm_run = evaluate(run_cfg, server.target, meter, Path(run_dir), chat_template_kwargs=chat_template_kwargs)
    server.check_alive()  # a server that died mid-evaluation fails the run instead of scoring zeros
    failure = error_rate_failure(lm_run.served, run_cfg.workload.max_error_rate)
    if failure is not None:
        raise failure
    return lm_run


def evaluate(run_cfg: RunConfig, target, meter, run_dir: Path, *, chat_template_kwargs=None) -> LmEvalRun:
    """Runs ``run_cfg.quality.lm_eval`` against ``target`` and writes lm_eval_samples.jsonl.

    Args:
        run_cfg: the run (quality.lm_eval, sampling, workload for harness_synthetic).
        target: a harness.serve.vllm.ServerTarget (base_url ending in /v1, api_key, model_name).
        meter: a harness.energy meter already recording; the "lm_eval" window is read from it.
        run_dir: the run directory (the suite copy and the samples file go there).
        chat_template_kwargs: sent with every request, as the suite replay sends them.
    """
    import lm_eval

    from harness.record.atomic import write_jsonl_atomic
    from harness.score.lmeval.model import RecordingChatModel
    from harness.score.lmeval.report import build_report, reported_metrics
    from harness.score.lmeval.tasks import task_manager, task_specs

    cfg = run_cfg.quality.lm_eval
    manager = task_manager(cfg.tasks)
    overrides = _overrides(run_cfg, cfg, run_dir)
    model = RecordingChatModel(base_url=f"{target.base_url}/chat/completions", model=target.model_name,
                               api_key=target.api_key, seed=run_cfg.sampling.seed,
                               timeout_s=cfg.request_timeout_s, max_images=cfg.max_images)
    kwargs = gen_kwargs(run_cfg.sampling, cfg, chat_template_kwargs)
    # bootstrap_iters=0: lm-eval's stderr bootstrap is skipped; the harness gate bootstraps.
    results = lm_eval.simple_evaluate(
        model=model, tasks=task_specs(manager, cfg.tasks, overrides), task_manager=manager, limit=cfg.limit,
        log_samples=True, apply_chat_template=True, gen_kwargs=kwargs, bootstrap_iters=0,
        random_seed=run_cfg.sampling.seed, numpy_random_seed=run_cfg.sampling.seed,
        torch_random_seed=None, fewshot_random_seed=run_cfg.sampling.seed)
    report, rows, used = build_report(results, model.served, cfg.metrics)
    write_jsonl_atomic(run_dir / SAMPLES_FILE, rows)
    window = _window(meter, model.served)
    info = _info(cfg, kwargs, used, reported_metrics(results), model.served, window, lm_eval)
    return LmEvalRun(report=report, window=window, info=info, served=tuple(model.served))


def gen_kwargs(sampling: SamplingConfig, cfg: LmEvalConfig, chat_template_kwargs=None) -> dict[str, Any]:
    """lm-eval generation kwargs carrying the run's sampling settings.

    lm-eval's chat model turns max_gen_toks into max_tokens, drops do_sample and sends
    every other key in the request body as is (so top_k and chat_template_kwargs reach
    vLLM). These update each task's own generation_kwargs.
    """
    kwargs: dict[str, Any] = {"do_sample": sampling.temperature > 0, "temperature": sampling.temperature,
                              "top_p": sampling.top_p, "top_k": sampling.top_k}
    if cfg.max_gen_toks is not None:
        kwargs["max_gen_toks"] = cfg.max_gen_toks
    if chat_template_kwargs:
        kwargs["chat_template_kwargs"] = dict(chat_template_kwargs)
    return kwargs


def engine_quality(lm_run: LmEvalRun | None, suite_report) -> tuple[Any, dict[str, Any]]:
    """(report to gate, result.quality dict): lm-eval's when it ran, else the suite's.

    With lm-eval, the suite replay's own score is kept under "suite" for reference.
    """
    if lm_run is None:
        return suite_report, suite_report.to_dict() if suite_report else {}
    quality = {**lm_run.report.to_dict(), "engine": ENGINE, "lm_eval": lm_run.info}
    if suite_report is not None:
        quality["suite"] = {k: v for k, v in suite_report.to_dict().items() if k != "items"}
    return lm_run.report, quality


def _overrides(run_cfg: RunConfig, cfg: LmEvalConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-task config overrides: the user's, plus the saved suite for harness_synthetic."""
    overrides = {name: dict(v) for name, v in cfg.task_overrides.items()}
    if SYNTHETIC_TASK in cfg.tasks:
        overrides[SYNTHETIC_TASK] = {**_synthetic_override(run_cfg, run_dir), **overrides.get(SYNTHETIC_TASK, {})}
    return overrides


def _synthetic_override(run_cfg: RunConfig, run_dir: Path) -> dict[str, Any]:
    """Saves the run's synthetic suite (same seed, split and size as the replay) for the task.

    The answer length limit is the replay's sampling.max_tokens, so both engines answer
    the same items under the same limits.
    """
    from harness.replay.workloads.base import save_dataset

    wl = run_cfg.workload
    split = "train" if wl.split == "train" else "test"
    sizes = {"n_train": wl.limit, "n_test": 1} if split == "train" else {"n_train": 1, "n_test": wl.limit}
    suite_dir = save_dataset(run_dir / "lm_eval_data" / SYNTHETIC_TASK, seed=wl.seed, **sizes)
    return {"dataset_kwargs": {"suite_dir": str(suite_dir), "seed": wl.seed, "split": split, "limit": wl.limit},
            "generation_kwargs": {"until": [], "max_gen_toks": run_cfg.sampling.max_tokens}}


def _window(meter, served):
    """Energy from the first lm-eval request sent to the last answer received."""
    if not served:
        return None
    return meter.energy_between(min(s.start_s for s in served), max(s.end_s for s in served), name=WINDOW)


def _info(cfg, kwargs, used, reported, served, window, lm_eval_module) -> dict[str, Any]:
    from harness.replay.tokens import joules_per_output_token, output_tokens

    tokens = output_tokens(served)
    return {
        "version": getattr(lm_eval_module, "__version__", None), "tasks": list(cfg.tasks), "limit": cfg.limit,
        "gen_kwargs": kwargs, "score_keys": used, "reported": reported, "samples_file": SAMPLES_FILE,
        "requests": len(served), "errors": sum(s.error is not None for s in served),
        "prompt_tokens": sum(s.prompt_tokens for s in served if s.error is None), "output_tokens": tokens,
        "energy_j": window.energy_j if window else None, "energy_source": window.source if window else None,
        "j_per_output_token": joules_per_output_token(window.energy_j if window else None, tokens),
    }
