"""Greedy suite quality of every GGUF scheme through llama-server, against transformers on the same checkpoint.

    .venv/bin/python -m bench.gguf_quality [--model DIR] [--limit 200] [--record PATH]

Exports the model (default: the embedded tiny Gemma 4) as gguf_bf16, gguf_q8_0, gguf_q4_k_m and
gguf_q4_0 with compress_checkpoint, serves each with harness.serve.llama_cpp.LlamaServer and
replays the synthetic suite greedily (temperature 0, top_k 1, the suite's max_tokens), scored
with harness.score.quality.score as a run is. Each GGUF is served twice: the judges' launch (no
option: llama.cpp's own image budget) and with --image-min-tokens/--image-max-tokens set to the
HF processor's soft-token count and budget. The reference is transformers in bf16 on the source
checkpoint, greedy, as it configures itself (what vLLM serves), and again attending over the image
as llama.cpp does (harness.serve.llama_cpp_conformance). Prints quality per family and overall
(macro over families), the image's soft-token count, and how many answers differ from each
transformers reference; writes the printout to --record (default bench/records/gguf_quality.txt;
--append adds a run to it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

from compress import compress_checkpoint, config_from_name
from compress.llama_cpp_home import build_info
from harness.build.calibration import suite_source
from harness.config.schema import compose
from harness.errors import HarnessError
from harness.replay.workloads import load_workload
from harness.score.quality import score
from harness.serve.llama_cpp import LlamaServer
from harness.serve.llama_cpp_conformance import (
    budget_options,
    hf_image_attention,
    hf_image_tokens,
    llama_cpp_image_attention,
    llama_image_tokens,
    replay_greedy,
    transformers_greedy,
)
from harness.tiny import DEFAULT_MODEL_DIR

RECORD = Path(__file__).parent / "records" / "gguf_quality.txt"
SCHEMES = ("gguf_bf16", "gguf_q8_0", "gguf_q4_k_m", "gguf_q4_0")


def _line(name: str, report, tokens: str, differ: list[int]) -> str:
    families = " ".join(f"{report.per_task[t]:.3f}" for t in sorted(report.per_task))
    return f"{name:<40} {families}   {report.overall:.3f}   {tokens:>6}   " + "  ".join(f"{d:>4}" for d in differ)


def _served(folder: Path, run, run_dir: Path, options: dict[str, int], sample) -> tuple[list, str]:
    """Greedy records of one launch, and the soft tokens it gives the first image."""
    overrides = [f"+engine.llama_config.{k}={v}" for k, v in options.items()]
    launch = compose(["+variant=gguf_bf16", *overrides])
    with LlamaServer(folder, launch.serve, launch.engine, run_dir, served_model_name="bench", probe=False) as server:
        records = replay_greedy(server.target, load_workload(run.workload), run)
        tokens = llama_image_tokens(server.target, sample)
    errors = [r.error for r in records if r.error]
    if errors:
        raise HarnessError(f"{len(errors)} requests failed on {folder.name}: {errors[0]}")
    return records, str(tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--limit", type=int, default=200, help="suite items (families interleaved)")
    ap.add_argument("--record", type=Path, default=RECORD)
    ap.add_argument("--append", action="store_true", help="add to the record instead of replacing it")
    args = ap.parse_args()
    if not (args.model / "config.json").is_file():
        ap.exit(2, f"error: {args.model} has no config.json: pass a saved checkpoint folder with --model\n")
    if args.limit <= 0:
        ap.exit(2, f"error: --limit must be a positive number of items, got {args.limit}\n")
    from transformers import AutoConfig, AutoProcessor

    build = build_info()
    run = compose(["+variant=gguf_bf16", "sampling=greedy", "sampling.top_k=1", f"workload.limit={args.limit}"])
    samples = load_workload(run.workload)
    config, processor = AutoConfig.from_pretrained(args.model), AutoProcessor.from_pretrained(args.model)
    text = config.get_text_config()
    budget = processor.image_processor.max_soft_tokens
    hf_tokens = hf_image_tokens(processor, samples[0].image, config.image_token_id)
    options = budget_options(hf_tokens, budget)
    checkpoint, llama_like = hf_image_attention(text), llama_cpp_image_attention(text.hidden_size)

    rows: list[tuple[str, list, str]] = []
    attentions = list(dict.fromkeys((checkpoint, llama_like)))
    for attention in attentions:
        records = transformers_greedy(args.model, samples, run.sampling.max_tokens, image_attention=attention,
                                      dtype="bfloat16")
        rows.append((f"transformers bf16, image {attention}", records, str(hf_tokens)))
    with tempfile.TemporaryDirectory(prefix="gguf-quality-") as tmp:
        for scheme in SCHEMES:
            started = time.perf_counter()
            folder = compress_checkpoint(args.model, Path(tmp) / scheme, config_from_name(scheme), suite_source())
            print(f"built {scheme} in {time.perf_counter() - started:.1f} s", flush=True)
            for label, launch in (("judges' launch", {}), ("HF budget", options)):
                records, tokens = _served(folder, run, Path(tmp) / f"{scheme}-{len(launch)}", launch, samples[0])
                rows.append((f"{scheme}, {label}", records, tokens))

    references = [[r.output_text.strip() for r in records] for _, records, _ in rows[:len(attentions)]]
    families = sorted({s.task for s in samples})
    lines = [
        f"# python -m bench.gguf_quality --model {args.model} --limit {args.limit}{' --append' * args.append}",
        f"# {datetime.date.today()}, {os.cpu_count()} cores; llama.cpp {build.get('version')} "
        f"({build.get('commit')}, {build.get('flavour')}); greedy, max_tokens {run.sampling.max_tokens}",
        f"# image: {samples[0].image.size[0]} px; HF processor budget {budget} -> {hf_tokens} soft tokens; "
        f"HF-budget launch: {' '.join(f'--{k} {v}' for k, v in options.items())}",
        f"# checkpoint image attention: {checkpoint} (use_bidirectional_attention="
        f"{text.use_bidirectional_attention!r}); llama.cpp's for width {text.hidden_size}: {llama_like}",
        "# quality: exact match per family, overall = macro mean; differ: answers unlike each transformers row",
        f"{'':<40} {' '.join(f'{f[:5]:>5}' for f in families)}   overall  img_tok   differ",
    ]
    for name, records, tokens in rows:
        answers = [r.output_text.strip() for r in records]
        differ = [sum(a != b for a, b in zip(answers, ref)) for ref in references]
        lines.append(_line(name, score(samples, records, metric=run.workload.metric), tokens, differ))
    text_out = "\n".join(lines) + "\n"
    print(text_out)
    args.record.parent.mkdir(parents=True, exist_ok=True)
    with args.record.open("a" if args.append else "w") as record:
        record.write(("\n" if args.append and args.record.stat().st_size else "") + text_out)


if __name__ == "__main__":
    main()
