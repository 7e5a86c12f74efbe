"""Accuracy of the tiny model through real vLLM, per family, greedy and at competition sampling.

    .venv/bin/python -m bench.tiny_accuracy [--limit 400] [--model DIR]

Starts one server (its start-up time is printed), replays the test split twice through the
harness's own replay (greedy, then temperature 1.0 / top_p 0.95 / top_k 64) and prints the
per-family accuracy next to chance, plus the install-facing facts (parameters, bytes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from harness.config.schema import compose
from harness.replay.client import replay
from harness.replay.workloads.base import load_samples
from harness.replay.workloads.synthetic import FAMILIES
from harness.score.quality import score
from harness.serve.vllm import VllmServer
from harness.tiny import DEFAULT_MODEL_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=400)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    args = ap.parse_args()
    run = compose(["workload.mode=concurrent", "workload.concurrency=8", "workload.warmup_requests=2"])
    samples = load_samples(run.workload.seed, "test", args.limit)
    weights = sum(p.stat().st_size for p in args.model.glob("*.safetensors"))
    log_path = args.model / "training_log.json"
    log = json.loads(log_path.read_text()) if log_path.is_file() else {}
    print(f"model {args.model}: {log.get('parameters', '?')} parameters, {weights / 1e6:.1f} MB of weights, "
          f"trained {log.get('train_s', '?')} s")
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with VllmServer(args.model, run.serve, Path(tmp), served_model_name="tiny", dtype=run.model.dtype) as server:
            print(f"server start-up: {time.perf_counter() - t0:.1f} s")
            for name in ("greedy", "competition"):
                sampling = compose([f"sampling={name}"]).sampling
                played = replay(server.target, samples, run.workload, sampling, show_progress=False)
                q = score(samples, played.records)
                report[name] = {"overall": q.overall, **q.per_task}
    print(f"{'family':10} {'chance':>7} {'greedy':>8} {'T=1.0':>8}")
    for task, family in FAMILIES.items():
        print(f"{task:10} {family.chance:7.2f} {report['greedy'][task]:8.3f} {report['competition'][task]:8.3f}")
    print(f"{'overall':10} {'':7} {report['greedy']['overall']:8.3f} {report['competition']['overall']:8.3f}")


if __name__ == "__main__":
    main()
