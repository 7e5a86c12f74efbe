"""The config.json `quantization_config` block, built with compressed-tensors' own classes."""

from __future__ import annotations

from typing import Any

from compress.codecs import CODECS
from compress.configs import DENSE, CompressConfig
from compress.schemes import LayerSpec, layer_spec


def _weight_args(spec: LayerSpec):
    from compressed_tensors.quantization import QuantizationArgs

    kinds = {
        "fp8_tensor": dict(num_bits=8, type="float", strategy="tensor"),
        "fp8_channel": dict(num_bits=8, type="float", strategy="channel"),
        "int8_channel": dict(num_bits=8, type="int", strategy="channel"),
        "int4_group": dict(num_bits=4, type="int", strategy="group", group_size=spec.group_size),
    }
    return QuantizationArgs(symmetric=True, dynamic=False, **kinds[spec.weight])


def _input_args(spec: LayerSpec):
    from compressed_tensors.quantization import QuantizationArgs

    if spec.activation is None:
        return None
    # Dynamic per-token: the scale is computed at run time, so no input_scale is stored.
    kind = "float" if spec.activation == "fp8" else "int"
    return QuantizationArgs(num_bits=8, type=kind, strategy="token", symmetric=True, dynamic=True)


def _groups(config: CompressConfig) -> list[tuple[LayerSpec, list[str]]]:
    """(spec, targets) per config group; override groups first, since vLLM takes the first match."""
    group_size = getattr(config, "group_size", 128)
    groups: list[tuple[LayerSpec, list[str]]] = []
    for pattern, scheme in config.overrides:
        if scheme != DENSE:
            groups.append((layer_spec(scheme, group_size), [pattern]))
    groups.append((config.layer_spec(), list(config.effective_targets())))
    return groups


def quantization_config(config: CompressConfig, used: set[LayerSpec]) -> dict[str, Any]:
    """The compressed-tensors quantization_config for a checkpoint made with `config`.

    Args:
        config: the compression config.
        used: the specs actually applied to some module (groups nobody uses are dropped).
    """
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme, QuantizationStatus

    groups = [(spec, targets) for spec, targets in _groups(config) if spec in used]
    formats = {CODECS[spec.weight].format for spec, _ in groups}
    mixed = len(formats) > 1
    config_groups = {
        f"group_{i}": QuantizationScheme(
            targets=targets,
            weights=_weight_args(spec),
            input_activations=_input_args(spec),
            format=CODECS[spec.weight].format if mixed else None,
        )
        for i, (spec, targets) in enumerate(groups)
    }
    dense_overrides = [p for p, s in config.overrides if s == DENSE]
    qc = QuantizationConfig(
        config_groups=config_groups,
        format="mixed-precision" if mixed else formats.pop(),
        quantization_status=QuantizationStatus.COMPRESSED,
        ignore=[*dense_overrides, *config.effective_ignore()],
    )
    return qc.model_dump(mode="json", exclude_none=False)
