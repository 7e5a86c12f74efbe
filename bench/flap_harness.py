"""FLAP against its ablations at one pruning ratio, each measured on the suite through the harness.

    .venv/bin/python -m bench.flap_harness [--ratio 0.7] [--limit 200] [--results DIR]

Runs `python -m harness` (real build, real vLLM server with the project's plugin, real replay)
for: the dense baseline (bf16), FLAP with bias compensation, FLAP without it, magnitude
pruning of the same share (no bias), FLAP with statistics from text positions only (image soft
tokens left out), and FLAP followed by distillation, all at `--ratio` of the
FFN channels by one global threshold (no layer protected, at most 90% of a layer), greedy
decoding on `--limit` test items. Prints one row per run from results/runs.jsonl: quality
(exact match), its ratio to the dense model with the gate's bootstrap interval, the kept FFN
parameters, and the suite energy (modeled on a CPU: the server's CPU time, not a counter).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def runs(ratio: float) -> dict[str, list[str]]:
    prune = [f"compress.ratio={ratio}", "compress.protect_roles=[]", "compress.max_layer_ratio=0.9"]
    distill = [f"compress.steps.0.ratio={ratio}", "compress.steps.0.protect_roles=[]",
               "compress.steps.0.max_layer_ratio=0.9"]
    return {
        "flap_bias": ["+variant=flap_global", "name=flap_bias", *prune],
        "flap_no_bias": ["+variant=flap_global", "name=flap_no_bias", *prune, "compress.bias_compensation=false"],
        "flap_text_bias": ["+variant=flap_global", "name=flap_text_bias", *prune, "compress.calibration_tokens=text"],
        "magnitude": ["+variant=flap_global", "name=magnitude", *prune, "compress.method=magnitude",
                      "compress.bias_compensation=false"],
        "flap_distill": ["+variant=flap_distill", *distill],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratio", type=float, default=0.7)
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    root = args.results or Path(tempfile.mkdtemp(prefix="flap-harness-"))
    common = ["sampling=greedy", f"workload.limit={args.limit}", f"results_dir={root}", f"cache_dir={root / 'cache'}"]
    for label, overrides in runs(args.ratio).items():
        proc = subprocess.run([sys.executable, "-m", "harness", *overrides, *common,
                               f"hydra.run.dir={root / 'hydra' / label}"], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"# {label} failed:\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}", flush=True)
    print(f"# ratio {args.ratio} of FFN channels, greedy, {args.limit} test items, results in {root}")
    print(f"{'run':<14} {'quality':>8} {'ratio':>6} {'95% CI':>15} {'FFN widths':>22} {'suite J':>8} source")
    for row in (json.loads(line) for line in (root / "runs.jsonl").read_text().splitlines()):
        if row["status"] != "ok":
            continue
        widths = _widths(root, row["run_id"])
        ci = f"[{row['gate_ratio_ci_low']:.3f},{row['gate_ratio_ci_high']:.3f}]" if row.get("gate_ratio") else ""
        ratio = f"{row['gate_ratio']:.3f}" if row.get("gate_ratio") else "1"
        print(f"{row['variant']:<14} {row['quality_overall']:>8.3f} {ratio:>6} {ci:>15} {widths:>22} "
              f"{row['suite_energy_j']:>8.1f} {row['energy_source']}")


def _widths(root: Path, run_id: str) -> str:
    result = json.loads((root / "runs" / run_id / "result.json").read_text())
    model_dir = Path(result["serve"].get("model_dir") or "")
    config = model_dir / "config.json"
    if not config.is_file():
        return "-"
    text = json.loads(config.read_text()).get("text_config", {})
    return str(text.get("intermediate_sizes", [text.get("intermediate_size")] * text.get("num_hidden_layers", 0)))


if __name__ == "__main__":
    main()
