"""Per-layer quantization specs: what one linear's weight and input become under a scheme."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerSpec:
    """How one linear layer is stored and served.

    Attributes:
        weight: weight codec name (a key of compress.codecs.CODECS).
        activation: dynamic per-token activation type at serving time ("fp8", "int8"), or
            None for weight-only schemes.
        group_size: input channels per scale for group codecs, else 0.
    """

    weight: str
    activation: str | None = None
    group_size: int = 0


def layer_spec(scheme: str, group_size: int = 128) -> LayerSpec:
    """The LayerSpec of a scheme name (see compress.configs.CONFIGS)."""
    specs = {
        "fp8": LayerSpec("fp8_tensor"),
        "fp8_dynamic": LayerSpec("fp8_channel", "fp8"),
        "w4a16_rtn": LayerSpec("int4_group", None, group_size),
        "w4a16_gptq": LayerSpec("int4_group", None, group_size),
        "w8a8_int8": LayerSpec("int8_channel", "int8"),
    }
    if scheme not in specs:
        raise ValueError(f"unknown scheme {scheme!r}: use one of {', '.join(specs)}")
    return specs[scheme]
