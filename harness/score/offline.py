"""Offline check of a checkpoint with transformers, for variants no serving kernel here can run.

    python -m harness.offline_eval MODEL_DIR [--limit N] [--reference DENSE_DIR]

A compressed-tensors checkpoint is loaded decompressed: transformers' compressed-tensors
integration turns each stored weight back into its dequantized dense value, and layers
with dynamic activation quantization keep quantizing their inputs per token in forward,
as vLLM's kernels do. Greedy answers are scored with harness.score.quality.score, so the
figures compare with a served run's (same prompts, same chat template, same metric).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.score.quality import QualityReport

DTYPES = ("float32", "bfloat16")


class OfflineEvalError(HarnessError, RuntimeError):
    """The checkpoint cannot be evaluated offline; the message says how to fix it."""


@dataclass(frozen=True)
class OfflineRecord:
    """One greedy generation, shaped like a replay record for harness.score.quality.score.

    Attributes:
        id, task: the sample's.
        output_text: the generated text, special tokens (the closing turn token) removed.
        output_tokens: generated token count, the stop token included.
        finish_reason: "stop" when a stop token ended the answer, "length" when
            max_new_tokens did (scored as truncated, as for a served run).
        error: always None; kept for the record protocol.
    """

    id: str
    task: str
    output_text: str
    output_tokens: int
    finish_reason: str
    error: str | None = None


def _check_dir(model_dir: Path) -> dict[str, Any]:
    """The checkpoint's config.json, after checking what can be loaded from it."""
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise OfflineEvalError(f"{model_dir} has no config.json: pass a saved checkpoint folder")
    config = json.loads(config_path.read_text())
    method = config.get("quantization_config", {}).get("quant_method")
    if method not in (None, "compressed-tensors"):
        raise OfflineEvalError(f"{model_dir} is quantized with {method!r}; only compressed-tensors "
                               "checkpoints (compress_checkpoint's output) are decompressed here")
    return config


def load_model(model_dir: str | Path, dtype: str = "float32"):
    """The model (eval mode, decompressed when compressed) and its processor.

    Args:
        model_dir: a dense checkpoint or a compressed-tensors one.
        dtype: "float32" (the tiny model's stored precision) or "bfloat16" (as served).
    """
    if dtype not in DTYPES:
        raise OfflineEvalError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    model_dir = Path(model_dir)
    config = _check_dir(model_dir)
    import torch
    import transformers

    if config.get("flap_pruned"):  # per-layer MLP widths + down_proj bias: stock from_pretrained cannot build it
        from compress.pruned_hf import load_pruned

        return load_pruned(model_dir, dtype), transformers.AutoProcessor.from_pretrained(model_dir)
    kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)}
    if "quantization_config" in config:
        kwargs["quantization_config"] = transformers.CompressedTensorsConfig(dequantize=True)
    auto = (transformers.AutoModelForImageTextToText if "vision_config" in config
            else transformers.AutoModelForCausalLM)
    model = auto.from_pretrained(model_dir, **kwargs).eval()
    return model, transformers.AutoProcessor.from_pretrained(model_dir)


def _stop_ids(model) -> set[int]:
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [] if eos is None else [eos])


def generate_records(model, processor, samples: Sequence[Any], max_new_tokens: int = 8) -> list[OfflineRecord]:
    """Greedy answers, one sample at a time (no padding, so each matches an unbatched run)."""
    import torch

    from harness.tiny.train import encode

    stops = _stop_ids(model)
    records = []
    with torch.no_grad():
        for sample in samples:
            batch = encode(processor, [sample], with_answers=False)
            batch.pop("labels")
            prompt_len = batch["input_ids"].shape[1]
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            new = out[0, prompt_len:].tolist()
            stopped = bool(new) and new[-1] in stops
            text = processor.decode(new, skip_special_tokens=True)
            records.append(OfflineRecord(sample.id, sample.task, text, len(new), "stop" if stopped else "length"))
    return records


