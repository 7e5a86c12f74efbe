"""Trains the tiny Gemma 4 on the synthetic suite's train split (deterministic from a seed).

    python -m harness.tiny.train --steps 1500 --out harness/assets/tiny-gemma4

The first `--mixed-from` steps render every image at the smallest budget (70, the cheapest:
the task is learned there); after them each step's batch takes the budgets of TRAINED_BUDGETS
in turn, so the model reads an image at every budget a run may serve it with. Only the answer tokens and
the closing turn token are supervised. Progress is judged by
teacher-forced answer accuracy per family on held-out items; the real check is greedy
decoding through vLLM (tests/ and bench/tiny_accuracy.py).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

from harness.replay.workloads.base import load_samples
from harness.tiny import DEFAULT_MODEL_DIR
from harness.tiny.build import TRAINED_BUDGETS, TinySpec, build_processor, corpus, init_model, save_model
from harness.tiny.tokenizer import SPECIAL, build_tokenizer

EOT = SPECIAL["eot_token"]


def encode(processor, samples, budget: int | None = None, with_answers: bool = True):
    """Processor batch for `samples`; labels mark the answer and closing token only.

    ``budget``: the image budget (max_soft_tokens) to render images at; None is the processor's own.
    """
    import torch

    prompts = [
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.prompt}]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        for s in samples
    ]
    texts = [p + s.reference + EOT if with_answers else p for p, s in zip(prompts, samples)]
    sized = {} if budget is None else {"max_soft_tokens": budget}
    batch = processor(text=texts, images=[[s.image] for s in samples], return_tensors="pt", padding=True, **sized)
    labels = torch.full_like(batch["input_ids"], -100)
    for row, prompt in enumerate(prompts):
        start = len(processor(text=[prompt], images=[[samples[row].image]], **sized)["input_ids"][0])
        end = int(batch["attention_mask"][row].sum())
        labels[row, start:end] = batch["input_ids"][row, start:end]
    batch["labels"] = labels
    return batch


def answer_accuracy(model, processor, samples, budget: int, batch_size: int = 50) -> dict[str, float]:
    """Per-family share of samples whose every answer token is the argmax (teacher forced) at one budget."""
    import torch

    hits: dict[str, list[int]] = defaultdict(list)
    model.eval()
    with torch.no_grad():
        for i in range(0, len(samples), batch_size):
            chunk = samples[i : i + batch_size]
            batch = encode(processor, chunk, budget)
            labels = batch.pop("labels")
            logits = model(**batch).logits[:, :-1]
            target = labels[:, 1:]
            ok = (logits.argmax(-1) == target) | (target == -100)
            for s, row in zip(chunk, ok.all(-1).tolist()):
                hits[s.task].append(int(row))
    model.train()
    return {task: sum(v) / len(v) for task, v in sorted(hits.items())}


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def budget_at(step: int, mixed_from: int) -> int:
    """The image budget of a training step: the smallest before `mixed_from`, then each in turn."""
    if step < mixed_from:
        return TRAINED_BUDGETS[0]
    return TRAINED_BUDGETS[(step - mixed_from) % len(TRAINED_BUDGETS)]


def train(out_dir: Path, steps: int, batch: int, lr: float, seed: int, eval_every: int, threads: int,
          target: float, mixed_from: int = 0) -> dict:
    """Trains from scratch and saves the model folder at every evaluation; returns the log.

    Stops early once every family's held-out answer accuracy reaches `target` at every
    trained budget, in the mixed phase (the stop is a function of the seed alone, so a rerun
    stops at the same step).
    """
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    torch.set_num_threads(threads)
    spec = TinySpec()
    tokenizer = build_tokenizer(corpus(), spec.vocab)
    processor = build_processor(tokenizer, spec)
    model = init_model(spec, tokenizer, seed)
    with torch.no_grad():  # transformers initialises this table to ones: no position signal
        model.model.vision_tower.patch_embedder.position_embedding_table.normal_(0.0, 0.02)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    held_out = load_samples(seed, "train", 120, offset=10_000_000)  # never reached by training
    log = {"seed": seed, "steps": steps, "batch": batch, "lr": lr, "target": target, "spec": spec.__dict__,
           "budgets": list(TRAINED_BUDGETS), "mixed_from": mixed_from, "evals": []}
    start = time.time()
    for step in range(steps):
        samples = load_samples(seed, "train", batch, offset=step * batch)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup=min(200, steps // 10))
        out = model(**encode(processor, samples, budget_at(step, mixed_from)))
        out.loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % 20 == 0:
            print(f"step {step} loss {out.loss.item():.4f} gnorm {norm:.2f} {time.time() - start:.0f}s", flush=True)
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            mixed = step + 1 > mixed_from
            acc = {b: answer_accuracy(model, processor, held_out, b) for b in TRAINED_BUDGETS[:None if mixed else 1]}
            log["evals"].append({"step": step + 1, "elapsed_s": round(time.time() - start, 1),
                                 "accuracy": {str(b): a for b, a in acc.items()}})
            print(f"eval step {step + 1}: {acc}", flush=True)
            log["train_s"] = round(time.time() - start, 1)
            log["parameters"] = sum(p.numel() for p in model.parameters())
            save_model(model, processor, out_dir)
            (out_dir / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")
            if mixed and min(v for a in acc.values() for v in a.values()) >= target:
                break
    return log


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=float, default=0.95, help="stop once every family reaches it at every budget")
    ap.add_argument("--mixed-from", type=int, default=1200, help="steps at the smallest budget before mixing")
    args = ap.parse_args(argv)
    log = train(args.out, args.steps, args.batch, args.lr, args.seed, args.eval_every, args.threads, args.target,
                args.mixed_from)
    log["command"] = "python -m harness.tiny.train " + " ".join(argv if argv is not None else sys.argv[1:])
    (args.out / "training_log.json").write_text(json.dumps(log, indent=2) + "\n")


if __name__ == "__main__":
    main()
