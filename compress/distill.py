"""Knowledge distillation of a pruned checkpoint toward its unpruned teacher.

The student (a FLAP-pruned folder, loaded with compress.pruned_hf.load_pruned) learns from the
dense teacher on examples from a CalibrationSource (the harness passes its suite's train
split): chat-formatted image + prompt + reference answer, one sequence each. The loss per sequence is

    kl_weight * KL(teacher || student) over the next-token distributions at every text
    position (temperature-scaled, times T^2 as usual), plus
    hidden_weight * sum over decoder layers of MSE(student hidden, teacher hidden) divided by
    the teacher hidden state's mean square (so each layer weighs the same whatever its scale).

Only the decoder layers train (attention, MLP, norms); the vision tower, embed_vision, token
and per-layer embeddings, per_layer_model_projection and the final norm stay frozen, as the
seed card did. The result is written in the pruned format (same tensor names, shapes and
config), with a distill step added to recipe.json.

On a GPU (compress.device) teacher and student train there whole (backpropagation needs the
whole student): float32 weights of both plus the student's gradients and AdamW state, checked
against the GPU's free memory before they are moved. Sequences go to the device one at a time.
GPU training is not bit-reproducible against the CPU (kernels sum in another order, and
backward passes on a GPU use atomics); the loss and held-out KL agree within rounding per step,
and the kept state is chosen by the same rule.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from compress.calibration import CalibrationSource
from compress.distill_config import DistillConfig


def training_sequences(processor, source: CalibrationSource, count: int, seed: int) -> list[dict]:
    """Model inputs of ``count`` examples of ``source``, each prompt followed by its answer."""
    items = []
    for image, prompt, answer in source.examples(count, seed):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
                    {"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        text = processor.apply_chat_template(messages, tokenize=False)
        items.append(dict(processor(text=text, images=[image], return_tensors="pt")))
    return items


def trainable_parameters(model) -> list:
    """Freezes everything but the text decoder layers; returns the parameters left to train."""
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.model.language_model.layers.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def distill_loss(student_out, teacher_out, mask, config: DistillConfig):
    """The loss defined in the module docstring, for one sequence; returns (total, kl, hidden)."""
    import torch.nn.functional as F

    t = config.temperature
    s_logp = F.log_softmax(student_out.logits[0][mask] / t, dim=-1)
    t_logp = F.log_softmax(teacher_out.logits[0][mask] / t, dim=-1)
    kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * t * t
    # hidden_states[0] is the embedding output (frozen, identical); compare every layer after it.
    pairs = list(zip(student_out.hidden_states[1:], teacher_out.hidden_states[1:]))
    hidden = sum(F.mse_loss(s, h) / h.pow(2).mean().clamp_min(1e-12) for s, h in pairs) / len(pairs)
    return config.kl_weight * kl + config.hidden_weight * hidden, kl, hidden


def _text_mask(inputs: dict, image_token_id: int | None):
    """Positions whose next-token prediction is trained: every token but image soft tokens."""
    ids = inputs["input_ids"][0]
    return ids != image_token_id if image_token_id is not None else ids == ids


def held_out_kl(student, teacher, items: list[dict], image_token_id, device: str = "cpu") -> float:
    """Mean KL(teacher || student) per text position over `items` (nats, temperature 1)."""
    import torch
    import torch.nn.functional as F

    from compress.device import to_device

    total, count = 0.0, 0
    with torch.no_grad():
        for inputs in items:
            inputs = to_device(inputs, device)
            mask = _text_mask(inputs, image_token_id)
            s = F.log_softmax(student(**inputs).logits[0][mask].float(), dim=-1)
            t = F.log_softmax(teacher(**inputs).logits[0][mask].float(), dim=-1)
            total += float(F.kl_div(s, t, log_target=True, reduction="sum"))
            count += int(mask.sum())
    return total / max(count, 1)


def train(student, teacher, items: list[dict], config: DistillConfig, evaluate: Callable[[], float],
          log: Callable, device: str = "cpu") -> dict[str, Any]:
    """Runs `config.steps` AdamW steps of `config.batch_size` sequences, keeping the best state.

    The held-out KL (`evaluate`) is measured before training and every `config.eval_every`
    steps; the student ends in the state with the lowest one, the untrained state included,
    so distillation never leaves the student further from the teacher than pruning did.

    Returns:
        {"history": per-step losses, "evals": [(step, held-out KL)], "kept_step": int}.
    """
    import torch

    torch.manual_seed(config.seed)
    order = random.Random(config.seed)
    params = trainable_parameters(student)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    layers = student.model.language_model.layers
    best = (evaluate(), 0, _snapshot(layers))
    history, evals = [], [(0, best[0])]
    for step in range(1, config.steps + 1):
        history.append(_train_step(student, teacher, order.sample(items, min(config.batch_size, len(items))),
                                   optimizer, config, step, device))
        if step % config.eval_every == 0 or step == config.steps:
            evals.append((step, evaluate()))
            log(f"distill step {step}/{config.steps}: loss {history[-1]['loss']:.4f}, held-out KL {evals[-1][1]:.4f}")
            if evals[-1][1] < best[0]:
                best = (evals[-1][1], step, _snapshot(layers))
    layers.load_state_dict(best[2])
    return {"history": history, "evals": evals, "kept_step": best[1]}


def _snapshot(module) -> dict:
    """A copy of the module's state on the CPU (on a GPU, a second copy of the layers would not fit)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _train_step(student, teacher, batch: list[dict], optimizer, config: DistillConfig, step: int,
                device: str = "cpu") -> dict:
    import torch

    from compress.device import to_device

    optimizer.zero_grad(set_to_none=True)
    totals = [0.0, 0.0, 0.0]
    image_token_id = getattr(teacher.config, "image_token_id", None)
    for inputs in batch:
        inputs = to_device(inputs, device)
        with torch.no_grad():
            t_out = teacher(**inputs, output_hidden_states=True)
        s_out = student(**inputs, output_hidden_states=True)
        loss, kl, hidden = distill_loss(s_out, t_out, _text_mask(inputs, image_token_id), config)
        (loss / len(batch)).backward()
        totals = [a + float(b.detach()) / len(batch) for a, b in zip(totals, (loss, kl, hidden))]
    optimizer.step()
    return {"step": step, "loss": totals[0], "kl": totals[1], "hidden": totals[2]}


