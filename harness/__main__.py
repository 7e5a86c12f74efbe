"""`python -m harness +variant=NAME`: one variant through build, serve, replay, measure, score, record."""

from __future__ import annotations

import sys
from dataclasses import asdict

import hydra
from omegaconf import DictConfig

from harness.config import CONF_DIR, RunConfig, compose, to_run_config

# Errors that mean "the input or the platform is wrong": shown as one line, no traceback.
USER_ERRORS = ("ConfigError", "PlatformError", "BuildError", "ServerError", "FileExistsError", "RunFailed")


def config_dict(run_cfg: RunConfig) -> dict:
    """The resolved configuration as plain data, as stored with every result (secrets redacted)."""
    from harness.pipeline import _jsonable
    from harness.redact import redact_config

    return redact_config(_jsonable(asdict(run_cfg)))


def baseline_overrides(overrides: list[str]) -> list[str]:
    """The run's overrides that also apply to its baseline: model, workload, sampling, serve...

    The variant's own identity (variant, name) and compression stay with the variant.
    """
    return [o for o in overrides if not o.lstrip("+~").startswith(("variant=", "name=", "compress.", "compress="))]


def ensure_baseline(run_cfg: RunConfig, overrides: list[str], console) -> None:
    """Runs the baseline variant first when no comparable baseline result exists yet."""
    from harness.baseline import find_baseline
    from harness.pipeline import preflight, run

    baseline = run_cfg.quality.baseline_variant
    if run_cfg.name == baseline or find_baseline(run_cfg.results_dir, baseline, config_dict(run_cfg)):
        return
    if preflight(run_cfg).unservable:  # refuse an impossible variant before spending time on its baseline
        return  # scored offline, never gated: no baseline needed
    base_cfg = compose([f"+variant={baseline}", *baseline_overrides(overrides)])
    console.print(f"[bold]no comparable {baseline} result in {run_cfg.results_dir}: running the baseline first[/]")
    run(base_cfg, config_dict(base_cfg), console)


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> dict | None:
    """One job. In a multirun sweep a failed job is reported and returned (as a dict that the
    sweep report callback collects) so the sweep goes on; alone, it exits as before."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from rich.console import Console

    from harness.pipeline import run

    console = Console()
    hydra_cfg = HydraConfig.get()
    variant = str(cfg.get("name", "?"))
    try:
        run_cfg = to_run_config(cfg)
        ensure_baseline(run_cfg, list(hydra_cfg.overrides.task), console)
        run(run_cfg, config_dict(run_cfg), console)
    except Exception as err:  # noqa: BLE001 - user errors become one line; others re-raise
        if hydra_cfg.mode == RunMode.MULTIRUN:
            console.print(f"[red]job {hydra_cfg.job.num} ({variant}) failed:[/] {_first_line(err)}",
                          markup=True, highlight=False, soft_wrap=True)
            return {"variant": variant, "status": "failed", "error": f"{type(err).__name__}: {_first_line(err)}"}
        if type(err).__name__ not in USER_ERRORS:
            raise
        console.print(f"[red]error:[/] {err}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    return {"variant": variant, "status": "ok", "error": None}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def main() -> None:
    from harness.gpu_slots import register_resolvers
    from harness.input_checks import unknown_variant
    from harness.server import install_sigterm_handler

    problem = unknown_variant(sys.argv[1:])  # Hydra's own message is a dozen lines
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    install_sigterm_handler()  # SIGTERM unwinds like Ctrl-C from the start: the run is recorded
    register_resolvers()  # ${harness_gpu_count:} in conf/hydra/launcher/gpus.yaml
    try:
        _app()
    except KeyboardInterrupt as err:  # the server is stopped and the run recorded by now
        reason = str(err) or "interrupted by SIGINT (Ctrl-C)"
        print(f"{reason}: stopped; a started run is recorded as failed: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
