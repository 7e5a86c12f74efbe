"""One run, top to bottom: check, build, serve, replay, measure, score, gate, record."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.build.variant import build_variant
from harness.config.schema import RunConfig
from harness.energy import make_meter, steady_window
from harness.energy.attribution import per_request_energy_j
from harness.energy.base import MeterError, Window
from harness.energy.nvml import gpu_snapshot
from harness.energy.steady import FLAG_SHORT_STEADY, STEADY_MIN_S
from harness.preflight import preflight
from harness.record import provenance
from harness.record.atomic import write_jsonl_atomic
from harness.record.redact import redact_serve
from harness.record.result import RunPaths, RunResult, append_row, flat_row, jsonable, new_run_dir, write_result
from harness.record.resume import find_resume, in_sample_order
from harness.record.summary import print_summary
from harness.replay.client import ReplayResult
from harness.replay.stats import summarize_requests
from harness.replay.watchdog import error_rate_failure, guarded_replay
from harness.replay.workloads import load_workload
from harness.score.baseline import gate_against_baseline
from harness.score.lmeval.engine import engine_quality, run_engine
from harness.score.offline_run import run_offline
from harness.score.quality import score
from harness.serve.capabilities import PlatformCheck
from harness.serve.vllm import VllmServer

SERVED_NAME = "model"


@dataclass(frozen=True)
class RunContext:
    """What every step of one run is told: its config, the platform check, where it writes, when it began."""
    run_cfg: RunConfig
    config_dict: dict[str, Any]  # the resolved config as stored with the result (secrets redacted)
    check: PlatformCheck
    paths: RunPaths
    started: datetime


@dataclass(frozen=True)
class Measured:
    """What serving the model and replaying the suite gave: the serve-and-measure step's result.

    ``windows`` are the energy windows in order (idle, suite or suite_partial, steady, lm_eval);
    ``reused`` the records a resumed run took from the failed run it resumes; ``failure`` the
    server death or watchdog stop that cut the replay short, if any.
    """

    samples: tuple[Any, ...]
    played: ReplayResult
    windows: tuple[Window, ...]
    source: str
    lm_eval: Any | None
    per_request_j: dict[str, float]
    gpu: dict[str, Any] | None
    model_dir: str
    failure: BaseException | None
    reused: tuple[Any, ...]
    resumed_from: str | None


def run(run_cfg: RunConfig, config_dict: dict[str, Any], console=None) -> RunResult:
    """Runs one variant end to end and returns its RunResult (also written to disk).

    Everything that can be refused (platform capabilities, model path) is checked before
    the build and the server start; once the run directory exists, a failure is recorded
    there as a failed result with its reason rather than lost.
    """
    check = preflight(run_cfg)
    samples = load_workload(run_cfg.workload)
    if check.unservable:
        run_offline(run_cfg, config_dict, check, samples, console)  # records, then raises the reason
    resume = find_resume(run_cfg.results_dir, run_cfg.name, config_dict, [str(s.id) for s in samples])
    started = datetime.now(timezone.utc)
    paths = new_run_dir(run_cfg.results_dir, run_cfg.name, started)
    _say(console, f"run {run_cfg.name}: {paths.root}")
    if resume is not None:
        _say(console, f"resuming failed run {resume.run_id}: {len(resume.records)} of {len(samples)} "
                      f"requests already completed, replaying the rest")
    ctx = RunContext(run_cfg, config_dict, check, paths, started)
    try:
        model_dir = build_variant(run_cfg, check.compress, log=lambda m: _say(console, m))
        measured = _serve_and_measure(ctx, model_dir, samples, resume)
    except (KeyboardInterrupt, Exception) as err:  # noqa: BLE001 - recorded, then re-raised
        # Ctrl-C raises a bare KeyboardInterrupt; SIGTERM's handler names its signal.
        reason = str(err) or ("interrupted by SIGINT (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else "")
        _record(ctx, None, error=f"{type(err).__name__}: {reason}", energy=getattr(err, "partial_energy", None))
        raise
    failure = measured.failure or _too_many_errors(run_cfg, measured)
    error = None if failure is None else f"{type(failure).__name__}: {failure}"
    result = _record(ctx, measured, error=error)
    if failure is not None:
        raise failure

    print_summary(result, paths.root, console)
    return result


def _too_many_errors(run_cfg: RunConfig, measured: Measured):
    """A RunFailed when the share of failed requests (reused ones included) is over the limit."""
    records = [*measured.reused, *measured.played.records]
    return error_rate_failure(records, run_cfg.workload.max_error_rate)


def _say(console, message: str) -> None:
    (console.print if console is not None else print)(message)


def _serve_and_measure(ctx: RunContext, model_dir: Path, samples, resume) -> Measured:
    """Serves the model, records the idle and suite windows (and steady), replays the suite.

    Samples already answered by ``resume`` are not sent again. If the server dies during the
    replay, the replay stops within a watchdog interval and the result holds the completed
    requests, the idle window and a "suite_partial" window up to the death, plus the failure.
    """
    run_cfg, check, paths = ctx.run_cfg, ctx.check, ctx.paths
    wl = run_cfg.workload
    reused = tuple(resume.records) if resume is not None else ()
    done_ids = {r.id for r in reused}
    todo = [s for s in samples if str(s.id) not in done_ids]
    with VllmServer(model_dir, check.serve, paths.root, served_model_name=SERVED_NAME,
                    dtype=run_cfg.model.dtype, platform=check.platform) as server:
        with make_meter(run_cfg.energy.meter, **_meter_settings(run_cfg, server)) as meter:
            state: dict[str, Any] = {}  # what is measured so far, kept if the run is interrupted
            try:
                gpu_start = _gpu_state(meter)
                idle_t0 = time.time()
                time.sleep(run_cfg.energy.idle_s)  # model loaded, no request: the idle window
                idle = state["idle"] = meter.energy_between(idle_t0, time.time(), name="idle")
                state["replay_t0"] = time.time()
                guarded = guarded_replay(server, todo, wl, run_cfg.sampling, log_path=paths.requests,
                                         chat_template_kwargs=check.serve.chat_template_kwargs)
                played = guarded.played
                if guarded.failure is None:
                    server.check_alive()
                name = "suite" if guarded.failure is None else "suite_partial"
                suite = meter.energy_between(played.start_s, played.end_s, name=name) if played.records else None
                target = 1 if wl.mode == "sequential" else wl.concurrency  # requests meant to be in flight
                span = steady_window([(r.start_s, r.end_s) for r in played.records], target)
                steady = _steady(meter, span) if span and guarded.failure is None else None
                # quality.engine=lm_eval: lm-eval's tasks on this same server, in their own "lm_eval" window.
                lm_run = None if guarded.failure else run_engine(run_cfg, server, meter, paths.root,
                                                                 check.serve.chat_template_kwargs)
                per_request = per_request_energy_j(meter, played.records) if played.records else {}
                gpu = {"start": gpu_start, "end": _gpu_state(meter)} if gpu_start else None
                meter.write_trace(paths.power_trace)
                source = meter.source
            except BaseException as err:  # noqa: BLE001 - Ctrl-C, SIGTERM or a crash: keep the energy, re-raise
                _keep_partial_energy(err, meter, paths, state)
                raise
    windows = tuple(w for w in (idle, suite, steady, lm_run and lm_run.window) if w is not None)
    return Measured(tuple(samples), played, windows, source, lm_run, per_request, gpu, str(model_dir), guarded.failure,
                    reused, resume.run_id if resume else None)


def _steady(meter, span: tuple[float, float]):
    """The steady window over ``span``, flagged (not dropped) when shorter than STEADY_MIN_S."""
    window = meter.energy_between(*span, name="steady")
    if window.duration_s < STEADY_MIN_S:
        window = dataclasses.replace(window, flags=(*window.flags, FLAG_SHORT_STEADY))
    return window


def _keep_partial_energy(err: BaseException, meter, paths, state: dict[str, Any]) -> None:
    """Attaches the idle window, a suite_partial window up to now and the power trace to ``err``.

    The replay's completed requests are already on disk (requests.jsonl is appended as each
    one finishes); this keeps the energy measured alongside them for the failed result.
    """
    try:
        windows = [state["idle"]] if state.get("idle") else []
        if state.get("replay_t0"):
            windows.append(meter.energy_between(state["replay_t0"], time.time(), name="suite_partial"))
        meter.write_trace(paths.power_trace)
    except (MeterError, OSError, ValueError):
        return  # the meter itself failed: the run's own error says more than this would
    err.partial_energy = {"source": meter.source, "windows": [w.to_dict() for w in windows]}


def _gpu_state(meter) -> list[dict] | None:
    """Name, driver, power limit, clocks and temperature of the metered GPUs (None off GPU)."""
    if meter.kind != "nvml":
        return None

    return [gpu_snapshot(i) for i in meter.indices]


def _meter_settings(run_cfg: RunConfig, server) -> dict[str, Any]:
    """Settings for make_meter; the modeled meter watches the server's process tree."""
    import os

    e = run_cfg.energy
    # The config gives package power idle and with every core busy; the model wants watts
    # per busy core-second on top of idle.
    per_core_w = (e.cpu_active_w - e.cpu_idle_w) / (os.cpu_count() or 1)
    return {"hz": e.sample_hz, "pid": server.pgid, "busy_core_w": per_core_w, "idle_w": e.cpu_idle_w}