def save_student(student, student_dir: Path, out_dir: Path) -> None:
    """Writes the trained weights under the student folder's own tensor names, dtypes and config."""
    from safetensors.torch import load_file, save_file

    from compress.export import source_files

    state = student.state_dict()
    stored = {}
    for path in source_files(student_dir):
        stored.update(load_file(str(path)))
    missing = sorted(k for k in stored if k not in state)
    if missing:
        raise ValueError(f"{student_dir} holds tensors the loaded student lacks ({missing[:3]}); re-run the pruning")
    tensors = {k: state[k].detach().to("cpu", v.dtype).contiguous() for k, v in stored.items()}
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    for path in sorted(student_dir.iterdir()):
        skipped = path.suffix == ".safetensors" or path.name in ("model.safetensors.index.json", "recipe.json")
        if path.is_file() and not skipped:
            shutil.copy2(path, out_dir / path.name)


def distill_checkpoint(teacher_dir: Path, student_dir: Path, out_dir: Path, config: DistillConfig,
                       source: CalibrationSource | None = None, log: Callable[[str], None] = print, *,
                       device: str = "auto") -> Path:
    """Distils the pruned `student_dir` toward the dense `teacher_dir` into `out_dir`.

    Args:
        teacher_dir: the unpruned checkpoint (the pipeline's source).
        student_dir: a folder written by compress.prune (not yet quantized).
        out_dir: destination; must not exist (written via out_dir.partial, then renamed).
        config: the DistillConfig.
        source: where the training and held-out examples come from (prompts with answers).
        log: progress lines.
        device: where training runs (compress.device): "auto", "cpu", "cuda" or "cuda:N".

    Raises:
        ValueError: no source was given (compress has no data of its own), the student is
            already quantized, the device cannot be used, or the models do not fit on the GPU.
    """
    import torch
    import transformers

    from compress.device import device_record, resolve_device
    from compress.folders import atomic_folder
    from compress.lineage import checkpoint_hash, write_recipe
    from compress.pruned_hf import load_pruned

    teacher_dir, student_dir, out_dir = Path(teacher_dir), Path(student_dir), Path(out_dir)
    used = resolve_device(device)
    if not isinstance(source, CalibrationSource):
        raise ValueError("distillation needs examples with answers: pass source= (a compress.calibration."
                         "CalibrationSource) or, on the command line, --calibration FILE.jsonl")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists: remove it or pick another output folder")
    if json.loads((student_dir / "config.json").read_text()).get("quantization_config"):
        raise ValueError(f"{student_dir} is already quantized: distil the pruned checkpoint before quantizing it")
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    teacher = transformers.AutoModelForImageTextToText.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    student = load_pruned(student_dir, dtype="float32")
    check_fits(teacher, student, used)
    teacher, student = teacher.to(used), student.to(used)
    processor = transformers.AutoProcessor.from_pretrained(teacher_dir)
    items = training_sequences(processor, source, config.num_samples, config.seed)
    # Held out: the same source drawn with another seed (a generator makes new items).
    held_out = training_sequences(processor, source, config.eval_samples, config.seed + 1)
    image_token_id = getattr(teacher.config, "image_token_id", None)
    outcome = train(student, teacher, items, config,
                    lambda: held_out_kl(student, teacher, held_out, image_token_id, used), log, used)
    kl_before, kl_after = outcome["evals"][0][1], dict(outcome["evals"])[outcome["kept_step"]]
    log(f"held-out KL(teacher || student): {kl_before:.4f} before distillation, {kl_after:.4f} after "
        f"(state of step {outcome['kept_step']} kept)")
    with atomic_folder(out_dir) as partial:
        save_student(student.eval(), student_dir, partial)
        step = _step(config, source, teacher_dir, checkpoint_hash(teacher_dir), outcome["history"],
                     time.perf_counter() - started)
        write_recipe(student_dir, partial, {**step, "device": device_record(device, used),
                                            "kept_step": outcome["kept_step"],
                                            "held_out_kl_by_step": outcome["evals"],
                                            "held_out_kl": {"before": kl_before, "after": kl_after}})
    return out_dir


