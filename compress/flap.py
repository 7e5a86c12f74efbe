"""FLAP structured pruning of Gemma 4's FFN as pure functions: statistics, scores, widths, channels, bias.

The down_proj input channel j of a decoder layer is x_j = act(gate_j . h) * (up_j . h).
FLAP (An et al., AAAI 2024) scores it by how much the layer output would move if x_j were
replaced by its mean: var(x_j) * ||W_down[:, j]||^2, and adds the removed channels' mean
contribution back as a bias so the output's expectation is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


class RunningStats:
    """Per-channel mean and sum of squared deviations (M2) of a stream of activations, float64.

    Batches merge with Chan et al.'s parallel update, so memory is O(channels) whatever the
    number of calibration tokens.
    """

    def __init__(self, channels: int, device: torch.device | str | None = None):
        self.count = 0
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)

    def to(self, device: torch.device | str) -> RunningStats:
        """These statistics with their tensors moved to `device` (in place; returns self)."""
        self.mean, self.m2 = self.mean.to(device), self.m2.to(device)
        return self

    def update(self, x: torch.Tensor) -> None:
        """Adds every row of `x` ([..., channels]; leading dimensions are tokens)."""
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
        n = rows.shape[0]
        if n == 0:
            return
        batch_mean = rows.mean(dim=0)
        batch_m2 = ((rows - batch_mean) ** 2).sum(dim=0)
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * (n / total)
        self.m2 += batch_m2 + delta**2 * (self.count * n / total)
        self.count = total

    def variance(self) -> torch.Tensor:
        """Sample variance per channel (M2 / (count - 1))."""
        if self.count < 2:
            raise ValueError("variance needs at least two calibration tokens: give more calibration samples")
        return self.m2 / (self.count - 1)


def column_sq_norms(w_down: torch.Tensor) -> torch.Tensor:
    """||W_down[:, j]||^2 for every input channel j, float64."""
    return (w_down.to(torch.float64) ** 2).sum(dim=0)


def flap_scores(variance: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """FLAP's fluctuation score per input channel: var(x_j) * ||W_down[:, j]||^2."""
    return variance.to(torch.float64) * column_sq_norms(w_down)


def magnitude_scores(w_down: torch.Tensor) -> torch.Tensor:
    """The magnitude baseline's score per input channel: ||W_down[:, j]|| (no activations)."""
    return column_sq_norms(w_down).sqrt()


def standardize(scores: torch.Tensor) -> torch.Tensor:
    """(s - mean) / std within one layer, so layers compare on one scale (all-equal -> zeros)."""
    std = scores.std()
    centred = scores - scores.mean()
    return centred / std if std > 0 else centred


def kept_width(width: int, remove_share: float, multiple: int) -> int:
    """Channels kept when `remove_share` of `width` goes: width * (1 - share) to the nearest multiple.

    The result is at least one multiple and at most `width`; a share of 0 keeps `width`
    even when it is not a multiple (an untouched layer stays as it was).
    """
    if remove_share <= 0:
        return width
    target = width * (1.0 - remove_share)
    rounded = int(math.floor(target / multiple + 0.5)) * multiple
    return max(multiple, min(width, rounded))


def schedule_widths(widths: Sequence[int], shares: Sequence[float], multiple: int,
                    protected: frozenset[int] = frozenset()) -> list[int]:
    """Kept width per layer for a per-layer removal schedule (protected layers keep all)."""
    if len(widths) != len(shares):
        raise ValueError(f"the schedule has {len(shares)} entries but the model has {len(widths)} layers")
    return [w if i in protected else kept_width(w, s, multiple) for i, (w, s) in enumerate(zip(widths, shares))]


