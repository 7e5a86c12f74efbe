"""Frozen, versioned compression configs with Gemma 4 / Gemma 3 VLM ignore defaults."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from compress.distill_config import DistillConfig
from compress.flap_config import FlapConfig
from compress.gguf_config import GGUF_CONFIGS, GgufConfig
from compress.schemes import LayerSpec, layer_spec

# Module-name patterns follow compressed-tensors/vLLM rules: "re:" means re.match (anchored
# at the start only), anything else is an exact module name. Every regex starts with ".*"
# so it matches both the checkpoint names and vLLM's remapped names (vLLM maps exact names
# through its weight mapper but keeps regexes as written).
DECODER_ATTENTION = r"re:.*layers\.\d+\.self_attn\.(q|k|v)_proj$"
DECODER_O_PROJ = r"re:.*layers\.\d+\.self_attn\.o_proj$"
DECODER_MLP = r"re:.*layers\.\d+\.mlp\.(gate|up|down)_proj$"
DECODER_TARGETS: tuple[str, ...] = (DECODER_ATTENTION, DECODER_O_PROJ, DECODER_MLP)

# Gemma 4 per-layer-embedding (PLE) linears: small, sensitive, kept dense by default.
PLE_PATTERNS: tuple[str, ...] = (
    r"re:.*layers\.\d+\.per_layer_input_gate$",
    r"re:.*layers\.\d+\.per_layer_projection$",
    r"re:.*per_layer_model_projection$",
)

# Towers and projections of Gemma 4 (vision_tower, audio_tower, embed_vision, embed_audio)
# and Gemma 3 (vision_tower, multi_modal_projector), embeddings and the LM head. Gemma 3's
# vision encoder has "layers.N.self_attn.q_proj" too: the ignore list is what excludes it.
VLM_IGNORE: tuple[str, ...] = (
    "lm_head",
    r"re:.*lm_head$",
    r"re:.*vision_tower.*",
    r"re:.*audio_tower.*",
    r"re:.*embed_vision.*",
    r"re:.*embed_audio.*",
    r"re:.*multi_modal_projector.*",
    r"re:.*embed_tokens.*",
)

DENSE = "dense"  # an override value meaning "leave these modules unquantized"


@dataclass(frozen=True)
class CompressConfig:
    """Fields every scheme shares.

    Attributes:
        version: config schema version; bump when a field's meaning changes.
        ignore: module patterns never quantized (checked first, as vLLM does).
        targets: module patterns quantized with this config's scheme.
        quantize_ple: also quantize the Gemma 4 per-layer-embedding linears.
        overrides: (pattern, scheme) pairs checked before targets, first match wins; scheme is a
            data-free scheme name (fp8, fp8_dynamic, w4a16_rtn, w8a8_int8) or "dense".
    """

    SCHEME: ClassVar[str] = ""
    version: int = 1
    ignore: tuple[str, ...] = VLM_IGNORE
    targets: tuple[str, ...] = DECODER_TARGETS
    quantize_ple: bool = False
    overrides: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for pair in self.overrides:
            if len(pair) != 2:
                raise ValueError(f"override {pair!r} must be a (pattern, scheme) pair")
            if pair[1] not in DATA_FREE_SCHEMES and pair[1] != DENSE:
                allowed = ", ".join([*DATA_FREE_SCHEMES, DENSE])
                raise ValueError(f"override scheme {pair[1]!r} for {pair[0]!r}: use one of {allowed}")

    def layer_spec(self) -> LayerSpec:
        """How each targeted linear is stored and served under this config."""
        return layer_spec(self.SCHEME, getattr(self, "group_size", 128))

    def effective_targets(self) -> tuple[str, ...]:
        """Targets, plus the PLE linears when quantize_ple is set."""
        return self.targets + (PLE_PATTERNS if self.quantize_ple else ())

    def effective_ignore(self) -> tuple[str, ...]:
        """Ignore patterns, plus the PLE linears unless quantize_ple is set."""
        return self.ignore + (() if self.quantize_ple else PLE_PATTERNS)


@dataclass(frozen=True)
class Fp8Config(CompressConfig):
    """FP8 e4m3 weights, one scale per tensor; activations stay 16-bit (W8A16).

    Attributes:
        dynamic_activations: also quantize activations to FP8 per token at serving time
            (W8A8). The weights are identical; this exists because CPU vLLM has no FP8
            weight-only kernel, so the platform check can serve the same weights that way.
    """

    SCHEME: ClassVar[str] = "fp8"
    dynamic_activations: bool = False

    def layer_spec(self) -> LayerSpec:
        spec = super().layer_spec()
        return dataclasses.replace(spec, activation="fp8") if self.dynamic_activations else spec


@dataclass(frozen=True)
class Fp8DynamicConfig(CompressConfig):
    """FP8 weights per output channel plus dynamic per-token FP8 activations.

    Attributes:
        include_qkv: quantize q/k/v too; False keeps attention inputs dense (o_proj + MLP only).
    """

    SCHEME: ClassVar[str] = "fp8_dynamic"
    include_qkv: bool = True

    def effective_targets(self) -> tuple[str, ...]:
        return tuple(t for t in super().effective_targets() if self.include_qkv or t != DECODER_ATTENTION)


@dataclass(frozen=True)
class W4A16RtnConfig(CompressConfig):
    """Symmetric int4 weights, one scale per group of input channels, round to nearest."""

    SCHEME: ClassVar[str] = "w4a16_rtn"
    group_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size <= 0 or self.group_size % 8:
            raise ValueError(f"group_size {self.group_size} must be a positive multiple of 8 (int4 packs 8 per int32)")


@dataclass(frozen=True)
class W4A16GptqConfig(W4A16RtnConfig):
    """Int4 group weights chosen by GPTQ on calibration activations.

    Attributes:
        dampening_frac: added to diag(H) as dampening_frac * mean(diag(H)).
        block_size: columns per lazy-update block.
        act_order: process columns by decreasing diag(H) with group scales fixed
            beforehand ("static" act-order, so no g_idx is stored).
        num_samples: calibration samples used when the caller gives none.
        seed: seed of the default calibration samples.
    """

    SCHEME: ClassVar[str] = "w4a16_gptq"
    dampening_frac: float = 0.01
    block_size: int = 128
    act_order: bool = True
    num_samples: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.dampening_frac < 1:
            raise ValueError(f"dampening_frac {self.dampening_frac} must lie in (0, 1); 0.01 is usual")
        if self.block_size <= 0 or self.num_samples <= 0:
            raise ValueError("block_size and num_samples must be positive")


@dataclass(frozen=True)
class W8A8Int8Config(CompressConfig):
    """Symmetric int8 weights per output channel plus dynamic per-token int8 activations."""

    SCHEME: ClassVar[str] = "w8a8_int8"


@dataclass(frozen=True)
class StepsConfig:
    """Several configs applied in order (e.g. prune, then quantize), each to the previous output.

    Any scheme name that is not a single config's, given with a `steps` list, names a
    sequence (conf/compress/flap_fp8.yaml: `scheme: flap_fp8` + `steps: [...]`).

    Attributes:
        name: the sequence's name (the scheme it was composed under).
        steps: the configs; pruning steps must come before any quantization step, since
            pruning reads dense weights.
    """

    SCHEME: ClassVar[str] = "steps"
    name: str = "steps"
    version: int = 1
    steps: tuple = ()

    def __post_init__(self) -> None:
        steps = tuple(_step_config(s) for s in self.steps)
        object.__setattr__(self, "steps", steps)
        if not steps:
            raise ValueError("steps is empty: list at least one {scheme: ..., fields...} entry")
        gguf = [s.SCHEME for s in steps if isinstance(s, GgufConfig)]
        if gguf:
            raise ValueError(f"{gguf[0]} inside a steps list: a GGUF export reads only a dense, unpruned checkpoint "
                             "(llama.cpp has no pruned FFN widths), so use it alone")
        quantized = [i for i, s in enumerate(steps) if isinstance(s, CompressConfig)]
        if quantized and any(isinstance(s, FlapConfig) for s in steps[quantized[0]:]):
            raise ValueError("a flap step follows a quantization step: prune first, then quantize")
        if quantized and any(isinstance(s, DistillConfig) for s in steps[quantized[0]:]):
            raise ValueError("a distill step follows a quantization step: distil the pruned model, then quantize")
        _check_groups_tile_widths(steps)
        pruned = [i for i, s in enumerate(steps) if isinstance(s, FlapConfig)]
        if any(isinstance(s, DistillConfig) for s in steps[: (pruned or [len(steps)])[0] + 1]):
            raise ValueError("a distill step needs a flap step before it: the student is the pruned model")


def _check_groups_tile_widths(steps: tuple) -> None:
    """Pruned widths (multiples of the flap step's `multiple`) must split into whole int4 groups."""
    multiples = [s.multiple for s in steps if isinstance(s, FlapConfig)]
    for s in steps:
        group = getattr(s, "group_size", 0)
        if group and any(m % group for m in multiples):
            raise ValueError(f"the flap step rounds widths to multiples of {multiples[0]} but {s.SCHEME} uses "
                             f"groups of {group}: make the flap multiple a multiple of group_size")


def _step_config(step: Any) -> Any:
    """A step given as a config object, or as a mapping {scheme: NAME, field: value, ...}."""
    if isinstance(step, Mapping):
        if "scheme" not in step:
            raise ValueError(f"step {dict(step)!r} has no scheme: add scheme: NAME")
        if step["scheme"] == StepsConfig.SCHEME:
            raise ValueError("steps cannot nest: list every step in one steps list")
        return config_from_name(step["scheme"], **{k: v for k, v in step.items() if k != "scheme"})
    if isinstance(step, (CompressConfig, FlapConfig, DistillConfig, GgufConfig)):
        return step
    raise ValueError(f"step {step!r} is neither a config nor a {{scheme: ...}} mapping")


CONFIGS: dict[str, type] = {
    c.SCHEME: c
    for c in (Fp8Config, Fp8DynamicConfig, W4A16RtnConfig, W4A16GptqConfig, W8A8Int8Config, FlapConfig,
              DistillConfig, StepsConfig, *GGUF_CONFIGS)
}
DATA_FREE_SCHEMES: tuple[str, ...] = ("fp8", "fp8_dynamic", "w4a16_rtn", "w8a8_int8")


def uses_llama_cpp(config: Any) -> bool:
    """Whether building ``config`` runs llama.cpp's converter and tools (a GGUF export)."""
    return isinstance(config, GgufConfig)


def calibrates(config: Any) -> bool:
    """Whether building ``config`` draws calibration or training data (GPTQ, FLAP scores, distillation)."""
    if isinstance(config, StepsConfig):
        return any(calibrates(step) for step in config.steps)
    if isinstance(config, FlapConfig):
        return config.needs_calibration
    return isinstance(config, (W4A16GptqConfig, DistillConfig))


def config_from_name(scheme: str, **params: Any) -> CompressConfig:
    """The config of scheme `scheme` with `params` overriding its defaults (lists become tuples).

    A scheme that is not a single config's, given with only `steps`, is a StepsConfig named `scheme`.
    """
    if scheme not in CONFIGS and set(params) == {"steps"}:
        return StepsConfig(name=scheme, steps=params["steps"])
    if scheme not in CONFIGS:
        raise ValueError(f"unknown scheme {scheme!r}: use one of {', '.join(CONFIGS)}")
    cls = CONFIGS[scheme]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}; fields: {sorted(names)}")
    fixed = {k: v if k == "steps" else _tupled(v) for k, v in params.items()}
    return cls(**fixed)


def _tupled(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_tupled(v) for v in value)
    return value


def config_to_dict(config: CompressConfig) -> dict[str, Any]:
    """A JSON-ready dict of the config, with its scheme name and class (each step's too)."""
    if isinstance(config, StepsConfig):
        return {"scheme": config.SCHEME, "class": "StepsConfig", "name": config.name, "version": config.version,
                "steps": [config_to_dict(s) for s in config.steps]}
    return {"scheme": config.SCHEME, "class": type(config).__name__, **dataclasses.asdict(config)}
