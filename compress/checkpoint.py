"""compress_checkpoint: one checkpoint folder in, one compressed-tensors folder out (CLI and harness)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable

from compress.configs import CompressConfig, DistillConfig, FlapConfig, StepsConfig, W4A16GptqConfig, config_to_dict
from compress.folders import atomic_folder, check_paths, load_model
from compress.gguf_config import GGUF_CONFIGS
from compress.schemes import LayerSpec


def _gptq_encodings(src_dir: Path, config: W4A16GptqConfig, plan: dict[str, LayerSpec],
                    calibration, device: str) -> tuple[dict, dict]:
    """GPTQ-encoded tensors (computed on the loaded model) and a description of the calibration."""
    from compress.api import compress_
    from compress.calibration import as_model_inputs, resolve

    calibration, described = resolve(calibration, config.num_samples, config.seed, "w4a16_gptq")
    samples = as_model_inputs(calibration, src_dir)
    described["num_samples"] = len(samples)
    encoded = compress_(load_model(src_dir), config, samples, device=device)
    if set(encoded) != set(plan):
        raise ValueError(
            "the model's module names differ from the checkpoint's: "
            f"only in the model {sorted(set(encoded) - set(plan))[:5]}, "
            f"only in the checkpoint {sorted(set(plan) - set(encoded))[:5]}; "
            "re-save the checkpoint with this transformers"
        )
    return encoded, described


# Configs whose encodings need the model and calibration data; the rest stream tensor by tensor.
_CALIBRATED = {W4A16GptqConfig: _gptq_encodings}


def _prune(src_dir: Path, out_dir: Path, config, calibration, device: str) -> Path:
    from compress.prune import prune_checkpoint

    return prune_checkpoint(src_dir, out_dir, config, calibration, device=device)


def _steps(src_dir: Path, out_dir: Path, config, calibration, device: str) -> Path:
    from compress.steps import run_steps

    return run_steps(src_dir, out_dir, config, calibration, compress_one=compress_checkpoint, device=device)


def _distill_alone(src_dir: Path, out_dir: Path, config, calibration, device: str) -> Path:
    raise ValueError("a distill step needs the pruned student and its dense teacher: use it inside a steps "
                     "config after a flap step (see conf/compress/prune_distill_w4a16.yaml)")


def _gguf(src_dir: Path, out_dir: Path, config, calibration, device: str) -> Path:
    from compress.gguf import export_gguf

    return export_gguf(src_dir, out_dir, config)


# Configs that make no compressed-tensors folder: pruning, distillation, sequences of steps, GGUF export.
_OTHER_KINDS = {FlapConfig: _prune, StepsConfig: _steps, DistillConfig: _distill_alone,
                **{c: _gguf for c in GGUF_CONFIGS}}


def compress_checkpoint(
    src_dir: Path, out_dir: Path, config: CompressConfig, calibration: Iterable | None = None, *, device: str = "auto"
) -> Path:
    """Compresses a local checkpoint folder into a compressed-tensors folder vLLM can serve.

    Data-free schemes stream tensor by tensor (the model is never built); GPTQ loads the
    model and calibrates it layer by layer; FlapConfig prunes (compress.prune); StepsConfig
    runs its steps in order; a GgufConfig writes the GGUF pair llama-server serves instead
    (compress.gguf). The folder appears atomically when complete.

    Args:
        src_dir: transformers checkpoint (config.json, safetensors, tokenizer, processor).
        out_dir: destination; must not exist.
        config: a config from compress.configs.
        calibration: GPTQ and FLAP: (PIL image, prompt) pairs or processor-output dicts;
            a CalibrationSource (compress.calibration) to draw config.num_samples from.
        device: where GPTQ, FLAP statistics and distillation compute (compress.device): "auto"
            (CUDA when torch sees a GPU, else CPU), "cpu", "cuda" or "cuda:N"; checked before any
            work. Data-free schemes stream on the CPU. Recorded in recipe.json (step "device").

    Returns:
        out_dir.
    """
    from compress.device import resolve_device

    resolve_device(device)  # an unusable device fails here, before any work
    if type(config) in _OTHER_KINDS:
        return _OTHER_KINDS[type(config)](src_dir, out_dir, config, calibration, device)
    from compress.ct_config import quantization_config
    from compress.device import device_record
    from compress.export import copy_side_files, weight_shapes, write_config, write_weights
    from compress.lineage import write_recipe
    from compress.plan import plan_modules

    src_dir, out_dir = Path(src_dir), Path(out_dir)
    check_paths(src_dir, out_dir)
    plan = plan_modules(weight_shapes(src_dir), config)
    started = time.perf_counter()
    precomputed, described, used = {}, None, "cpu"  # data-free schemes stream tensor by tensor on the CPU
    if type(config) in _CALIBRATED:
        used = resolve_device(device)
        precomputed, described = _CALIBRATED[type(config)](src_dir, config, plan, calibration, used)
    with atomic_folder(out_dir) as partial:
        write_weights(src_dir, partial, plan, precomputed)
        write_config(src_dir, partial, quantization_config(config, set(plan.values())))
        copy_side_files(src_dir, partial)
        step = {"step": "compress", "config": config_to_dict(config), "calibration": described,
                "quantized_modules": len(plan), "device": device_record(device, used),
                "duration_s": round(time.perf_counter() - started, 3)}
        write_recipe(src_dir, partial, step)
    return out_dir
