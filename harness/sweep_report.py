"""A Hydra callback that prints, at the end of a multirun sweep, which jobs failed and why."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback


class SweepReport(Callback):
    """Collects each job's outcome (the dict harness.__main__._app returns) and prints a table."""

    def __init__(self) -> None:
        self.outcomes: list[dict[str, Any]] = []

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        overrides = " ".join(job_return.overrides or [])
        if job_return.status == JobStatus.FAILED:  # an exception _app did not catch
            err = job_return._return_value
            self.outcomes.append({"job": overrides, "status": "failed", "error": f"{type(err).__name__}: {err}"})
            return
        value = job_return.return_value if isinstance(job_return.return_value, dict) else {}
        self.outcomes.append({"job": overrides, "status": value.get("status", "ok"), "error": value.get("error")})

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        from rich.console import Console
        from rich.table import Table

        failed = [o for o in self.outcomes if o["status"] != "ok"]
        table = Table(title=f"sweep: {len(self.outcomes) - len(failed)} ok, {len(failed)} failed")
        for column in ("job", "status", "reason"):
            table.add_column(column, overflow="fold")
        for outcome in self.outcomes:
            table.add_row(outcome["job"], outcome["status"], outcome["error"] or "")
        Console().print(table)
