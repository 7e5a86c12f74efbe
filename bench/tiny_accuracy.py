"""Accuracy of the tiny model through real vLLM, per family and image budget, greedy and at competition sampling.

    .venv/bin/python -m bench.tiny_accuracy [--limit 400] [--model DIR] [--budgets 70 140 280]
                                            [--schemes w4a16_rtn] [--record PATH]

For the model as given (bf16 as the harness serves it) and for each compression scheme named
(compressed here with the bundled `compress`, one server each), starts one server per image
budget and replays the test split twice through the harness's own replay (greedy, then
temperature 1.0 / top_p 0.95 / top_k 64). Prints per-family accuracy next to chance, the
overall figure per budget beside bf16's at the same budget, and the model's facts
(parameters, bytes, training time). Schemes the host has no kernel for are skipped with the
platform's reason. Writes the printout to --record (default bench/records/tiny_accuracy.txt).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from harness.config.schema import compose
from harness.replay.client import replay
from harness.replay.workloads.base import load_samples
from harness.replay.workloads.synthetic import FAMILIES
from harness.score.quality import score
from harness.serve.capabilities import check_platform, detect_platform
from harness.serve.vllm import VllmServer
from harness.tiny import DEFAULT_MODEL_DIR, trained_budgets

RECORD = Path(__file__).parent / "records" / "tiny_accuracy.txt"


def accuracy(model_dir: Path, budget: int, samples, run, say) -> dict[str, dict[str, float]]:
    """{sampling name: {family or 'overall': accuracy}} from one server at `budget`."""
    serve = dataclasses.replace(run.serve, max_soft_tokens=budget)
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with VllmServer(model_dir, serve, Path(tmp), served_model_name="tiny", dtype=run.model.dtype) as server:
            started = time.perf_counter() - t0
            for name in ("greedy", "competition"):
                sampling = compose([f"sampling={name}"]).sampling
                played = replay(server.target, samples, run.workload, sampling, show_progress=False)
                q = score(samples, played.records)
                report[name] = {"overall": q.overall, **q.per_task}
    say(f"  budget {budget}: server start-up {started:.1f} s")
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--budgets", type=int, nargs="+", default=None, help="default: the trained budgets")
    ap.add_argument("--schemes", nargs="*", default=["w4a16_rtn"], help="compression schemes to compare with bf16")
    ap.add_argument("--record", type=Path, default=RECORD)
    args = ap.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    run = compose(["workload.mode=concurrent", "workload.concurrency=8", "workload.warmup_requests=2"])
    budgets = args.budgets or list(trained_budgets(args.model))
    samples = load_samples(run.workload.seed, "test", args.limit)
    weights = sum(p.stat().st_size for p in args.model.glob("*.safetensors"))
    log_path = args.model / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    say(f"# {' '.join(sys.argv)}")
    say(f"# {datetime.date.today()}, {os.cpu_count()} cores, {detect_platform().describe()}; "
        f"{args.limit} test items")
    say(f"model {args.model.name}: {log.get('parameters', '?')} parameters, {weights / 1e6:.1f} MB of weights, "
        f"trained {log.get('train_s', '?')} s at budgets {log.get('budgets', [70])}")
    results: dict[str, dict[int, dict]] = {"bf16": {}}
    say("bf16:")
    for budget in budgets:
        results["bf16"][budget] = accuracy(args.model, budget, samples, run, say)
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in args.schemes:
            from compress import compress_checkpoint
            from compress.configs import config_from_name
            unservable = check_platform(compose([f"compress={scheme}"])).unservable
            if unservable:
                say(f"{scheme}: skipped: {unservable}")
                continue
            out = compress_checkpoint(args.model, Path(tmp) / scheme, config_from_name(scheme))
            say(f"{scheme}:")
            results[scheme] = {b: accuracy(out, b, samples, run, say) for b in budgets}
    for name, by_budget in results.items():
        for budget, report in by_budget.items():
            say(f"{name} @ {budget}: {'family':10} {'chance':>7} {'greedy':>8} {'T=1.0':>8}")
            for task, family in FAMILIES.items():
                say(f"{'':{len(name) + len(str(budget)) + 5}}{task:10} {family.chance:7.2f} "
                    f"{report['greedy'][task]:8.3f} {report['competition'][task]:8.3f}")
    say("# overall greedy (T=1.0) by budget; schemes with their gap to bf16 at the same budget")
    for name, by_budget in results.items():
        cells = []
        for budget, report in by_budget.items():
            g, c = report["greedy"]["overall"], report["competition"]["overall"]
            gap = "" if name == "bf16" else f", {g - results['bf16'][budget]['greedy']['overall']:+.3f}"
            cells.append(f"{budget}: {g:.3f} ({c:.3f}{gap})")
        say(f"{name:10} " + "; ".join(cells))
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text("\n".join(lines) + "\n")
    print(f"record written: {args.record}")


if __name__ == "__main__":
    main()
