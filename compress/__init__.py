"""Compression of vision-language checkpoints into the compressed-tensors format.

`compress_(model, config)` quantizes a model in place (the handler picked by the config's
type); `compress_checkpoint(src_dir, out_dir, config)` makes a servable folder. Importing
this package does not import torch. Calibrated steps (GPTQ, FLAP statistics, distillation) compute
on `device="auto"` (CUDA when torch sees a GPU, else the CPU; compress.device), one decoder layer at
a time for GPTQ and FLAP (compress.layerwise).
"""

from __future__ import annotations

from typing import Any

from compress.configs import (
    CONFIGS,
    CompressConfig,
    FlapConfig,
    Fp8Config,
    Fp8DynamicConfig,
    StepsConfig,
    W4A16GptqConfig,
    W4A16RtnConfig,
    W8A8Int8Config,
    config_from_name,
)

__all__ = [
    "CONFIGS", "CompressConfig", "FlapConfig", "Fp8Config", "StepsConfig", "Fp8DynamicConfig", "W4A16GptqConfig",
    "W4A16RtnConfig", "W8A8Int8Config", "compress_", "compress_checkpoint", "config_from_name",
]


def __getattr__(name: str) -> Any:
    # compress_ and compress_checkpoint pull in torch: import them on first use only.
    if name == "compress_":
        from compress.api import compress_

        return compress_
    if name == "compress_checkpoint":
        from compress.checkpoint import compress_checkpoint

        return compress_checkpoint
    raise AttributeError(f"module 'compress' has no attribute {name!r}")
