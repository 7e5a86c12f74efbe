"""Compression time and peak RSS per scheme: tiny Gemma 4, then a full-size E4B-shaped checkpoint.

    .venv/bin/python -m bench.compress_speed                 # both models (E4B needs ~45 GB free disk)
    .venv/bin/python -m bench.compress_speed --skip-e4b      # tiny model only
    .venv/bin/python -m bench.compress_speed --vs-llmcompressor   # against llmcompressor (bench/compress_llmc.py)

Each compression runs in a fresh subprocess; duration_s is the wall-clock time of
compress_checkpoint alone (package imports done before the clock starts), cpu_s the process's user + system
CPU time (imports included; on a shared machine wall time can be mostly waiting for disk and
CPU), and peak RSS that process's ru_maxrss (resident set, file-backed pages included).
The E4B-shaped checkpoint has random N(0, 0.02) bf16 weights with the text-decoder shapes of
Gemma 4 E4B (42 layers, hidden 2560, FFN 10240, head dim 256/512, KV sharing, PLE); its vision
and audio towers are approximations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SCHEMES = ("fp8", "fp8_dynamic", "w4a16_rtn", "w8a8_int8", "w4a16_gptq")
DATA_FREE = SCHEMES[:4]
SHARD_LIMIT_BYTES = 2 * 2**30
_CHUNK_ELEMENTS = 32 * 2**20

CHILD = """
import json, resource, sys, time, torch
from pathlib import Path
from compress import compress_checkpoint, config_from_name
torch.set_num_threads(1)
params = json.loads(sys.argv[4])
from harness.build.calibration import suite_source
calibration = torch.load(sys.argv[5]) if len(sys.argv) > 5 else suite_source()
import compressed_tensors, transformers  # not timed
import compress.calibration, compress.ct_config, compress.export, compress.gptq_runner, compress.lineage  # not timed
start = time.perf_counter()
compress_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), config_from_name(sys.argv[3], **params), calibration)
took = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"duration_s": took, "cpu_s": usage.ru_utime + usage.ru_stime,
                  "peak_rss_gib": usage.ru_maxrss / 2**20}))
"""


def e4b_tensors() -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a Gemma 4 E4B-shaped checkpoint."""
    hidden, ffn, ple, vocab, layers, shared = 2560, 10240, 256, 262144, 42, 18
    text = "model.language_model."
    out = [(text + "embed_tokens.weight", (vocab, hidden)),
           (text + "embed_tokens_per_layer.weight", (vocab, layers * ple)),
           (text + "per_layer_model_projection.weight", (layers * ple, hidden)),
           (text + "per_layer_projection_norm.weight", (ple,)), (text + "norm.weight", (hidden,))]
    for i in range(layers):
        head_dim = 512 if i % 6 == 5 else 256
        p = f"{text}layers.{i}."
        out += [(p + "self_attn.q_proj.weight", (8 * head_dim, hidden)),
                (p + "self_attn.o_proj.weight", (hidden, 8 * head_dim))]
        if i < layers - shared:  # KV-shared layers reuse an earlier layer's keys and values
            out += [(p + "self_attn.k_proj.weight", (2 * head_dim, hidden)),
                    (p + "self_attn.v_proj.weight", (2 * head_dim, hidden))]
        out += [(p + f"mlp.{m}_proj.weight", (ffn, hidden)) for m in ("gate", "up")]
        out += [(p + "mlp.down_proj.weight", (hidden, ffn))]
        out += [(p + "per_layer_input_gate.weight", (ple, hidden)), (p + "per_layer_projection.weight", (hidden, ple))]
        out += [(p + f"{n}.weight", (hidden,)) for n in ("input_layernorm", "post_attention_layernorm",
                                                         "pre_feedforward_layernorm", "post_feedforward_layernorm")]
    out += _tower("model.vision_tower.encoder.layers", 16, 768, 3072)
    out += _tower("model.audio_tower.layers", 12, 1536, 6144)
    out += [("model.embed_vision.embedding_projection.weight", (hidden, 768)),
            ("model.embed_audio.embedding_projection.weight", (hidden, 1536)),
            ("model.vision_tower.patch_embedder.input_proj.weight", (768, 768))]
    return out


