"""A variant no server can run on this platform: build it, score it offline, record why.

Where vLLM lacks the weight kernel (int4 on an AVX2-only CPU), starting a server would only
crash mid-load. The run instead builds the checkpoint exactly as for serving and scores it
with transformers (decompressed, greedy; harness.score.offline), so a user still learns
whether the compression kept its quality. The result has status "offline", no energy
windows and no gate (a greedy offline score does not compare with sampled served ones),
and it is never ranked; the run then stops with the platform's reason.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.config.schema import RunConfig


def run_offline(run_cfg: RunConfig, config_dict: dict[str, Any], check, samples, console=None):
    """Builds, scores offline and records ``run_cfg``; then raises PlatformError with the reason.

    Args:
        run_cfg: the run; ``check.unservable`` says why it cannot be served here.
        config_dict: the resolved configuration stored with the result.
        check: the PlatformCheck from preflight.
        samples: the workload's samples, scored in full.
        console: where progress lines go (print when None).

    Raises:
        PlatformError: always, naming the missing kernel, the offline score and where it is.
    """
    from harness.build.variant import build_variant
    from harness.errors import PlatformError
    from harness.record.result import new_run_dir
    from harness.score.offline import evaluate_offline

    say = console.print if console is not None else print
    started = datetime.now(timezone.utc)
    paths = new_run_dir(run_cfg.results_dir, run_cfg.name, started)
    say(f"run {run_cfg.name}: {paths.root}")
    say(f"not servable here ({check.unservable}); building it and scoring it offline with transformers")
    try:
        model_dir = build_variant(run_cfg, check.compress, log=say)
        dtype = "bfloat16" if run_cfg.model.dtype == "bfloat16" else "float32"
        report = evaluate_offline(model_dir, samples, max_new_tokens=run_cfg.sampling.max_tokens, dtype=dtype)
    except (KeyboardInterrupt, Exception) as err:  # noqa: BLE001 - recorded, then re-raised
        reason = str(err) or ("interrupted by SIGINT (Ctrl-C)" if isinstance(err, KeyboardInterrupt) else "")
        _record(run_cfg, config_dict, check, paths, started, None, None, error=f"{type(err).__name__}: {reason}")
        raise
    _record(run_cfg, config_dict, check, paths, started, report, model_dir)
    raise PlatformError(f"{check.unservable} Offline check instead (transformers, greedy, {len(samples)} "
                        f"items): quality {report.overall:.3f}, recorded in {paths.root}.")


def _record(run_cfg, config_dict, check, paths, started, report, model_dir: Path | None,
            error: str | None = None) -> None:
    """Writes result.json and a runs.jsonl row: status offline, or failed with ``error``."""
    from dataclasses import asdict

    from harness.record import provenance
    from harness.record.result import RunResult, append_row, flat_row, write_result

    quality = {**report.to_dict(), "engine": "offline-transformers-greedy"} if report is not None else {}
    serve = {"platform": check.platform.describe(), "unservable": check.unservable,
             "fallbacks": [asdict(f) for f in check.fallbacks], "model_dir": str(model_dir) if model_dir else None}
    result = RunResult(
        run_id=paths.root.name, variant=run_cfg.name, status="failed" if error else "offline",
        started_at=started.isoformat(),
        ended_at=datetime.now(timezone.utc).isoformat(), config=config_dict, provenance=provenance.collect(),
        serve=serve, energy={"source": None, "windows": []}, quality=quality, latency=None, throughput=None,
        counts=None, gate=None, error=error or check.unservable,
    )
    write_result(paths.root, result)
    append_row(Path(run_cfg.results_dir) / "runs.jsonl", flat_row(result))