def check_fits(teacher, student, device: str) -> None:
    """Refuses, before anything moves, a GPU whose free memory cannot hold the training state.

    Counted: every weight of teacher and student plus the student's gradients and AdamW's two
    moments for its decoder layers, in their dtype. Activations come on top, so this is a floor.
    """
    if not device.startswith("cuda"):
        return
    import torch

    def size(params) -> int:
        return sum(p.numel() * p.element_size() for p in params)

    needed = size(teacher.parameters()) + size(student.parameters()) + 3 * size(
        student.model.language_model.layers.parameters())
    free, _ = torch.cuda.mem_get_info(device)
    if needed > free:
        raise ValueError(f"distillation keeps teacher, student and AdamW state on the GPU: at least "
                         f"{needed / 2**30:.1f} GiB, but {torch.cuda.get_device_name(device)} has {free / 2**30:.1f} "
                         "GiB free: pass --device cpu (device='cpu') or use a GPU with more memory")


def _step(config: DistillConfig, source: CalibrationSource, teacher_dir: Path, teacher_sha: str, history: list[dict],
          duration_s: float) -> dict[str, Any]:
    from compress.configs import config_to_dict

    return {"step": "distill", "config": config_to_dict(config),
            "teacher": {"path": str(teacher_dir.resolve()), "sha256": teacher_sha},
            "calibration": {"source": f"{source.name}, prompt + reference answer", "fingerprint": source.fingerprint,
                            "num_samples": config.num_samples, "seed": config.seed},
            "loss_first": history[0] if history else None, "loss_last": history[-1] if history else None,
            "duration_s": duration_s}
