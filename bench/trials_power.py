"""How often the paired-trial energy comparison claims a gap: false gaps and detection of a true 5% gap.

    .venv/bin/python -m bench.trials_power [--sessions 2000] [--drift 0.03] [--seed 0]

Each comparison is one simulated session (tests/fakes/trial_trace.py): N baseline and N
variant trials in the harness's ABBA order on one GPU, each trial a power trace whose load
energy carries the true gap, a linear drift over the session and a log-normal run-to-run
factor of the given CV; the trace is read through a 100 ms NVML-style counter sampled at 10 Hz
into a DeviceSeries, each trial's suite energy is its window's energy from that series, and
harness.score.energy.compare_trials (95% t-interval on the paired log ratios) gives the
verdict. Prints, for trials in {1, 3, 5, 8} and CV in {1%, 2%, 4%}:
    false gap: identical variants declared "lower" or "higher" (should be ~5%, the interval's
        nominal miss rate);
    detected: a variant using 0.95x the baseline's load energy declared "lower";
    theory: the detection rate a t-test on log ratios with sd sqrt(2) * sigma(CV) would
        have (noncentral t), for reference. It leaves out the drift: with an odd number of
        trials ABBA leaves one drift step uncancelled (+drift / (2N - 1) / N on the mean log
        ratio, toward "higher"), and the alternating +-step adds to the pairs' spread, which
        is why 3 trials at 1% CV detect less than theory says.
With one trial no interval exists, so neither rate can be anything but 0. Writes
bench/records/trials_power.txt.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tests.fakes.trial_trace import gap_rates, lognormal_sigma

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "bench" / "records" / "trials_power.txt"
TRIALS = (1, 3, 5, 8)
CVS = (0.01, 0.02, 0.04)
GAP = 0.95
HEADLINE = (5, 0.02)  # trials, CV


def theory_detection(trials: int, cv: float, gap: float = GAP, confidence: float = 0.95) -> float | None:
    """P(the t-interval lies below 1) for normal log ratios with mean log(gap), sd sqrt(2) * sigma."""
    if trials < 2:
        return None
    from scipy import stats

    sd = math.sqrt(2) * lognormal_sigma(cv)
    df, ncp = trials - 1, -math.log(gap) / (sd / math.sqrt(trials))
    return float(stats.nct.sf(stats.t.ppf(0.5 + confidence / 2, df), df, ncp))


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=2000, help="comparisons per cell")
    parser.add_argument("--drift", type=float, default=0.03, help="linear drift over a session")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    started = time.monotonic()
    cells = {}
    for i, (trials, cv) in enumerate((t, c) for t in TRIALS for c in CVS):
        seed = args.seed + 2 * i  # independent sessions for every cell and side of it
        same = gap_rates(seed, args.sessions, trials, cv=cv, drift=args.drift, gap=1.0)
        gapped = gap_rates(seed + 1, args.sessions, trials, cv=cv, drift=args.drift, gap=GAP)
        cells[trials, cv] = (same["lower"] + same["higher"], gapped["lower"], theory_detection(trials, cv))
    command = "python -m bench.trials_power " + " ".join(sys.argv[1:])
    false_gap, detected, _ = cells[HEADLINE]
    lines = [
        f"# {command.strip()}",
        f"# {time.strftime('%Y-%m-%d')}, git {git_sha()}, {platform.machine()} with {os.cpu_count()} CPUs, "
        f"{time.monotonic() - started:.0f} s",
        f"# {args.sessions} simulated sessions per cell, ABBA order, drift {args.drift:.0%} over a session, "
        f"95% t-interval on paired log ratios of suite-window energy (100 ms counter sampled at 10 Hz)",
        f"{HEADLINE[0]} trials, CV {HEADLINE[1]:.0%}: identical variants declared different in {false_gap:.1%}; "
        f"a true {1 - GAP:.0%} gap detected as lower in {detected:.1%}",
        f"# binomial standard error of a rate p over {args.sessions} sessions: "
        f"{math.sqrt(0.05 * 0.95 / args.sessions):.1%} at p = 5%, {math.sqrt(0.15 * 0.85 / args.sessions):.1%} at 85%",
        "",
        f"{'trials':>6} {'CV':>4} {'false gap':>10} {'detected':>9} {'theory':>7}",
    ]
    for (trials, cv), (false_gap, detected, theory) in cells.items():
        theory_text = "-" if theory is None else f"{theory:.1%}"
        lines.append(f"{trials:>6} {cv:>4.0%} {false_gap:>10.1%} {detected:>9.1%} {theory_text:>7}")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RECORD.write_text(text)


if __name__ == "__main__":
    main()
