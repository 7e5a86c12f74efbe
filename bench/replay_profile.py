"""Where the replay client's CPU goes: cProfile of one replay, for this checkout or another one.

    .venv/bin/python -m bench.replay_profile [--root CHECKOUT] [--record PATH]

Serves the tiny model, replays 128 suite samples once to warm the server's caches, then
three timed replays at concurrency 4 (32 forced tokens, greedy) and one under cProfile.
Prints output tok/s and the process CPU seconds per 1,000 output tokens of each timed call
(the whole call: request building included), and the 15 functions with the most own CPU
time. `--root` imports the harness from another checkout (e.g. a `git worktree` of an older
commit) so a change of client can be compared on the same machine and server.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--record", type=Path, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    for name in [m for m in sys.modules if m == "harness" or m.startswith("harness.")]:
        del sys.modules[name]
    from harness.config.schema import compose
    from harness.replay.client import replay
    from harness.replay.workloads.base import load_samples
    from harness.serve.vllm import VllmServer
    from harness.tiny import DEFAULT_MODEL_DIR

    commit = subprocess.run(["git", "-C", str(args.root), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [f"# {' '.join(sys.argv)}", f"# client from {args.root} (HEAD {commit})"]
    samples = load_samples(0, "test", 128)
    run = compose([])
    timed = compose(["sampling=greedy", "sampling.max_tokens=32", "sampling.ignore_eos=true",
                     "workload.mode=concurrent", "workload.concurrency=4", "workload.warmup_requests=0"])
    with tempfile.TemporaryDirectory() as tmp:
        with VllmServer(DEFAULT_MODEL_DIR, run.serve, Path(tmp), served_model_name="tiny",
                        dtype=run.model.dtype) as server:
            replay(server.target, samples, run.workload, run.sampling, show_progress=False)
            for _ in range(3):
                cpu0 = time.process_time()
                played = replay(server.target, samples, timed.workload, timed.sampling, show_progress=False)
                tokens = sum(r.output_tokens for r in played.records)
                lines.append(f"tok/s {tokens / played.duration_s:.1f}, client CPU s per 1k tokens "
                             f"{(time.process_time() - cpu0) / tokens * 1e3:.3f}, errors {played.errors}")
                print(lines[-1], flush=True)
            profiler = cProfile.Profile(time.process_time)
            profiler.enable()
            replay(server.target, samples, timed.workload, timed.sampling, show_progress=False)
            profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(15)
    lines += [line.rstrip() for line in out.getvalue().splitlines() if line.strip()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        args.record.parent.mkdir(parents=True, exist_ok=True)
        args.record.write_text(text)


if __name__ == "__main__":
    main()
