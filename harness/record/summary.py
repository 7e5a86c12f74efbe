"""The end-of-run summary printed to the terminal from a RunResult."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.record.parts import EnergyPart, GatePart, QualityPart, ServePart
from harness.record.result import RunResult


def _num(value: float | None, fmt: str = ".1f") -> str:
    """The value formatted, or "-" when unknown (None; also an infinite ratio read back from JSON)."""
    return "-" if value is None else format(value, fmt)


def _chance(task: str) -> float | None:
    from harness.replay.workloads.synthetic import FAMILIES

    family = FAMILIES.get(task)
    return None if family is None else family.chance


def energy_table(energy: EnergyPart) -> Table:
    """One row per window; every figure sits next to its source (measured or modeled)."""
    table = Table(title=f"Energy (source: {energy.source or 'unknown'})")
    for column in ("window", "duration_s", "energy_j", "avg_power_w", "source"):
        table.add_column(column, justify="left" if column in ("window", "source") else "right")
    for window in energy.windows:
        source = window.get("source", "unknown")
        flags = ", ".join(window.get("flags", ()))
        table.add_row(
            window.get("name", "?"),
            _num(window.get("duration_s"), ".2f"),
            _num(window.get("energy_j")),
            _num(window.get("avg_power_w")),
            source if not flags else escape(f"{source} [{flags}]"),
        )
    return table


def quality_table(quality: QualityPart) -> Table:
    """Accuracy per task family beside its chance level, then the macro and micro means."""
    table = Table(title=f"Quality (metric: {quality.metric})")
    for column in ("task", "accuracy", "chance"):
        table.add_column(column, justify="left" if column == "task" else "right")
    for task, accuracy in quality.per_task.items():
        table.add_row(task, _num(accuracy, ".3f"), _num(_chance(task), ".3f"))
    table.add_row("overall (macro)", _num(quality.overall, ".3f"), "")
    table.add_row("overall (micro)", _num(quality.overall_micro, ".3f"), "")
    return table


def _ratio_text(ratio: Mapping[str, Any]) -> str:
    confidence = ratio.get("confidence", 0.95) * 100
    point, low, high = (_num(ratio.get(key), ".3f") for key in ("point", "ci_low", "ci_high"))
    return f"{point} [{low}, {high}] ({confidence:.0f}% CI)"


def _trials_line(energy: EnergyPart) -> str | None:
    """How many trials were measured and the suite energy's spread over them."""
    trials = energy.trials
    if not trials:
        return None
    sd, mean = energy.suite_j_sd, energy.suite_j_mean
    spread = f", run-to-run sd {sd / mean:.1%}" if sd is not None and mean else ""
    partial = " (partial: a resumed run, never compared or ranked)" if energy.partial else ""
    per_token = [t["steady_j_per_output_token"] for t in trials if t.get("steady_j_per_output_token")]
    steady = (f"; steady state {sum(per_token) / len(per_token):.3g} J per output token" if per_token
              else next((f"; {t['steady_note']}" for t in trials if t.get("steady_note")), ""))
    return (f"Trials: {len(trials)}, mean suite energy {_num(mean)} J ({energy.source}){spread}{partial}"
            f"{steady}")


def _energy_line(energy: Mapping[str, Any]) -> str:
    """The energy comparison in words (its own description: ratio, what the interval covers, verdict)."""
    return (f"  {energy['describe']}; suite energy {energy['variant_mean_j']:.1f} J vs baseline "
            f"{energy['baseline_mean_j']:.1f} J (mean over trials)")


def _gate_lines(gate: GatePart | None) -> list[str]:
    if gate is None:
        return ["Gate: not run (no comparable baseline for this suite and sampling)"]
    if gate.error:
        return [escape(f"Gate: could not be computed ({gate.error})")]
    lines = [
        f"Gate: [bold]{gate.verdict.upper()}[/bold] (rule {gate.rule}, threshold {gate.threshold:.2f}, "
        f"point estimate {'meets' if gate.point_pass else 'misses'} it)",
        f"  quality ratio {_ratio_text(gate.overall)}",
    ]
    if gate.rule == "every_task":
        lines += [f"  {task}: {_ratio_text(ratio)}" for task, ratio in gate.per_task.items()]
    if gate.energy is not None:
        lines.append(escape(_energy_line(gate.energy)))
    lines += [escape(f"  note: {note}") for note in gate.notes]
    return lines


