"""Which FFN channels each decoder layer keeps, and its compensation bias, for a FlapConfig."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from compress import flap
from compress.flap_config import FlapConfig

MLP_KEY = "model.language_model.layers.{i}.mlp.{proj}.weight"


@dataclass(frozen=True)
class LayerPrune:
    """One decoder layer's pruning.

    Attributes:
        index: decoder layer index.
        width: original intermediate width.
        kept: ascending indices of the intermediate channels kept.
        bias: down_proj bias [hidden], float64 (zeros without compensation).
        protected: the layer was exempt from pruning (protect_layers / protect_roles).
    """

    index: int
    width: int
    kept: torch.Tensor
    bias: torch.Tensor
    protected: bool

    def summary(self) -> dict:
        """Counts for the lineage record."""
        return {"layer": self.index, "width": self.width, "kept": len(self.kept),
                "removed": self.width - len(self.kept), "protected": self.protected}


def protected_layers(text_config: dict, config: FlapConfig) -> frozenset[int]:
    """Layers never pruned: those listed in protect_layers plus those with a protected role."""
    roles = flap.layer_roles(text_config)
    bad = [i for i in config.protect_layers if not 0 <= i < len(roles)]
    if bad:
        raise ValueError(f"protect_layers {bad} are not decoder layers of this {len(roles)}-layer model")
    by_role = {r.index for r in roles if any(r.has(role) for role in config.protect_roles)}
    return frozenset(config.protect_layers) | by_role


def layer_scores(w_down: torch.Tensor, config: FlapConfig, stats: flap.RunningStats | None) -> torch.Tensor:
    """Per-channel importance of one layer under config.method."""
    if config.method == "magnitude":
        return flap.magnitude_scores(w_down)
    return flap.flap_scores(stats.variance(), w_down)


def plan_pruning(read_down, num_layers: int, text_config: dict, config: FlapConfig,
                 stats: dict[int, flap.RunningStats] | None) -> list[LayerPrune]:
    """Every layer's kept channels and bias.

    Args:
        read_down: layer index -> its down_proj weight [hidden, width] (read on demand, so
            only one layer's weight is held at a time).
        num_layers: decoder layers.
        text_config: the checkpoint's text_config (layer types, KV sharing).
        config: the pruning config.
        stats: layer -> down_proj input statistics (method "flap"), else None.
    """
    protected = protected_layers(text_config, config)
    scores = [layer_scores(read_down(i), config, stats[i] if stats else None) for i in range(num_layers)]
    widths = [len(s) for s in scores]
    if config.mode == "schedule":
        keep = flap.schedule_widths(widths, config.shares_for(num_layers), config.multiple, protected)
    else:
        standardized = [flap.standardize(s) for s in scores]
        keep = flap.global_widths(standardized, config.ratio, config.multiple, config.max_layer_ratio, protected)
    hidden = int(text_config["hidden_size"])
    compensate = config.bias_compensation and config.method == "flap"
    return [_layer(i, hidden, read_down if compensate else None, scores[i], keep[i], stats, i in protected)
            for i in range(num_layers)]


def _layer(index: int, hidden: int, read_down, scores: torch.Tensor, keep: int, stats, protected: bool) -> LayerPrune:
    width = len(scores)
    kept = flap.kept_channels(scores, keep)
    if read_down is None or keep == width:
        bias = torch.zeros(hidden, dtype=torch.float64)
    else:
        bias = flap.compensation_bias(read_down(index), stats[index].mean, flap.pruned_channels(width, kept))
    return LayerPrune(index, width, kept, bias, protected)


def read_text_config(src_dir: Path) -> dict:
    """text_config of a Gemma 4 checkpoint, refusing what cannot be pruned here."""
    import json

    config = json.loads((Path(src_dir) / "config.json").read_text())
    text = config.get("text_config")
    if config.get("model_type") != "gemma4" or not isinstance(text, dict) or "layer_types" not in text:
        raise ValueError(f"{src_dir} is not a Gemma 4 checkpoint (model_type gemma4 with text_config): "
                         "FLAP pruning here supports Gemma 4 only")
    if text.get("enable_moe_block"):
        raise ValueError(f"{src_dir} uses MoE blocks: FLAP pruning here covers dense MLPs only")
    if config.get("flap_pruned") or "quantization_config" in config:
        raise ValueError(f"{src_dir} is already pruned or quantized: prune the dense checkpoint")
    return text
