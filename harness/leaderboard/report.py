"""`python -m harness.leaderboard`: the ranked comparison of runs in results/ as a table, CSV, Markdown and plots."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from harness.leaderboard.data import Board, build_board

# Columns of leaderboard.csv / .md, in order; quality_<family> columns are inserted before quality_overall.
COLUMNS = (
    "rank", "variant", "engine", "group", "model", "hardware", "energy_source", "energy_flags", "n_runs",
    "suite_energy_j", "suite_energy_j_ci_low", "suite_energy_j_ci_high", "suite_energy_j_std", "suite_energy_ci_basis",
    "j_per_request", "j_per_output_token", "idle_power_w", "output_tokens_per_request", "output_tokens_p50",
    "output_tokens_p90", "output_tokens_max", "decode_share", "output_tok_per_s",
    "ttft_ms_p50", "ttft_ms_p95", "latency_ms_p50", "latency_ms_p95", "quality_overall",
    "quality_ratio", "quality_ratio_ci_low", "quality_ratio_ci_high",
    "energy_ratio", "energy_ratio_ci_low", "energy_ratio_ci_high", "gate", "run_ids",
)
# The terminal shows fewer columns; the files hold them all.
CONSOLE_COLUMNS = {"rank": "rank", "variant": "variant", "engine": "engine", "suite_energy": "suite J [95% CI]",
                   "j_per_request": "J/req", "j_per_output_token": "J/tok", "idle_power_w": "idle W",
                   "output_tokens_p90": "answer p90",
                   "decode_share": "decode", "output_tok_per_s": "tok/s",
                   "latency_ms_p95": "p95 ms", "quality_overall": "quality", "quality_ratio": "q ratio [CI]",
                   "gate": "gate"}


def gate_text(row) -> str:
    """The gate column: 'baseline', 'no baseline run', or the CI verdict and the point check."""
    if row["is_baseline"]:
        return "baseline"
    verdict = row["gate_verdict"]
    if verdict is None or (isinstance(verdict, float) and math.isnan(verdict)):
        return "no baseline run"
    point = "point >= threshold" if row["gate_point_pass"] else "point < threshold"
    return f"{verdict} (CI); {point}"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _interval(row, name: str) -> str:
    low, high = row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    return f"{_fmt(row[name])} [{_fmt(low)}, {_fmt(high)}]" if _fmt(low) != "-" else _fmt(row[name])


def columns(table) -> list[str]:
    """COLUMNS with this table's quality_<family> columns inserted before quality_overall."""
    families = sorted(c for c in table.columns if c.startswith("quality_")
                      and c not in COLUMNS and not c.startswith("quality_ratio"))
    cols = list(COLUMNS)
    at = cols.index("quality_overall")
    return cols[:at] + families + cols[at:]


def export_table(board: Board):
    """The table as written to CSV: every column, the gate in words, rank empty when unranked."""
    table = board.table.copy()
    table["gate"] = [gate_text(r) for _, r in table.iterrows()]
    return table[columns(table)]


def group_differences(board: Board) -> dict[str, str]:
    """For each group after G1, the setup sections in which it differs from G1."""
    setups = board.runs.drop_duplicates("group").set_index("group")["setup"].map(json.loads)
    first = setups.get("G1", {})
    return {g: ", ".join(k for k in s if s.get(k) != first.get(k)) for g, s in setups.items() if g != "G1"}


def markdown(board: Board, plots: list[Path]) -> str:
    """leaderboard.md: one table per comparable group, then failed runs, then definitions."""
    lines = ["# Leaderboard", "", "Generated from results/ by `python -m harness.leaderboard`; do not edit.", ""]
    if board.table.empty:
        lines.append("No successful runs match.")
    table, diffs = export_table(board), group_differences(board) if not board.table.empty else {}
    for group, description in board.groups.items():
        lines += [f"## {group}", "", description + ".", ""]
        if group in diffs:
            lines += [f"Not ranked with G1: differs in {diffs[group]}.", ""]
        lines += _md_table(table[table["group"] == group].drop(columns=["group"]))
        lines.append("")
        lengths = _group_lengths(board, group)
        if lengths is not None:
            lines += [f"Answer length in {group}: output tokens per answer, by task", ""] + _md_table(lengths) + [""]
    if not board.failed.empty:
        lines += ["## Failed runs (not ranked)", ""] + _md_table(board.failed) + [""]
    lines += [
        "## How to read it", "",
        "- Rank: within a group, variants keeping >= the gate threshold of the baseline's quality (point "
        "estimate, as the judges score one run) by suite energy ascending; the others follow unranked.",
        "- engine: what served the variant, as the judges launch it: vllm (`vllm serve --config "
        "vllm_config.yaml`) or llama_cpp (`llama-server` on the GGUF folder). Both rank in one group, each "
        "gated against the same bf16 baseline served by vLLM.",
        "- suite_energy_j: energy over the whole suite window (first request sent to last answer received), "
        "mean over every trial of the variant's runs; CI basis 'trials' is a t-interval over those trials "
        "('none' below 2).",
        "- j_per_request = suite energy / requests; j_per_output_token = suite energy / output tokens; "
        "idle_power_w = idle window energy / its duration (model loaded, no request).",
        "- quality_ratio: variant / baseline with its 95% paired bootstrap interval over items (newest run); "
        "energy_ratio: variant / baseline suite energy over the newest run's paired trials, with a 95% "
        "t-interval over those trials (none with one trial: no gap is claimed).",
        "- output_tokens_p50/p90/max: output tokens per successful request (the server's count), pooled over "
        "the variant's runs; the answer-length tables give them by task with n, mean and the effective "
        "max_tokens (what vLLM capped each answer at: sent, or from the served generation config, or the "
        "context left). The suite's energy is not normalised per token: longer answers cost energy.",
        "- decode_share: share of the suite window's time, and so of its energy, attributed to decoding "
        "answers (each instant split among the requests in flight; decode after a request's first token); "
        "an attribution by time, not a separate meter reading. '-' for runs recorded before it existed.",
        "- energy_flags: integrity flags of any suite window (counter stuck or disagreeing with power, a warm "
        "cache, ...): a flagged row is ranked but its energy is suspect; read the run's result.json.",
        "- gate: the CI verdict (pass: lower bound >= threshold; fail: upper bound below; else uncertain) and "
        "the point check. Energy sources are never mixed within a group.", "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _group_lengths(board: Board, group: str):
    """The answer-length rows of one group, without the group column (None when there are none)."""
    lengths = board.lengths
    if lengths is None or lengths.empty:
        return None
    return lengths[lengths["group"] == group].drop(columns=["group"])


def _md_table(frame) -> list[str]:
    cells = [[_fmt(v) for v in row] for row in frame.itertuples(index=False)]
    head = [str(c) for c in frame.columns]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in cells]