def _quality_zero_line(quality: QualityPart) -> str | None:
    counts = quality.counts
    zeros = {name: counts.get(name, 0) for name in ("empty", "truncated", "error", "missing")}
    if not any(zeros.values()):
        return None
    return "Scored 0 by rule: " + ", ".join(f"{count} {name}" for name, count in zeros.items() if count)


def _speed_lines(result: RunResult) -> list[str]:
    lines = []
    if result.latency is not None:
        lat = result.latency
        lines.append(
            f"Latency: ttft_ms p50/p90/p99 {_num(lat.ttft_ms.p50)}/{_num(lat.ttft_ms.p90)}/{_num(lat.ttft_ms.p99)}, "
            f"latency_ms p50/p99 {_num(lat.latency_ms.p50)}/{_num(lat.latency_ms.p99)}, "
            f"itl_ms p50 {_num(lat.itl_ms.p50, '.2f')}"
        )
    if result.throughput is not None:
        lines.append(
            f"Throughput: {_num(result.throughput.output_tok_per_s)} output tok/s, "
            f"{_num(result.throughput.requests_per_s, '.2f')} requests/s"
        )
    if result.counts is not None:
        c = result.counts
        lines.append(f"Requests: {c.requests} ({c.ok} ok, {c.errors} errors, {c.truncated} truncated)")
    return lines


def _length_lines(result: RunResult) -> list[str]:
    """Answer length per task (trial 1, server-counted output tokens), its limit, and the decode share."""
    lengths = result.lengths or {}
    lines = []
    if lengths.get("all", {}).get("n"):
        every = lengths["all"]
        limit = ("" if every.get("max_tokens_max") is None else f"; max_tokens {every['max_tokens_min']}-"
                 f"{every['max_tokens_max']} (set by {', '.join(every['max_tokens_from'])})")
        tasks = ", ".join(f"{task} {_num(s['mean'], '.1f')}/{_num(s['p90'], '.0f')}/{s['max']}"
                          for task, s in lengths.items() if task != "all" and s.get("n"))
        lines.append(f"Answer length (output tokens mean/p90/max): all {_num(every['mean'], '.1f')}/"
                     f"{_num(every['p90'], '.0f')}/{every['max']}; {tasks}{limit}")
    thinking = result.thinking or {}
    if thinking.get("enabled") or thinking.get("answers_with_thought"):
        tokens = thinking.get("thought_tokens")
        lines.append(f"Thinking {'on' if thinking.get('enabled') else 'OFF'}: {thinking['answers_with_thought']} of "
                     f"{thinking['answers']} answers hold a thought block"
                     + (f", {tokens} thought tokens" if tokens is not None else ""))
    share = result.energy.decode_share()
    if share is not None:
        lines.append(f"Decode: {share:.0%} of suite time and energy (attributed by time over the trials' windows, "
                     "not a separate meter reading)")
    return [escape(line) for line in lines]


def _change_lines(serve: ServePart) -> list[str]:
    return [escape(f"Differs from the base model: {change}") for change in serve.changes_from_base]


def _fallback_lines(serve: ServePart) -> list[str]:
    return [
        escape(f"Fallback: {fb['setting']} {fb['requested']} -> {fb['effective']} ({fb['reason']})")
        for fb in serve.fallbacks
    ]


def print_summary(result: RunResult, run_dir: Path | str | None = None, console: Console | None = None) -> None:
    """Prints the run's energy, quality, gate, speed, serve fallbacks and run directory.

    Args:
        result: the finished run.
        run_dir: where its files were written (printed last).
        console: a rich Console (a recording one in tests); stdout when None.
    """
    console = console or Console()
    console.rule(f"{result.variant} — run {result.run_id} — {result.status}")
    if result.error:
        console.print(f"[red]Error:[/red] {escape(result.error)}")
    if result.energy.windows:
        console.print(energy_table(result.energy))
    if result.quality is not None and result.quality.per_task:
        console.print(quality_table(result.quality))
        zero_line = _quality_zero_line(result.quality)
        if zero_line:
            console.print(zero_line)
    trials = _trials_line(result.energy)
    lines = [trials] if trials else []
    for line in (lines + _gate_lines(result.gate) + _speed_lines(result) + _length_lines(result)
                 + _fallback_lines(result.serve) + _change_lines(result.serve)):
        console.print(line)
    if run_dir is not None:
        console.print(f"Run directory: {run_dir}")