def _tower(prefix: str, layers: int, width: int, ffn: int) -> list[tuple[str, tuple[int, ...]]]:
    out = []
    for i in range(layers):
        p = f"{prefix}.{i}."
        out += [(p + f"self_attn.{m}_proj.linear.weight", (width, width)) for m in "qkvo"]
        out += [(p + "mlp.gate_proj.linear.weight", (ffn, width)), (p + "mlp.up_proj.linear.weight", (ffn, width)),
                (p + "mlp.down_proj.linear.weight", (width, ffn)), (p + "input_layernorm.weight", (width,))]
    return out


def _write_random_shard(path: Path, tensors: list[tuple[str, tuple[int, ...]]], seed: int) -> None:
    """A bf16 safetensors shard of N(0, 0.02) values, generated and written chunk by chunk."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors:
        nbytes = 2 * torch.Size(shape).numel()
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _, shape in tensors:
            left = torch.Size(shape).numel()
            while left:
                n = min(left, _CHUNK_ELEMENTS)
                chunk = torch.empty(n, dtype=torch.float32).normal_(0.0, 0.02, generator=gen).to(torch.bfloat16)
                f.write(memoryview(chunk.view(torch.uint8).numpy()))
                left -= n


def build_e4b_shaped(out_dir: Path) -> Path:
    """Writes config.json, sharded random weights and an index; returns out_dir."""
    out_dir.mkdir(parents=True)
    shards, current, size = [], [], 0
    for name, shape in e4b_tensors():
        nbytes = 2 * torch.Size(shape).numel()
        if current and size + nbytes > SHARD_LIMIT_BYTES:
            shards.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    shards.append(current)
    weight_map = {}
    for i, tensors in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_random_shard(out_dir / file, tensors, seed=i)
        weight_map.update({name: file for name, _ in tensors})
    (out_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4", "vision_config": {},
              "note": "random-weight E4B-shaped benchmark checkpoint; not loadable as a model"}
    (out_dir / "config.json").write_text(json.dumps(config))
    return out_dir


def run_scheme(src: Path, out: Path, scheme: str, params: dict, calibration: Path | None = None,
               keep: bool = False) -> dict:
    """Compresses in a fresh process; returns its duration_s and peak_rss_gib.

    `calibration` is a torch.save'd list of model-input dicts (GPTQ); `keep` keeps `out`.
    """
    extra = [str(calibration)] if calibration else []
    done = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), scheme, json.dumps(params), *extra],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{scheme} on {src} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["out_gib"] = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**30
    if not keep:
        shutil.rmtree(out)
    return result


def _print(model: str, scheme: str, r: dict) -> None:
    print(f"{model:<12} {scheme:<12} {r['duration_s']:>10.1f} {r['cpu_s']:>7.1f} {r['peak_rss_gib']:>13.2f} "
          f"{r['out_gib']:>9.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-e4b", action="store_true", help="benchmark the tiny model only")
    parser.add_argument("--work-dir", type=Path, default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--e4b-dir", type=Path, default=None, help="reuse an E4B-shaped checkpoint built before")
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES, help="schemes to run")
    parser.add_argument("--vs-llmcompressor", action="store_true",
                        help="compare time and weights with llmcompressor in its own venv (see bench/compress_llmc.py)")
    args = parser.parse_args()
    if args.vs_llmcompressor:
        from bench.compress_llmc import compare_all

        compare_all(run_scheme, args.work_dir, schemes=args.schemes)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-compress-", dir=args.work_dir))
    try:
        from harness.tiny.build import build_random_tiny

        tiny = build_random_tiny(work / "tiny", seed=0)
        print(f"{'model':<12} {'scheme':<12} {'duration_s':>10} {'cpu_s':>7} {'peak_rss_gib':>13} {'out_gib':>9}")
        for scheme in args.schemes:
            params = {"num_samples": 16} if scheme == "w4a16_gptq" else {}
            _print("tiny", scheme, run_scheme(tiny, work / scheme, scheme, params))
        if args.skip_e4b:
            return
        start = time.perf_counter()
        e4b = args.e4b_dir or build_e4b_shaped(work / "e4b")
        size_gib = sum(p.stat().st_size for p in e4b.glob("*.safetensors")) / 2**30
        print(f"# E4B-shaped checkpoint: {size_gib:.1f} GiB bf16, ready in {time.perf_counter() - start:.0f} s",
              flush=True)
        for scheme in [s for s in args.schemes if s in DATA_FREE]:
            _print("e4b-shaped", scheme, run_scheme(e4b, work / scheme, scheme, {}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