def _record(ctx: RunContext, measured: Measured | None, error: str | None, energy: dict | None = None) -> RunResult:
    """Scores, gates and writes result.json, requests.jsonl and one runs.jsonl row.

    ``energy`` is what an interrupted run measured before it stopped (when ``measured`` is None).
    """
    run_cfg, config_dict, check, paths = ctx.run_cfg, ctx.config_dict, ctx.check, ctx.paths
    serve = {"effective": redact_serve(jsonable(asdict(check.serve))), "platform": check.platform.describe(),
             "fallbacks": [asdict(f) for f in check.fallbacks]}
    quality, gate, stats = {}, None, (None, None, None)
    energy = energy or {"source": None, "windows": []}
    extra = {}
    if measured is not None:
        played, failed = measured.played, measured.failure is not None
        records = in_sample_order([*measured.reused, *played.records], measured.samples)
        write_jsonl_atomic(paths.requests, [asdict(r) for r in records])
        answered = {r.id for r in records}
        # A run cut short is scored over the samples it answered, not diluted by the rest.
        samples = [s for s in measured.samples if str(s.id) in answered] if failed else list(measured.samples)
        report = score(samples, records, metric=run_cfg.workload.metric) if samples else None
        report, quality = engine_quality(measured.lm_eval, report)  # lm-eval's items when it ran
        energy = {"source": measured.source, "windows": [w.to_dict() for w in measured.windows],
                  "per_request_j": measured.per_request_j, "gpu": measured.gpu}
        # Latency and throughput describe this run's own replay (its energy windows cover only it).
        stats = summarize_requests(played.records, played.duration_s) if played.records else stats
        gate = gate_against_baseline(run_cfg, config_dict, report, energy) if error is None else None
        serve["model_dir"] = measured.model_dir
        if measured.resumed_from:
            extra = {"resume": {"resumed_from": measured.resumed_from, "reused_requests": len(measured.reused),
                                "replayed_requests": len(played.records)}}
    result = RunResult(
        run_id=paths.root.name, variant=run_cfg.name, status="ok" if error is None else "failed",
        started_at=ctx.started.isoformat(), ended_at=datetime.now(timezone.utc).isoformat(),
        config=config_dict, provenance={**provenance.collect(), **extra}, serve=serve, energy=energy,
        quality=quality, latency=stats[0], throughput=stats[1], counts=stats[2], gate=gate, error=error,
    )
    write_result(paths.root, result)
    append_row(Path(run_cfg.results_dir) / "runs.jsonl", flat_row(result))
    return result
