"""Which linear gets which LayerSpec: pattern matching as vLLM does it, checked up front."""

from __future__ import annotations

import re
from collections import defaultdict

from compress.configs import DENSE, CompressConfig
from compress.schemes import LayerSpec, layer_spec

# vLLM fuses these shards into one layer; they must all share one scheme (or all be dense).
FUSED_SHARDS: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def matches(name: str, pattern: str) -> bool:
    """True when `name` equals `pattern`, or `pattern` is "re:X" and re.match(X, name)."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern


def resolve(name: str, config: CompressConfig) -> LayerSpec | None:
    """The spec of module `name`, None meaning dense.

    The order is vLLM's: ignore first, then the config groups in order (overrides, then
    the scheme's own targets), the first matching group winning.
    """
    if any(matches(name, p) for p in config.effective_ignore()):
        return None
    for pattern, scheme in config.overrides:
        if matches(name, pattern):
            return None if scheme == DENSE else layer_spec(scheme, getattr(config, "group_size", 128))
    if any(matches(name, p) for p in config.effective_targets()):
        return config.layer_spec()
    return None


def plan_modules(weight_shapes: dict[str, tuple[int, ...]], config: CompressConfig) -> dict[str, LayerSpec]:
    """Specs of the modules to quantize, validated before any tensor is touched.

    Args:
        weight_shapes: module name -> shape of its `.weight` (only 2-D ones are candidates).
        config: the compression config.

    Raises:
        ValueError: fused shards resolve differently, a group does not divide a width, or
            nothing matched at all.
    """
    plan = {}
    for name, shape in weight_shapes.items():
        spec = resolve(name, config) if len(shape) == 2 else None
        if spec is not None:
            _check_shape(name, shape, spec)
            plan[name] = spec
    if not plan:
        raise ValueError(
            f"no module matched the targets {config.effective_targets()} of {type(config).__name__}: "
            "check the module names of the checkpoint (Llama, Gemma 3 and Gemma 4 names are known)"
        )
    _check_fused(weight_shapes, plan)
    return plan


def _check_shape(name: str, shape: tuple[int, ...], spec: LayerSpec) -> None:
    in_features = shape[1]
    if spec.group_size and in_features % spec.group_size:
        raise ValueError(
            f"{name} has {in_features} input features, not a multiple of group_size {spec.group_size}: "
            f"add an override ({name!r}, 'dense') or pick a group size dividing it"
        )


def _check_fused(weight_shapes: dict[str, tuple[int, ...]], plan: dict[str, LayerSpec]) -> None:
    by_parent: dict[tuple[str, tuple[str, ...]], dict[str, LayerSpec | None]] = defaultdict(dict)
    for name in weight_shapes:
        parent, _, leaf = name.rpartition(".")
        for shards in FUSED_SHARDS:
            if leaf in shards:
                by_parent[(parent, shards)][leaf] = plan.get(name)
    for (parent, _), specs in by_parent.items():
        if len(set(specs.values())) > 1:
            raise ValueError(
                f"the fused shards of {parent} would be stored differently ({specs}); vLLM fuses them into "
                "one layer, so give q/k/v (and gate/up) the same scheme in targets, ignore and overrides"
            )
