"""Where calibrated steps compute (GPTQ, FLAP statistics, distillation): the device choice and moving data there.

"auto" is CUDA when torch sees a CUDA GPU, else the CPU; "cpu", "cuda" and "cuda:N" force one.
The model itself stays where it was loaded (the CPU) and never sits on the GPU whole: GPTQ and
FLAP statistics move one decoder layer and one sample's activations there at a time
(compress.layerwise), after one first pass with the modules before the decoder layers there
(embeddings, towers). Distillation trains on the GPU whole (compress.distill). Data-free schemes
stream tensor by tensor on the CPU.

GPU and CPU results agree within rounding, not bit for bit: the layers run in the model's dtype
on different kernels (bf16 matmuls accumulate in another order), so Hessians and statistics differ
in their last bits and a GPTQ value sitting at a rounding boundary can land one step away. What
this code controls is pinned: Hessians accumulate in float32 with TF32 off, FLAP statistics in
float64, and on one GPU model and torch release cuBLAS gives the same bits on every run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

AUTO = "auto"
_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device_name(device: str) -> str:
    """`device` when it is auto, cpu, cuda or cuda:N; raises ValueError otherwise (no torch import)."""
    if not isinstance(device, str) or not _NAME.match(device):
        raise ValueError(f"device {device!r}: use auto (CUDA when torch sees a GPU, else CPU), cpu, cuda or cuda:N")
    return device


def resolve_device(requested: str = AUTO) -> str:
    """The torch device a calibrated step runs on, checked before any work.

    Raises:
        ValueError: a CUDA device was asked for and torch here cannot use it (one sentence naming the fix).
    """
    import torch

    check_device_name(requested)
    if requested == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return requested
    if not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None
               else f"torch (CUDA {torch.version.cuda}) finds no usable GPU (driver, or CUDA_VISIBLE_DEVICES)")
        raise ValueError(f"device {requested!r} was asked for but {why}: pass --device cpu (device='cpu') or "
                         "auto, or run on a machine with an NVIDIA GPU, its driver and a CUDA build of torch")
    index = int(requested.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {requested!r} was asked for but torch sees {torch.cuda.device_count()} GPU(s): "
                         f"pick cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return requested


def device_record(requested: str, used: str) -> dict[str, str]:
    """What recipe.json records for a step: the device asked for, the one used and, on a GPU, its name."""
    record = {"requested": requested, "used": used}
    if used.startswith("cuda"):
        import torch

        record["name"] = torch.cuda.get_device_name(used)
    return record


def to_device(value: Any, device: Any, memo: dict[int, Any] | None = None) -> Any:
    """`value` with every tensor in it (nested in tuples, lists and plain dicts) moved to `device`.

    Other objects are passed through untouched: a layer's shared key/value store (a UserDict that
    earlier layers write and later ones read) must stay one object. Tensors met twice (the same
    rotary tables handed to every layer) are moved once when `memo` is given.
    """
    import torch

    if torch.is_tensor(value):
        if memo is None:
            return value.to(device)
        if id(value) not in memo:
            memo[id(value)] = value.to(device)
        return memo[id(value)]
    if type(value) in (tuple, list):
        return type(value)(to_device(v, device, memo) for v in value)
    if type(value) is dict:
        return {k: to_device(v, device, memo) for k, v in value.items()}
    return value


@contextmanager
def exact_float32() -> Iterator[None]:
    """float32 matmuls in full precision (no TF32) inside the block: Hessians are float32 sums."""
    import torch

    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)
