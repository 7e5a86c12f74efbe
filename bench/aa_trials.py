"""A/A on the real stack: bf16 against bf16 in interleaved trials must give an interval holding 1 and no gap.

    .venv/bin/python -m bench.aa_trials [--trials 5] [--repeats 1] [--limit 20]

Runs `python -m harness +variant=bf16 name=bf16_aa trials=N` (the same checkpoint, served
twice, measured as "variant" and "baseline" in ABBA order with caches emptied before each
trial) into a temporary results folder, and prints, per repeat, the energy ratio, its 95%
interval over trials, whether the interval contains 1, the verdict, and the run-to-run sd of
each side's suite energy. Energy here is whatever the machine's meter gives (modeled on a
CPU without RAPL). Writes bench/records/aa_trials.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "bench" / "records" / "aa_trials.txt"


def one_session(trials: int, limit: int, results: Path) -> dict:
    command = [sys.executable, "-m", "harness", "+variant=bf16", "name=bf16_aa", f"trials={trials}",
               f"workload.limit={limit}", f"results_dir={results}", f"hydra.run.dir={results / 'hydra'}"]
    t0 = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"harness failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (results / "runs.jsonl").read_text().splitlines()]
    variant = json.loads((results / "runs" / rows[-1]["run_id"] / "result.json").read_text())
    base = json.loads((results / "runs" / rows[-2]["run_id"] / "result.json").read_text())
    energy = variant["gate"]["energy"]
    return {"wall_s": time.monotonic() - t0, "ratio": energy["ratio"], "ci_low": energy["ci_low"],
            "ci_high": energy["ci_high"], "gap": energy["gap"], "source": energy["source"],
            "contains_1": energy["ci_low"] <= 1.0 <= energy["ci_high"],
            "sd_variant": variant["energy"]["suite_j_sd"] / variant["energy"]["suite_j_mean"],
            "sd_baseline": base["energy"]["suite_j_sd"] / base["energy"]["suite_j_mean"],
            "variant_j": energy["variant_j"], "baseline_j": energy["baseline_j"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args()
    lines = [f"# A/A: bf16 vs bf16, trials={args.trials}, {args.limit} suite items a trial",
             f"date {time.strftime('%Y-%m-%d %H:%M:%S')}, host {platform.node()}, {os.cpu_count()} CPUs, "
             f"git {_git_sha()}", f"command: python -m bench.aa_trials --trials {args.trials} "
             f"--repeats {args.repeats} --limit {args.limit}", ""]
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            s = one_session(args.trials, args.limit, Path(tmp))
        lines.append(f"repeat {repeat + 1}: ratio {s['ratio']:.4f} [{s['ci_low']:.4f}, {s['ci_high']:.4f}] "
                     f"({s['source']}), contains 1: {s['contains_1']}, verdict: {s['gap']}; run-to-run sd "
                     f"variant {s['sd_variant']:.1%}, baseline {s['sd_baseline']:.1%}; {s['wall_s']:.0f} s")
        lines.append(f"  variant J per trial {[round(j, 1) for j in s['variant_j']]}, "
                     f"baseline J {[round(j, 1) for j in s['baseline_j']]}")
        print(lines[-2], lines[-1], sep="\n", flush=True)
    RECORD.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {RECORD.relative_to(REPO)}")


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
