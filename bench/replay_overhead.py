"""Is the harness's replay ever the bottleneck? Its throughput and CPU cost beside vLLM's own benchmark client.

    .venv/bin/python -m bench.replay_overhead [--concurrency 1 4 16 64] [--rounds 5] [--output-len 32]

One server (the tiny model, as the harness serves it), the same suite samples, every answer
forced to `--output-len` tokens (ignore_eos, greedy) so every client asks the server for
identical work. For each concurrency, three clients take turns for `--rounds` rounds (the
order rotating, so drift of the shared machine hits all alike):

- `vllm bench serve`, the CLI, on a `custom_image` JSONL holding the harness's own chat
  content (image then text): output tokens per second from its saved result;
- the harness's replay (harness.replay.client.replay): output tokens per second over its
  measured window, and the process CPU seconds it spent inside that window;
- vLLM's benchmark request function (the one `vllm bench serve` streams every request with,
  aiohttp and a hand-written SSE parser) driven in this process the way the CLI drives it
  (a semaphore over one task per request), asking for the harness's stream options so both
  parse the same chunks: the same two figures, so client CPU per 1,000 streamed tokens is
  compared on one footing. The CLI itself cannot be timed like that: its
  process also loads a tokenizer and re-tokenizes outputs around the streaming.

Prints per round and the medians, with min-max spread; the ratio harness / vllm bench
(target >= 0.98) both as the ratio of the medians and as the median of each round's ratio
(the two runs of a round are close in time, so the machine's drift cancels), and harness CPU
per 1,000 tokens over vLLM's (target <= 1.1). Writes the
whole printout to --record (default bench/records/replay_overhead.txt).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.config.schema import compose
from harness.replay.client import chat_messages, replay
from harness.replay.tokens import STREAM_OPTIONS
from harness.replay.workloads.base import load_samples
from harness.serve.capabilities import detect_platform
from harness.serve.vllm import VllmServer
from harness.tiny import DEFAULT_MODEL_DIR

RECORD = Path(__file__).parent / "records" / "replay_overhead.txt"


def write_dataset(samples, folder: Path) -> Path:
    """The harness's own chat content per sample (a PNG data URL, then the text)."""
    rows = [{"content": chat_messages(s)[0]["content"]} for s in samples]
    path = folder / "suite.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def vllm_bench_cli(server, dataset: Path, requests: int, concurrency: int, output_len: int,
                   result_dir: Path) -> dict:
    """Output tokens per second from `vllm bench serve` against the running server."""
    vllm = Path(sys.executable).with_name("vllm")
    cmd = [str(vllm), "bench", "serve", "--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
           "--base-url", server.target.base_url.removesuffix("/v1"), "--model", server.target.model_name,
           "--tokenizer", str(DEFAULT_MODEL_DIR), "--dataset-name", "custom_image", "--dataset-path", str(dataset),
           "--disable-shuffle", "--num-prompts", str(requests), "--custom-output-len", str(output_len),
           "--ignore-eos", "--temperature", "0", "--max-concurrency", str(concurrency), "--disable-tqdm",
           "--save-result", "--result-dir", str(result_dir), "--result-filename", "bench.json"]
    env = {"OPENAI_API_KEY": server.target.api_key, "PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"vllm bench serve failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    result = json.loads((result_dir / "bench.json").read_text())
    if result.get("completed") != requests:
        errors = [e for e in result.get("errors", []) if e][:3]
        raise RuntimeError(f"vllm bench completed {result.get('completed')} of {requests} requests: {errors}")
    return {"tok_s": float(result["output_throughput"]), "cpu_per_1k": None}


def harness_client(server, samples, concurrency: int, output_len: int) -> dict:
    run = compose(["sampling=greedy", f"sampling.max_tokens={output_len}", "sampling.ignore_eos=true",
                   "workload.mode=concurrent", f"workload.concurrency={concurrency}", "workload.warmup_requests=0"])
    inside: list[float] = []

    def mark(_record) -> None:  # CPU clock read at each completion; the first send opens the window
        inside.append(time.process_time())

    cpu0 = time.process_time()
    played = replay(server.target, samples, run.workload, run.sampling, show_progress=False, on_record=mark)
    if played.errors:
        raise RuntimeError(f"{played.errors} harness requests failed: {played.records[0].error}")
    tokens = sum(r.output_tokens for r in played.records)
    # Bodies are built before the window opens: CPU from the replay's start would count them, so
    # the CPU of the window is taken as that of the whole call minus the pre-window work, measured
    # by building the same bodies again alone.
    cpu = inside[-1] - cpu0 - _body_build_cpu(server, samples, run)
    return {"tok_s": tokens / played.duration_s, "cpu_per_1k": cpu / tokens * 1e3}


def _body_build_cpu(server, samples, run) -> float:
    from harness.replay.client import request_body

    cpu0 = time.process_time()
    for s in samples:
        request_body(server.target.model_name, s, run.sampling, {"ignore_eos": True}, server.target.defaults)
    return time.process_time() - cpu0


def vllm_client(server, samples, concurrency: int, output_len: int) -> dict:
    """vLLM's own request function, driven as `vllm bench serve` drives it, timed in this process."""
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import ASYNC_REQUEST_FUNCS, RequestFuncInput

    os.environ["OPENAI_API_KEY"] = server.target.api_key
    request = ASYNC_REQUEST_FUNCS["openai-chat"]
    url = server.target.base_url + "/chat/completions"
    # The harness's stream options (running usage in every chunk), so both clients parse the same stream.
    body = {"temperature": 0.0, "stream_options": STREAM_OPTIONS}
    inputs = [RequestFuncInput(prompt="", api_url=url, prompt_len=0, output_len=output_len,
                               model=server.target.model_name, ignore_eos=True, extra_body=body,
                               chat_messages=chat_messages(s)) for s in samples]

    async def drive() -> tuple[list, float, float, float]:
        connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=300,
                                         use_dns_cache=True, keepalive_timeout=60, enable_cleanup_closed=True,
                                         force_close=False, ssl=False)
        async with aiohttp.ClientSession(connector=connector, trust_env=True,
                                         timeout=aiohttp.ClientTimeout(total=6 * 3600)) as session:
            gate = asyncio.Semaphore(concurrency)

            async def one(item):
                async with gate:
                    return await request(request_func_input=item, session=session)

            gc.freeze()  # as the harness does: this process's heap is the bench's, not the client's
            try:
                cpu0, t0 = time.process_time(), time.perf_counter()
                outputs = await asyncio.gather(*(asyncio.create_task(one(i)) for i in inputs))
                return outputs, time.perf_counter() - t0, cpu0, time.process_time()
            finally:
                gc.unfreeze()

    outputs, duration, cpu0, cpu1 = asyncio.run(drive())
    failed = [o.error for o in outputs if not o.success]
    if failed:
        raise RuntimeError(f"{len(failed)} vLLM-client requests failed: {failed[0][-500:]}")
    tokens = sum(o.output_tokens for o in outputs)
    return {"tok_s": tokens / duration, "cpu_per_1k": (cpu1 - cpu0) / tokens * 1e3}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):7.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per client run (default: max(128, 4 x concurrency))")
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--record", type=Path, default=RECORD)
    args = ap.parse_args()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    say(f"# {' '.join(sys.argv)}")
    say(f"# {datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{detect_platform().describe()}; tiny model on CPU vLLM; {args.output_len} forced tokens")
    run = compose([])
    most = max(args.requests or max(128, 4 * c) for c in args.concurrency)
    samples_all = load_samples(0, "test", most)
    clients = {"vllm bench": None, "harness": harness_client, "vllm client": vllm_client}
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with VllmServer(DEFAULT_MODEL_DIR, run.serve, tmp, served_model_name="tiny", dtype=run.model.dtype) as server:
            # Every sample once before any timed run: vLLM's prefix and image caches then hold the
            # whole suite for every client alike (otherwise the first client of round 1 pays the misses).
            replay(server.target, samples_all, run.workload, run.sampling, show_progress=False)
            for conc in args.concurrency:
                n = args.requests or max(128, 4 * conc)
                samples = samples_all[:n]
                dataset = write_dataset(samples, tmp)
                seen: dict[str, list[dict]] = {name: [] for name in clients}
                for k in range(args.rounds):
                    order = list(clients)[k % 3:] + list(clients)[:k % 3]
                    for name in order:
                        if name == "vllm bench":
                            seen[name].append(vllm_bench_cli(server, dataset, n, conc, args.output_len, tmp))
                        else:
                            seen[name].append(clients[name](server, samples, conc, args.output_len))
                    say(f"c={conc:<3} round {k + 1}: " + ", ".join(
                        f"{name} {seen[name][-1]['tok_s']:.1f} tok/s" for name in clients))
                ours = [r["tok_s"] for r in seen["harness"]]
                cli = [r["tok_s"] for r in seen["vllm bench"]]
                ratio = statistics.median(ours) / statistics.median(cli)
                # Each round's two runs are minutes apart at most: their ratio cancels the machine's drift.
                paired = [a / b for a, b in zip(ours, cli)]
                ours_cpu = [r["cpu_per_1k"] for r in seen["harness"]]
                their_cpu = [r["cpu_per_1k"] for r in seen["vllm client"]]
                cpu_ratio = statistics.median(ours_cpu) / statistics.median(their_cpu)
                summary.append(
                    f"c={conc:<3} n={n:<4} tok/s harness {spread(ours)}, vllm bench {spread(cli)}, "
                    f"vllm client {spread([r['tok_s'] for r in seen['vllm client']])}; ratio harness/vllm bench "
                    f"{ratio:.3f} (of medians), {statistics.median(paired):.3f} ({min(paired):.3f}-"
                    f"{max(paired):.3f}) (median of per-round ratios); client CPU s per 1k tokens harness "
                    f"{statistics.median(ours_cpu):.3f}, "
                    f"vllm client {statistics.median(their_cpu):.3f} (ratio {cpu_ratio:.2f})")
                say(summary[-1])
    say("# medians of the rounds (min-max in brackets)")
    for line in summary:
        say(line)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    args.record.write_text("\n".join(lines) + "\n")
    print(f"record written: {args.record}")


if __name__ == "__main__":
    main()
