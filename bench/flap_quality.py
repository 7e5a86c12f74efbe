"""FLAP + bias vs FLAP without bias vs magnitude pruning on the tiny model, at equal widths.

    .venv/bin/python -m bench.flap_quality [--shares 0.25 0.5] [--limit 100] [--kl-limit 40]

(run as a module from the repository root, as every bench script is)

Each method prunes every decoder layer by the same share (schedule mode, no protected
layers, widths rounded to 32), so all three keep exactly the same widths and differ only in
which channels go and whether a bias compensates. Printed per variant:
  accuracy: harness.score.offline greedy exact-match score (macro over task families) on the
    first --limit items of the suite's test split;
  kl_nats: harness.score.offline.mean_token_kl against the dense model (text positions,
    nats per position) on the first --kl-limit test items;
  mlp_params / bytes: MLP parameters kept and the checkpoint's safetensors bytes.
Transformers offline (load_pruned), float32, greedy; the lead redoes them through vLLM
once the plugin serves pruned checkpoints.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from harness.build.calibration import suite_source

METHODS = {
    "flap+bias": {"method": "flap", "bias_compensation": True},
    "flap": {"method": "flap", "bias_compensation": False},
    "magnitude": {"method": "magnitude", "bias_compensation": False},
}


def _prune(src: Path, out: Path, share: float, fields: dict, num_samples: int, tokens: str) -> Path:
    from compress.configs import config_from_name
    from compress.prune import prune_checkpoint

    layers = json.loads((src / "config.json").read_text())["text_config"]["num_hidden_layers"]
    config = config_from_name("flap", mode="schedule", schedule={layers: [share] * layers}, multiple=32,
                              protect_roles=[], num_samples=num_samples, calibration_tokens=tokens, **fields)
    return prune_checkpoint(src, out, config, suite_source())


def _mlp_params(folder: Path) -> int:
    from compress.export import source_files
    from compress.st_header import read_header

    total = 0
    for path in source_files(folder):
        for key, info in read_header(path)[0].items():
            if ".mlp." in key and "language_model" in key:
                n = 1
                for d in info["shape"]:
                    n *= d
                total += n
    return total


def _row(name: str, folder: Path, dense: Path, samples, kl_samples) -> dict:
    from harness.score.offline import evaluate_offline, mean_token_kl

    report = evaluate_offline(folder, samples)
    kl = mean_token_kl(dense, folder, kl_samples) if folder != dense else 0.0
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    return {"variant": name, "accuracy": round(report.overall, 4), "per_task": report.per_task,
            "kl_nats": round(kl, 6), "mlp_params": _mlp_params(folder), "bytes": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.25, 0.5])
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--kl-limit", type=int, default=40)
    ap.add_argument("--num-samples", type=int, default=64, help="calibration samples (train split)")
    ap.add_argument("--calibration-tokens", choices=("all", "text"), default="all",
                    help="positions feeding FLAP's statistics (text: image soft tokens left out)")
    args = ap.parse_args()
    import torch

    from harness.replay.workloads.base import load_samples
    from harness.tiny import DEFAULT_MODEL_DIR

    torch.set_num_threads(1)
    samples = load_samples(0, "test", args.limit)
    kl_samples = samples[: args.kl_limit]
    rows = [_row("dense", DEFAULT_MODEL_DIR, DEFAULT_MODEL_DIR, samples, kl_samples)]
    print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for share in args.shares:
            for name, fields in METHODS.items():
                started = time.perf_counter()
                folder = _prune(DEFAULT_MODEL_DIR, Path(tmp) / f"{name}-{share}", share, fields, args.num_samples,
                                args.calibration_tokens)
                rows.append({**_row(f"{name} @{share:.0%}", folder, DEFAULT_MODEL_DIR, samples, kl_samples),
                             "prune_s": round(time.perf_counter() - started, 1)})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'variant':<18}{'accuracy':>9}{'KL nats':>10}{'MLP params':>12}{'MB':>7}")
    for r in rows:
        print(f"{r['variant']:<18}{r['accuracy']:>9.3f}{r['kl_nats']:>10.5f}{r['mlp_params']:>12,}"
              f"{r['bytes'] / 1e6:>7.2f}")


if __name__ == "__main__":
    main()
