"""One comparison, top to bottom: check, build, serve and replay in trials, measure, score, gate, record."""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.build.variant import build_variant
from harness.config.schema import EngineConfig, RunConfig
from harness.energy import MEASUREMENT_VERSION
from harness.preflight import check_session, generation_changes, preflight
from harness.record import provenance
from harness.record.atomic import write_jsonl_atomic
from harness.record.decode import decode_split
from harness.record.parts import EnergyPart
from harness.record.redact import redact_serve
from harness.record.result import RunResult, append_row, config_dict, flat_row, jsonable, new_run_dir, write_result
from harness.record.resume import find_resume, in_sample_order
from harness.record.summary import print_summary
from harness.replay.stats import output_lengths, summarize_requests
from harness.replay.tokens import joules_per_output_token
from harness.replay.watchdog import error_rate_failure
from harness.replay.workloads import load_warmup, load_workload
from harness.score.baseline import gate_against
from harness.score.lmeval.engine import engine_quality
from harness.score.offline_run import run_offline
from harness.score.quality import score
from harness.score.thinking import thinking_summary, thinking_warning, tokenizer_counter
from harness.serve.llama_cpp_settings import template_changes
from harness.trials import Arm, Trial, run_session


def run(run_cfg: RunConfig, config: dict[str, Any], console=None, baseline: RunConfig | None = None) -> RunResult:
    """Measures ``run_cfg`` in ``run_cfg.trials`` trials, interleaved with ``baseline``'s, and records both.

    Everything that can be refused (platform capabilities, model path) is checked before any
    build or server start; once the run directories exist, a failure is recorded there as a
    failed result with its reason rather than lost. A failed run of the same config is
    resumed instead: only its missing requests are replayed, in one trial whose energy is
    partial (kept, never compared or ranked), and its quality is gated against the newest
    comparable baseline on disk.

    Returns the variant's RunResult (the baseline's is written beside it).
    """
    say = console.print if console is not None else print
    baseline = vllm_baseline(baseline)
    check = preflight(run_cfg)
    samples = load_workload(run_cfg.workload)
    if check.unservable:
        run_offline(run_cfg, config, check, samples, console)  # records, then raises the reason
    resume = find_resume(run_cfg.results_dir, run_cfg.name, config, [str(s.id) for s in samples])
    mode = check_session(run_cfg, check, with_baseline=baseline is not None and resume is None)
    started = datetime.now(timezone.utc)
    arms: list[Arm] = []
    if baseline is not None and resume is None:
        arms.append(_arm(baseline, preflight(baseline), load_workload(baseline.workload), started, say))
    arms.append(_arm(run_cfg, check, samples, started, say, resume))
    try:
        for arm in arms:
            arm.model_dir = build_variant(arm.run_cfg, arm.check.compress, log=say)
        trials = 1 if resume is not None else run_cfg.trials
        if arms[-1].samples:  # a resume with nothing left to replay needs no server
            run_session(arms, trials, run_cfg.trial_order, mode, say)
    except (KeyboardInterrupt, Exception) as err:  # noqa: BLE001 - recorded, then re-raised
        # Ctrl-C raises a bare KeyboardInterrupt; SIGTERM's handler names its signal.
        reason = str(err) or ("interrupted by SIGINT (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else "")
        for arm in arms:
            _record(arm, error=f"{type(err).__name__}: {reason}", baseline=None)
        raise
    results, failure = [], None
    for arm in arms:
        arm_failure = arm.failure or _too_many_errors(arm)
        error = None if arm_failure is None else f"{type(arm_failure).__name__}: {arm_failure}"
        base = results[0] if len(arms) > 1 and arm is arms[-1] else None
        results.append(_record(arm, error=error, baseline=base))
        failure = failure or arm_failure
    if failure is not None:
        raise failure
    print_summary(results[-1], Path(arms[-1].root), console)
    return results[-1]


def vllm_baseline(baseline: RunConfig | None) -> RunConfig | None:
    """The baseline served by vLLM, whatever engine the variant uses.

    The competition compares entries across engines against one bf16 reference, so a GGUF
    variant on llama.cpp is gated against the same bf16 vLLM baseline as every other variant
    (an ``engine=...`` override given for the variant does not carry over to it).
    """
    if baseline is None or baseline.engine.name == "vllm":
        return baseline
    return dataclasses.replace(baseline, engine=EngineConfig())


def _arm(run_cfg: RunConfig, check, samples, started: datetime, say, resume=None) -> Arm:
    """A new run directory for one side of the comparison, and what it replays."""
    paths = new_run_dir(run_cfg.results_dir, run_cfg.name, started)
    say(f"run {run_cfg.name}: {paths.root}")
    reused = tuple(resume.records) if resume is not None else ()
    if resume is not None:
        say(f"resuming failed run {resume.run_id}: {len(reused)} of {len(samples)} requests already completed, "
            "replaying the rest (its energy is partial: never compared or ranked)")
    done = {r.id for r in reused}
    todo = tuple(s for s in samples if str(s.id) not in done)
    warmup = tuple(load_warmup(run_cfg.workload, list(samples)))
    return Arm(run_cfg.name, run_cfg, check, paths.root, todo, warmup, suite=tuple(samples), reused=reused,
               resumed_from=resume.run_id if resume is not None else None, started=started)


def _too_many_errors(arm: Arm):
    """A RunFailed when the share of failed requests in any trial (reused ones included) is over the limit."""
    limit = arm.run_cfg.workload.max_error_rate
    for trial in arm.trials:
        records = [*arm.reused, *trial.played.records] if trial.index == 1 else list(trial.played.records)
        failure = error_rate_failure(records, limit)
        if failure is not None:
            return failure
    return None


def energy_record(arm: Arm) -> dict[str, Any]:
    """The energy part of result.json for one arm (see README "Trials" for every quantity).

    ``windows``: idle, trial 1's suite and steady windows and lm-eval's, as before trials
    existed. ``trials``: per trial, its suite and steady windows, the idle power of its
    server, active energy (suite energy minus idle power x suite duration) and its cache
    lookups. ``suite_j_mean``: the mean suite energy over complete trials (what is ranked).
    ``partial``: a resumed run's energy covers only what it replayed.
    """
    first = arm.trials[0] if arm.trials else None
    windows = [w for w in (first and first.idle, first and first.suite, first and first.steady,
                           arm.lm_eval and arm.lm_eval.window) if w is not None]
    trials = [_trial_record(t) for t in arm.trials]
    complete = EnergyPart(trials=tuple(trials)).trial_suite_j()
    return {
        "source": arm.source, "meter": arm.meter_kind, "measurement_version": MEASUREMENT_VERSION,
        "partial": bool(arm.reused or (arm.trials and not complete)), "windows": [w.to_dict() for w in windows],
        "trials": trials, "suite_j_mean": statistics.fmean(complete) if complete else None,
        "suite_j_sd": statistics.stdev(complete) if len(complete) > 1 else None,
        "per_request_j": arm.per_request_j, "gpu": arm.gpu, "cache_config": arm.cache_config,
    }


def _trial_record(trial: Trial) -> dict[str, Any]:
    suite, idle = trial.suite, trial.idle
    idle_w = idle.avg_power_w if idle is not None and idle.duration_s > 0 else None
    active = None if suite is None or idle_w is None else suite.energy_j - idle_w * suite.duration_s
    ok = [r for r in trial.played.records if r.error is None]
    return {
        "trial": trial.index, "position": trial.position,
        "suite": suite and suite.to_dict(), "steady": trial.steady and trial.steady.to_dict(),
        "idle_w": idle_w, "active_j": active, "cache": trial.cache and trial.cache.to_dict(),
        "steady_output_tokens": trial.steady_tokens, "steady_note": trial.steady_note,
        "steady_j_per_output_token": joules_per_output_token(trial.steady and trial.steady.energy_j,
                                                             trial.steady_tokens),
        "requests": len(trial.played.records), "errors": len(trial.played.records) - len(ok),
        "output_tokens": sum(r.output_tokens for r in ok),
        "decode": decode_split(trial.played.records, suite and suite.to_dict()),  # attributed by time
    }


def _record(arm: Arm, error: str | None, baseline: RunResult | None) -> RunResult:
    """Scores, gates and writes result.json, requests.jsonl and one runs.jsonl row for one arm.

    Quality is scored on trial 1 (every trial sends the same requests with the same seeds).
    The gate never stops a result from being written: its failure is recorded in its place.
    """
    run_cfg, paths_root = arm.run_cfg, Path(arm.root)
    cfg = config_dict(run_cfg)
    serve = {"effective": redact_serve(jsonable(asdict(arm.check.serve))), "platform": arm.check.platform.describe(),
             "fallbacks": [asdict(f) for f in arm.check.fallbacks], "cache_config": arm.cache_config}
    quality, gate, stats, extra = {}, None, (None, None, None), {}
    energy = energy_record(arm)
    first = arm.trials[0] if arm.trials else None
    records = in_sample_order([*arm.reused, *(first.played.records if first else ())], arm.suite)
    if records or arm.lm_eval is not None:
        write_jsonl_atomic(paths_root / "requests.jsonl", [asdict(r) for r in records])
        answered = {r.id for r in records}
        # A run cut short is scored over the samples it answered, not diluted by the rest.
        samples = [s for s in arm.suite if str(s.id) in answered] if error else list(arm.suite)
        report = score(samples, records, metric=run_cfg.workload.metric) if samples else None
        report, quality = engine_quality(arm.lm_eval, report)  # lm-eval's items when it ran
        if first is not None and first.played.records:
            stats = summarize_requests(first.played.records, first.played.duration_s)
        if error is None and report is not None:
            gate = gate_against(run_cfg, cfg, report, energy, baseline)
    serve["model_dir"] = str(arm.model_dir) if arm.model_dir else None
    serve["changes_from_base"] = [str(c) for c in generation_changes(run_cfg, arm.check.serve, arm.model_dir)]
    serve["engine"] = arm.engine or {"name": run_cfg.engine.name}
    if run_cfg.engine.name == "llama_cpp":
        serve["changes_from_base"] += template_changes(run_cfg.model.resolved_path(), arm.engine)
    if arm.resumed_from:
        extra = {"resume": {"resumed_from": arm.resumed_from, "reused_requests": len(arm.reused),
                            "replayed_requests": len(first.played.records) if first else 0}}
    thinking = _thinking(run_cfg, arm, records) if records else None
    result = RunResult(
        run_id=paths_root.name, variant=run_cfg.name, status="ok" if error is None else "failed",
        started_at=arm.started.isoformat(), ended_at=datetime.now(timezone.utc).isoformat(),
        config=cfg, provenance={**provenance.collect(), **extra}, serve=serve, energy=energy,
        quality=quality, latency=stats[0], throughput=stats[1], counts=stats[2], gate=gate, error=error,
        lengths=output_lengths(records) if records else None, thinking=thinking,
    )
    write_result(paths_root, result)
    append_row(Path(run_cfg.results_dir) / "runs.jsonl", flat_row(result))
    return result


def _thinking(run_cfg: RunConfig, arm: Arm, records) -> dict[str, Any]:
    """Thought blocks in trial 1's answers (harness.score.thinking), counted with the base model's tokenizer;
    a thought while thinking is off is said on the console as well as flagged in result.json."""
    enabled = bool((arm.check.serve.chat_template_kwargs or {}).get("enable_thinking"))
    texts = [r.output_text for r in records if r.error is None]
    try:
        summary = thinking_summary(texts, enabled, tokenizer_counter(run_cfg.model.resolved_path()))
    except (OSError, ValueError):  # no tokenizer to count with: the blocks are still found, their length not
        summary = thinking_summary(texts, enabled)
    if (line := thinking_warning(summary)) is not None:
        print(f"warning: {line}")
    return summary
