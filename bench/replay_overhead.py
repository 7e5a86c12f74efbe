"""Is the harness's replay the bottleneck? Its throughput over `vllm bench serve`'s, same requests.

    .venv/bin/python -m bench.replay_overhead [--requests 64] [--concurrency 4] [--output-len 32]

One server (the tiny model), the same suite samples written as a `custom_image` JSONL (image
then text, as the harness sends them), every answer forced to `--output-len` tokens
(ignore_eos) so both clients ask the server for identical work, greedy decoding. The two
clients take turns for `--rounds` rounds, so drift of the shared machine hits both. Prints
output tokens per second for each and the ratio harness / vLLM (target >= 0.98).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness.config.schema import compose
from harness.replay.client import chat_messages, replay
from harness.replay.workloads.base import load_samples
from harness.serve.vllm import VllmServer
from harness.tiny import DEFAULT_MODEL_DIR


def write_dataset(samples, folder: Path) -> Path:
    """The harness's own chat content per sample (a PNG data URL, then the text)."""
    rows = [{"content": chat_messages(s)[0]["content"]} for s in samples]
    path = folder / "suite.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def vllm_bench(server, dataset: Path, args, result_dir: Path) -> float:
    """Output tokens per second from `vllm bench serve` against the running server."""
    vllm = Path(sys.executable).with_name("vllm")
    cmd = [str(vllm), "bench", "serve", "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
           "--base-url", server.target.base_url.removesuffix("/v1"), "--model", server.target.model_name,
           "--tokenizer", str(DEFAULT_MODEL_DIR), "--dataset-name", "custom_image", "--dataset-path", str(dataset),
           "--disable-shuffle", "--num-prompts", str(args.requests), "--custom-output-len", str(args.output_len),
           "--ignore-eos", "--temperature", "0", "--max-concurrency", str(args.concurrency),
           "--save-result", "--result-dir", str(result_dir), "--result-filename", "bench.json"]
    env = {"OPENAI_API_KEY": server.target.api_key, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads((result_dir / "bench.json").read_text())
    if result.get("completed") != args.requests:
        errors = [e for e in result.get("errors", []) if e][:3]
        raise RuntimeError(f"vllm bench completed {result.get('completed')} of {args.requests} requests: {errors}\n"
                           f"{proc.stdout[-1500:]}")
    return float(result["output_throughput"])


def harness_replay(server, samples, args) -> float:
    run = compose(["sampling=greedy", f"sampling.max_tokens={args.output_len}", "sampling.ignore_eos=true",
                   "workload.mode=concurrent", f"workload.concurrency={args.concurrency}",
                   "workload.warmup_requests=0"])
    played = replay(server.target, samples, run.workload, run.sampling, show_progress=False)
    if played.errors:
        raise RuntimeError(f"{played.errors} harness requests failed")
    return sum(r.output_tokens for r in played.records) / played.duration_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    samples = load_samples(0, "test", args.requests)
    run = compose([])
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = write_dataset(samples, tmp)
        with VllmServer(DEFAULT_MODEL_DIR, run.serve, tmp, served_model_name="tiny", dtype=run.model.dtype) as server:
            replay(server.target, samples[:4], run.workload, run.sampling, show_progress=False)  # warm-up
            ours, theirs = [], []
            for _ in range(args.rounds):
                theirs.append(vllm_bench(server, dataset, args, tmp))
                ours.append(harness_replay(server, samples, args))
                print(f"round: vllm bench {theirs[-1]:.1f} tok/s, harness {ours[-1]:.1f} tok/s", flush=True)
    o, t = statistics.median(ours), statistics.median(theirs)
    print(f"median output tok/s: harness {o:.1f}, vllm bench serve {t:.1f}; ratio harness/vllm = {o / t:.3f}")


if __name__ == "__main__":
    main()