def global_widths(standardized: Sequence[torch.Tensor], ratio: float, multiple: int, max_layer_ratio: float,
                  protected: frozenset[int] = frozenset()) -> list[int]:
    """Kept width per layer from one threshold over all layers' standardized scores.

    Channels are taken lowest score first across every unprotected layer until `ratio` of
    all FFN channels of the model are chosen; a layer stops giving channels once it has lost
    `max_layer_ratio` of its width (the per-layer floor). Each layer's count is then rounded
    to keep a multiple of `multiple`, so the achieved ratio can differ from `ratio` by up to
    multiple/2 channels per pruned layer.
    """
    widths = [len(s) for s in standardized]
    target = int(round(ratio * sum(widths)))
    caps = [0 if i in protected else int(max_layer_ratio * w) for i, w in enumerate(widths)]
    layer_of = torch.cat([torch.full((w,), i) for i, w in enumerate(widths)])
    order = torch.argsort(torch.cat([s.to(torch.float64) for s in standardized]), stable=True)
    removed = [0] * len(widths)
    chosen = 0
    for layer in layer_of[order].tolist():
        if chosen >= target:
            break
        if removed[layer] < caps[layer]:
            removed[layer] += 1
            chosen += 1
    return [_round_kept(w, w - r, multiple, caps[i]) for i, (w, r) in enumerate(zip(widths, removed))]


def _round_kept(width: int, kept: int, multiple: int, cap: int) -> int:
    """`kept` rounded to the nearest multiple, never removing more than `cap` channels."""
    if kept == width:
        return width
    rounded = max(multiple, int(math.floor(kept / multiple + 0.5)) * multiple)
    while width - rounded > cap and rounded + multiple <= width:
        rounded += multiple
    return min(width, rounded)


def kept_channels(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (ascending) of the `keep` highest-scoring channels."""
    if keep >= len(scores):
        return torch.arange(len(scores))
    top = torch.topk(scores.to(torch.float64), keep, sorted=False).indices
    return torch.sort(top).values


def pruned_channels(width: int, kept: torch.Tensor) -> torch.Tensor:
    """Indices (ascending) of the channels not in `kept`."""
    mask = torch.ones(width, dtype=torch.bool)
    mask[kept] = False
    return torch.nonzero(mask).flatten()


def compensation_bias(w_down: torch.Tensor, mean: torch.Tensor, pruned: torch.Tensor) -> torch.Tensor:
    """FLAP's bias: W_down[:, pruned] @ mean(x_pruned), float64, shape [hidden].

    Added to down_proj's output, it makes the pruned layer's output equal the dense one's
    whenever the removed channels' inputs sit at their calibration means.
    """
    return w_down.to(torch.float64)[:, pruned] @ mean.to(torch.float64)[pruned]


@dataclass(frozen=True)
class LayerRole:
    """What a decoder layer does besides its FFN.

    Attributes:
        index: decoder layer index.
        attention: "sliding_attention" or "full_attention".
        kv_shared: the layer reuses an earlier layer's keys/values (has no k/v_proj).
        kv_source: the last non-shared layer of its attention type before the shared
            block, whose keys/values every shared layer of that type reads.
    """

    index: int
    attention: str
    kv_shared: bool
    kv_source: bool

    def has(self, role: str) -> bool:
        """True when this layer plays `role` (one of ROLES)."""
        return {"full_attention": self.attention == "full_attention", "sliding_attention":
                self.attention == "sliding_attention", "kv_shared": self.kv_shared, "kv_source": self.kv_source}[role]



def layer_roles(text_config: dict) -> list[LayerRole]:
    """The role of every decoder layer, read as transformers' Gemma4TextAttention reads the config."""
    types = list(text_config["layer_types"])
    first_shared = len(types) - int(text_config.get("num_kv_shared_layers") or 0)
    sources = set()
    if first_shared < len(types):
        before = types[:first_shared]
        sources = {max(i for i, t in enumerate(before) if t == kind)
                   for kind in set(types[first_shared:]) if kind in before}
    return [LayerRole(i, t, i >= first_shared, i in sources) for i, t in enumerate(types)]
