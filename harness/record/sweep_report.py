"""A Hydra callback that prints, at the end of a multirun sweep, which jobs failed and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

OUTCOMES = "outcomes.jsonl"  # one line per finished job, in the sweep directory


class SweepReport(Callback):
    """Collects each job's outcome (the dict harness.__main__._app returns) and prints a table.

    Launchers such as joblib or submitit call on_job_end in the job's own process, so each
    outcome is also appended to <sweep dir>/outcomes.jsonl, which the sweep's process reads.
    """

    def __init__(self) -> None:
        self.outcomes: list[dict[str, Any]] = []

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        from harness.record.result import append_row

        overrides = " ".join(job_return.overrides or [])
        if job_return.status == JobStatus.FAILED:  # an exception _app did not catch
            err = job_return._return_value
            outcome = {"job": overrides, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        else:
            value = job_return.return_value if isinstance(job_return.return_value, dict) else {}
            outcome = {"job": overrides, "status": value.get("status", "ok"), "error": value.get("error")}
        self.outcomes.append(outcome)
        append_row(Path(str(config.hydra.sweep.dir)) / OUTCOMES, outcome)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from rich.console import Console
        from rich.table import Table

        from harness.record.result import read_rows

        outcomes = read_rows(Path(str(config.hydra.sweep.dir)) / OUTCOMES) or self.outcomes
        failed = [o for o in outcomes if o["status"] != "ok"]
        table = Table(title=f"sweep: {len(outcomes) - len(failed)} ok, {len(failed)} failed")
        for column in ("job", "status", "reason"):
            table.add_column(column, overflow="fold")
        for outcome in outcomes:
            table.add_row(outcome["job"], outcome["status"], outcome["error"] or "")
        Console().print(table)
