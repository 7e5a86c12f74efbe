"""`python -m harness +variant=NAME`: one variant through build, serve, replay, measure, score, record."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from harness.config.schema import CONF_DIR, RunConfig, compose, to_run_config
from harness.errors import HarnessError
from harness.record.result import config_dict


def baseline_config(run_cfg: RunConfig, overrides: list[str]) -> RunConfig | None:
    """The baseline measured alongside ``run_cfg`` (same model, suite, sampling, serving), or None.

    None when the run is the baseline itself, or a variant no server can run here (it is
    scored offline and never gated, so measuring a baseline would be wasted).
    """
    from harness.preflight import preflight
    from harness.score.baseline import baseline_overrides

    baseline = run_cfg.quality.baseline_variant
    if run_cfg.name == baseline or preflight(run_cfg).unservable:
        return None
    return compose([f"+variant={baseline}", *baseline_overrides(overrides)])


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> dict | None:
    """One job. In a multirun sweep a failed job is reported and returned (as a dict that the
    sweep report callback collects) so the sweep goes on; alone, it exits as before."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from rich.console import Console

    from harness.pipeline import run

    console = Console()
    for noisy in ("httpx", "httpx2", "httpcore"):  # one INFO line per request would bury the run's own output
        logging.getLogger(noisy).setLevel(logging.WARNING)
    hydra_cfg = HydraConfig.get()
    variant = str(cfg.get("name", "?"))
    try:
        run_cfg = to_run_config(cfg)
        base_cfg = baseline_config(run_cfg, list(hydra_cfg.overrides.task))
        run(run_cfg, config_dict(run_cfg), console, baseline=base_cfg)
    except Exception as err:  # noqa: BLE001 - user errors become one line; others re-raise
        if hydra_cfg.mode == RunMode.MULTIRUN:
            console.print(f"[red]job {hydra_cfg.job.num} ({variant}) failed:[/] {_first_line(err)}",
                          markup=True, highlight=False, soft_wrap=True)
            return {"variant": variant, "status": "failed", "error": f"{type(err).__name__}: {_first_line(err)}"}
        if not isinstance(err, HarnessError):  # a bug: keep its traceback
            raise
        console.print(f"[red]error:[/] {err}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(2)
    return {"variant": variant, "status": "ok", "error": None}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _override(argv: list[str], key: str) -> str | None:
    """The value the command line gives ``key`` (the last one wins, as in Hydra), else None."""
    values = [a.partition("=")[2] for a in argv if a.lstrip("+~").partition("=")[0] == key]
    return values[-1] if values else None


def main() -> None:
    from harness.preflight import check_results_dir, unknown_variant
    from harness.serve.gpu_slots import register_resolvers
    from harness.serve.vllm import install_sigterm_handler

    problem = unknown_variant(sys.argv[1:])  # Hydra's own message is a dozen lines
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    try:  # Hydra makes its run folder under results_dir before any of our code runs
        check_results_dir(_override(sys.argv[1:], "results_dir") or "results")
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    install_sigterm_handler()  # SIGTERM unwinds like Ctrl-C from the start: the run is recorded
    register_resolvers()  # ${harness_gpu_count:} in conf/hydra/launcher/gpus.yaml
    try:
        _app()
    except KeyboardInterrupt as err:  # the server is stopped and the run recorded by now
        reason = str(err) or "interrupted by SIGINT (Ctrl-C)"
        print(f"{reason}: stopped; a started run is recorded as failed: rerun the same command to resume",
              file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
