"""FlapConfig: how FFN channels of a Gemma 4 checkpoint are scored, counted and removed.

Gemma 4 layer roles, as handled here: a layer's MLP runs after its attention, so pruning it
never changes that layer's own keys/values, but it shifts the input of every later layer,
including the KV-source layers whose keys/values all KV-shared layers reuse; early layers are
therefore the costly ones (the seed's E4B table keeps layers 0-11). Full-attention layers are
the only long-range path (the seed keeps every one of them), so protect_roles defaults to
full_attention in both modes; KV-shared layers stay prunable (the seed prunes 30-34). In
global mode no layer loses more than max_layer_ratio of its channels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

# Decoder layer roles a config can protect (compress.flap.LayerRole.has).
ROLES = ("full_attention", "sliding_attention", "kv_shared", "kv_source")
METHODS = ("flap", "magnitude")
MODES = ("global", "schedule")


@dataclass(frozen=True)
class FlapConfig:
    """FLAP (or magnitude) pruning of every decoder layer's MLP intermediate channels.

    Attributes:
        version: config schema version; bump when a field's meaning changes.
        method: "flap" scores channel j by var(x_j) * ||W_down[:, j]||^2 over calibration
            tokens; "magnitude" by ||W_down[:, j]|| alone (the baseline; needs no data).
        mode: "global" removes `ratio` of all FFN channels by one threshold over the layers'
            standardized scores (FLAP's adaptive structure); "schedule" removes the share
            given per layer in `schedule`.
        ratio: global mode: share of all the model's FFN channels removed (before rounding).
        schedule: schedule mode: {number of decoder layers: per-layer removal shares}; the
            entry matching the model's depth is used, so one config serves several models.
        multiple: kept widths are rounded to a multiple of this (128 keeps GPU Marlin/FP8
            kernels usable; 32 is enough for CPU vLLM's AMX int8/FP8 kernels).
        bias_compensation: add W_down[:, removed] @ mean(x_removed) as down_proj.bias
            (FLAP); False stores a zero bias (for comparison). Needs method "flap".
        max_layer_ratio: global mode: no layer loses more than this share of its channels.
        protect_layers: decoder layer indices never pruned (both modes).
        protect_roles: layer roles never pruned (both modes): full_attention,
            sliding_attention, kv_shared, kv_source (see compress.flap.LayerRole).
        num_samples: calibration samples (suite train split) when the caller gives none.
        seed: seed of those samples.
        calibration_tokens: "all" token positions feed the statistics (the paper's choice);
            "text" leaves out image soft-token positions.
    """

    SCHEME: ClassVar[str] = "flap"
    version: int = 1
    method: str = "flap"
    mode: str = "global"
    ratio: float = 0.2
    schedule: Any = ()
    multiple: int = 128
    bias_compensation: bool = True
    max_layer_ratio: float = 0.5
    protect_layers: tuple[int, ...] = ()
    protect_roles: tuple[str, ...] = ("full_attention",)
    num_samples: int = 64
    seed: int = 0
    calibration_tokens: str = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedule", _normalized_schedule(self.schedule))
        object.__setattr__(self, "protect_layers", tuple(int(i) for i in self.protect_layers))
        object.__setattr__(self, "protect_roles", tuple(self.protect_roles))
        self._check_choices()
        if not 0.0 <= self.ratio < 1.0 or not 0.0 < self.max_layer_ratio < 1.0:
            raise ValueError(f"ratio ({self.ratio}) must lie in [0, 1) and "
                             f"max_layer_ratio ({self.max_layer_ratio}) in (0, 1)")
        if self.multiple <= 0 or self.num_samples <= 0:
            raise ValueError("multiple and num_samples must be positive")
        if self.mode == "schedule" and not self.schedule:
            raise ValueError("mode 'schedule' needs a schedule: {num_layers: [share per layer, ...]}")

    def _check_choices(self) -> None:
        if self.calibration_tokens not in ("all", "text"):
            raise ValueError(f"calibration_tokens {self.calibration_tokens!r}: use 'all' or 'text'")
        if self.method not in METHODS or self.mode not in MODES:
            raise ValueError(f"method {self.method!r} / mode {self.mode!r}: "
                             f"use method one of {METHODS}, mode one of {MODES}")
        unknown = [r for r in self.protect_roles if r not in ROLES]
        if unknown:
            raise ValueError(f"unknown protect_roles {unknown}: use any of {ROLES}")
        if self.method == "magnitude" and self.bias_compensation:
            raise ValueError("the magnitude baseline has no activation means for a bias: set bias_compensation false")

    @property
    def needs_calibration(self) -> bool:
        """Whether activation statistics must be gathered (FLAP scores)."""
        return self.method == "flap"

    def shares_for(self, num_layers: int) -> tuple[float, ...]:
        """The schedule entry for a model of `num_layers` decoder layers."""
        for depth, shares in self.schedule:
            if depth == num_layers:
                return shares
        raise ValueError(f"the schedule has entries for {[d for d, _ in self.schedule]} layers, not for this "
                         f"model's {num_layers}: add a {num_layers}-layer entry")


def _normalized_schedule(schedule: Any) -> tuple[tuple[int, tuple[float, ...]], ...]:
    """{depth: shares} or ((depth, shares), ...) as a sorted tuple of (int, tuple of float)."""
    pairs = schedule.items() if isinstance(schedule, Mapping) else schedule
    out = []
    for depth, shares in pairs:
        shares = tuple(float(s) for s in shares)
        if len(shares) != int(depth):
            raise ValueError(f"schedule entry for {depth} layers lists {len(shares)} shares")
        if any(not 0.0 <= s < 1.0 for s in shares):
            raise ValueError(f"schedule shares must lie in [0, 1): {shares}")
        out.append((int(depth), shares))
    return tuple(sorted(out))