def print_board(board: Board, console) -> None:
    """Rich tables on the terminal: one per group, then failed runs."""
    from rich.table import Table

    if board.table.empty:
        console.print("no successful runs match")
    diffs = group_differences(board) if not board.table.empty else {}
    for group, description in board.groups.items():
        note = f"\n[yellow]not ranked with G1: differs in {diffs[group]}[/]" if group in diffs else ""
        table = Table(title=f"{group}: {description}{note}", title_justify="left")
        for column, title in CONSOLE_COLUMNS.items():
            table.add_column(title, justify="left" if column in ("variant", "engine", "gate") else "right")
        for _, row in board.table[board.table["group"] == group].iterrows():
            values = {"suite_energy": f"{_interval(row, 'suite_energy_j')} {row['energy_source']}",
                      "quality_ratio": _interval(row, "quality_ratio"), "gate": gate_text(row)}
            table.add_row(*(values.get(c) or _fmt(row[c]) for c in CONSOLE_COLUMNS))
        console.print(table)
    if not board.failed.empty:
        failed = Table(title="failed runs (not ranked)", title_justify="left")
        for column in board.failed.columns:
            failed.add_column(column)
        for row in board.failed.itertuples(index=False):
            failed.add_row(*(str(v) for v in row))
        console.print(failed)


def write_plots(board: Board, results_dir: Path, out: Path, trace_run: str | None = None) -> list[Path]:
    """Per group the energy-vs-quality and energy-by-family plots; one power trace (the given
    run, else the top-ranked run of G1)."""
    from harness.leaderboard import plots

    written = []
    for group, description in board.groups.items():
        written.append(plots.energy_vs_quality(board.table, group, description, out / f"{group}_energy_vs_quality.png"))
        written.append(plots.energy_by_family(board.runs, group, out / f"{group}_energy_by_family.png"))
    if trace_run is None and not board.table.empty:
        trace_run = board.table.iloc[0]["run_ids"].split()[-1]
    if trace_run:
        written.append(plots.power_trace(results_dir / "runs" / trace_run, out / f"power_trace_{trace_run}.png"))
    return written


def write_outputs(board: Board, results_dir: Path, out: Path, trace_run: str | None = None) -> list[Path]:
    """Writes leaderboard.csv, lengths.csv (answer length by task), leaderboard.md and the PNG plots
    into `out`; returns their paths."""
    from harness.record.atomic import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(board, results_dir, out, trace_run) if not board.table.empty else []
    csv_text = export_table(board).to_csv(index=False) if not board.table.empty else ""
    lengths = board.lengths
    lengths_text = lengths.to_csv(index=False) if lengths is not None and not lengths.empty else ""
    csv_path, lengths_path, md_path = out / "leaderboard.csv", out / "lengths.csv", out / "leaderboard.md"
    write_text_atomic(csv_path, csv_text)
    write_text_atomic(lengths_path, lengths_text)
    write_text_atomic(md_path, markdown(board, plots))
    return [csv_path, lengths_path, md_path, *plots]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m harness.leaderboard", description=__doc__)
    parser.add_argument("--results", type=Path, default=Path("results"), help="results folder (holds runs.jsonl)")
    parser.add_argument("--model", help="only runs of this model name (e.g. tiny-gemma4)")
    parser.add_argument("--hardware", help="only runs whose hardware contains this text (e.g. H100)")
    parser.add_argument("--workload", help="only runs of this workload name (e.g. synthetic)")
    parser.add_argument("--trace-run", help="run id whose power trace is plotted (default: G1's top run)")
    parser.add_argument("--out", type=Path, help="output folder (default: RESULTS/leaderboard)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    console = Console()
    if not console.is_terminal:  # logs and pipes: room for the whole table rather than 80 columns
        console = Console(width=160)
    if not (args.results / "runs.jsonl").is_file():
        console.print(f"[red]error:[/] {args.results / 'runs.jsonl'} does not exist: run `python -m harness "
                      "+variant=NAME` first or pass --results DIR", soft_wrap=True)
        return 2
    board = build_board(args.results, model=args.model, hardware=args.hardware, workload=args.workload)
    print_board(board, console)
    for path in write_outputs(board, args.results, args.out or args.results / "leaderboard", args.trace_run):
        console.print(f"wrote {path}", soft_wrap=True)
    return 0

