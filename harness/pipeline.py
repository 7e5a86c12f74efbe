"""One run, top to bottom: check, build, serve, replay, measure, score, gate, record."""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.config import RunConfig

SERVED_NAME = "model"


def preflight(run_cfg: RunConfig):
    """Every check that needs no build or server: platform capabilities and the model path.

    Returns:
        The PlatformCheck (effective serve settings and the fallbacks taken).
    """
    from harness.build import check_model
    from harness.platform import check_platform

    check = check_platform(run_cfg)
    check_model(run_cfg.model.resolved_path())
    return check


def run(run_cfg: RunConfig, config_dict: dict[str, Any], console=None) -> "RunResult":
    """Runs one variant end to end and returns its RunResult (also written to disk).

    Everything that can be refused (platform capabilities, model path) is checked before
    the build and the server start; once the run directory exists, a failure is recorded
    there as a failed result with its reason rather than lost.
    """
    from harness.build import build_variant
    from harness.results import new_run_dir

    check = preflight(run_cfg)
    started = datetime.now(timezone.utc)
    paths = new_run_dir(run_cfg.results_dir, run_cfg.name, started)
    _say(console, f"run {run_cfg.name}: {paths.root}")
    try:
        model_dir = build_variant(run_cfg, check.compress, log=lambda m: _say(console, m))
        measured = _serve_and_measure(run_cfg, check, model_dir, paths)
        result = _record(run_cfg, config_dict, check, paths, started, measured, error=None)
    except (KeyboardInterrupt, Exception) as err:  # noqa: BLE001 - recorded, then re-raised
        _record(run_cfg, config_dict, check, paths, started, None, error=f"{type(err).__name__}: {err}")
        raise
    from harness.summary import print_summary

    print_summary(result, paths.root, console)
    return result


def _say(console, message: str) -> None:
    (console.print if console is not None else print)(message)


def _serve_and_measure(run_cfg: RunConfig, check, model_dir: Path, paths) -> dict[str, Any]:
    """Serves the model, records the idle, suite and steady windows, replays the suite."""
    from harness.energy import make_meter, steady_window
    from harness.energy.attribution import per_request_energy_j
    from harness.replay import replay
    from harness.server import VllmServer
    from harness.workloads.base import load_samples

    wl = run_cfg.workload
    samples = load_samples(wl.seed, wl.split, wl.limit)
    with VllmServer(model_dir, check.serve, paths.root, served_model_name=SERVED_NAME,
                    dtype=run_cfg.model.dtype, platform=check.platform) as server:
        with make_meter(run_cfg.energy.meter, **_meter_settings(run_cfg, server)) as meter:
            gpu_start = _gpu_state(meter)
            idle_t0 = time.time()
            time.sleep(run_cfg.energy.idle_s)  # model loaded, no request: the idle window
            idle = meter.energy_between(idle_t0, time.time(), name="idle")
            played = replay(server.target, samples, wl, run_cfg.sampling,
                            chat_template_kwargs=check.serve.chat_template_kwargs)
            server.check_alive()
            suite = meter.energy_between(played.start_s, played.end_s, name="suite")
            target = 1 if wl.mode == "sequential" else wl.concurrency  # requests meant to be in flight
            span = steady_window([(r.start_s, r.end_s) for r in played.records], target)
            steady = meter.energy_between(*span, name="steady") if span else None
            per_request = per_request_energy_j(meter, played.records)
            gpu = {"start": gpu_start, "end": _gpu_state(meter)} if gpu_start else None
            meter.write_trace(paths.power_trace)
            source = meter.source
    windows = [w for w in (idle, suite, steady) if w is not None]
    return {"samples": samples, "played": played, "windows": windows, "source": source,
            "per_request_j": per_request, "gpu": gpu, "model_dir": str(model_dir)}


def _gpu_state(meter) -> list[dict] | None:
    """Name, driver, power limit, clocks and temperature of the metered GPUs (None off GPU)."""
    if meter.kind != "nvml":
        return None
    from harness.energy.nvml import gpu_snapshot

    return [gpu_snapshot(i) for i in meter.indices]


def _meter_settings(run_cfg: RunConfig, server) -> dict[str, Any]:
    """Settings for make_meter; the modeled meter watches the server's process tree."""
    import os

    e = run_cfg.energy
    # The config gives package power idle and with every core busy; the model wants watts
    # per busy core-second on top of idle.
    per_core_w = (e.cpu_active_w - e.cpu_idle_w) / (os.cpu_count() or 1)
    return {"hz": e.sample_hz, "pid": server.pgid, "busy_core_w": per_core_w, "idle_w": e.cpu_idle_w}


def _record(run_cfg, config_dict, check, paths, started, measured, error):
    """Scores, gates and writes result.json, requests.jsonl and one runs.jsonl row."""
    from harness import provenance
    from harness.atomic_io import write_jsonl_atomic
    from harness.baseline import gate_against_baseline
    from harness.quality import score
    from harness.request_stats import summarize_requests
    from harness.results import RunResult, append_row, flat_row, write_result

    serve = {"effective": _jsonable(asdict(check.serve)), "platform": check.platform.describe(),
             "fallbacks": [asdict(f) for f in check.fallbacks]}
    quality, energy, gate, stats = {}, {"source": None, "windows": []}, None, (None, None, None)
    if measured is not None:
        played = measured["played"]
        records = played.records
        write_jsonl_atomic(paths.requests, [asdict(r) for r in records])
        report = score(measured["samples"], records)
        quality = report.to_dict()
        energy = {"source": measured["source"], "windows": [w.to_dict() for w in measured["windows"]],
                  "per_request_j": measured["per_request_j"], "gpu": measured["gpu"]}
        stats = summarize_requests(records, played.duration_s)
        gate = gate_against_baseline(run_cfg, config_dict, report, energy)
        serve["model_dir"] = measured["model_dir"]
    result = RunResult(
        run_id=paths.root.name, variant=run_cfg.name, status="ok" if error is None else "failed",
        started_at=started.isoformat(), ended_at=datetime.now(timezone.utc).isoformat(),
        config=config_dict, provenance=provenance.collect(), serve=serve, energy=energy,
        quality=quality, latency=stats[0], throughput=stats[1], counts=stats[2], gate=gate, error=error,
    )
    write_result(paths.root, result)
    append_row(Path(run_cfg.results_dir) / "runs.jsonl", flat_row(result))
    return result


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