def evaluate_offline(model_dir: str | Path, samples: Sequence[Any], max_new_tokens: int = 8, *,
                     dtype: str = "float32", metric: str = "exact") -> "QualityReport":
    """Scores greedy transformers answers of a (possibly compressed) checkpoint on `samples`.

    Args:
        model_dir: dense or compressed-tensors checkpoint folder.
        samples: suite samples (harness.replay.workloads.base.load_samples).
        max_new_tokens: generation cap; an answer cut off by it scores 0.
        dtype: compute precision, "float32" or "bfloat16".
        metric: harness.score.quality metric name.
    """
    from harness.score.quality import score

    model, processor = load_model(model_dir, dtype)
    return score(samples, generate_records(model, processor, samples, max_new_tokens), metric)


POSITIONS = ("text", "answer")


def next_token_log_probs(model, processor, samples: Sequence[Any], positions: str = "text") -> list:
    """Per sample: log-softmax over the vocabulary at the chosen teacher-forced positions.

    Each sample is fed as prompt + reference answer + closing token. Row t of a sample's
    [positions, vocab] tensor is the model's distribution for the token that follows
    position t. `positions` "text" keeps every position whose next token is not an image
    soft token (chat scaffolding, question, answer); "answer" keeps the answer and closing
    token only (nearly one-hot for a well-trained model, so a weak signal).
    """
    import torch

    from harness.tiny.train import encode

    if positions not in POSITIONS:
        raise OfflineEvalError(f"positions {positions!r} is not one of {', '.join(POSITIONS)}")
    image_token = getattr(model.config, "image_token_id", None)
    rows = []
    with torch.no_grad():
        for sample in samples:
            batch = encode(processor, [sample])
            labels = batch.pop("labels")[0, 1:]
            following = batch["input_ids"][0, 1:]
            keep = labels != -100 if positions == "answer" else following != image_token
            logits = model(**batch).logits[0, :-1].float()
            rows.append(torch.log_softmax(logits[keep], dim=-1))
    return rows


def mean_token_kl(reference_dir: str | Path, model_dir: str | Path, samples: Sequence[Any], *,
                  positions: str = "text", dtype: str = "float32") -> float:
    """KL(reference || model) in nats per position, averaged over all kept positions of all samples.

    At each position (see next_token_log_probs) the divergence between the two models'
    next-token distributions is sum_v p_ref(v) * (log p_ref(v) - log p_model(v)).
    """
    import torch

    ref = next_token_log_probs(*load_model(reference_dir, dtype), samples, positions)
    var = next_token_log_probs(*load_model(model_dir, dtype), samples, positions)
    return torch.cat([kl_per_position(p, q) for p, q in zip(ref, var)]).mean().item()


def kl_per_position(ref_log_probs, log_probs):
    """sum_v p_ref(v) * (log p_ref(v) - log p(v)) for each row of two [positions, vocab] tensors."""
    return (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum(dim=-1)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--limit", type=int, default=40, help="suite samples (families interleaved)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--dtype", choices=DTYPES, default="float32")
    ap.add_argument("--reference", type=Path, default=None,
                    help="dense checkpoint to also report the mean next-token KL (text positions) against")
    args = ap.parse_args(argv)
    from harness.replay.workloads.base import load_samples

    samples = load_samples(args.seed, args.split, args.limit)
    report = evaluate_offline(args.model_dir, samples, args.max_new_tokens, dtype=args.dtype)
    summary: dict[str, Any] = {"model_dir": str(args.model_dir), "samples": len(samples), "dtype": args.dtype,
                               "overall": report.overall, "per_task": report.per_task, "counts": report.counts}
    if args.reference is not None:
        summary["mean_token_kl_nats"] = mean_token_kl(args.reference, args.model_dir, samples, dtype=args.dtype)
    print(json.dumps(summary, indent=2))

