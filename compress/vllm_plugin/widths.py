"""The FLAP-pruned checkpoint contract as config.json states it: flag, architecture, per-layer MLP widths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ARCHITECTURE = "FlapGemma4ForConditionalGeneration"
_REEXPORT = ("re-export it with the project's FLAP pruning (compress.prune), which writes "
             "text_config.intermediate_sizes, one MLP width per decoder layer")


class FlapConfigError(ValueError):
    """A checkpoint's config does not describe a servable FLAP-pruned Gemma 4; the message says how to fix it."""


def is_flap_pruned(config: Mapping[str, Any]) -> bool:
    """Whether a config.json dict declares FLAP pruning (top level or its text_config)."""
    text = config.get("text_config") or {}
    return bool(config.get("flap_pruned") or text.get("flap_pruned")
                or ARCHITECTURE in (config.get("architectures") or ()))


def flap_widths(num_hidden_layers: int, intermediate_sizes: Any, where: str = "config.json") -> list[int]:
    """Validated per-decoder-layer MLP widths of a pruned checkpoint.

    Args:
        num_hidden_layers: text_config.num_hidden_layers.
        intermediate_sizes: text_config.intermediate_sizes as read (None when absent).
        where: the checkpoint named in error messages.

    Raises:
        FlapConfigError: widths missing, not a list of positive ints, or not one per layer.
    """
    if intermediate_sizes is None:
        raise FlapConfigError(f"{where} says flap_pruned but has no text_config.intermediate_sizes: {_REEXPORT}.")
    sizes = list(intermediate_sizes) if isinstance(intermediate_sizes, (list, tuple)) else None
    if sizes is None or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in sizes):
        raise FlapConfigError(f"{where}: text_config.intermediate_sizes must be a list of positive ints, "
                              f"got {intermediate_sizes!r}; {_REEXPORT}.")
    if len(sizes) != num_hidden_layers:
        raise FlapConfigError(f"{where}: text_config.intermediate_sizes has {len(sizes)} widths for "
                              f"{num_hidden_layers} decoder layers; {_REEXPORT}.")
    return sizes


def check_config(config: Mapping[str, Any], where: str = "config.json") -> list[int] | None:
    """The widths of a pruned checkpoint's config.json dict, or None for an unpruned one.

    Raises:
        FlapConfigError: a pruned config with bad widths or without the plugin's architecture.
    """
    if not is_flap_pruned(config):
        return None
    architectures = list(config.get("architectures") or ())
    if architectures != [ARCHITECTURE]:
        raise FlapConfigError(f"{where} says flap_pruned but its architectures are {architectures}: set "
                              f'"architectures": ["{ARCHITECTURE}"] so vLLM serves it with the FLAP plugin.')
    text = config.get("text_config") or {}
    return flap_widths(text.get("num_hidden_layers", -1), text.get("intermediate_sizes"), where)
