"""vLLM general plugin serving FLAP-pruned Gemma 4 checkpoints (per-layer MLP widths, down_proj bias).

vLLM calls :func:`register` in each of its processes (API server, engine core, worker)
through the ``vllm.general_plugins`` entry point declared in pyproject.toml. It only adds
the architecture name pruned checkpoints declare, so stock Gemma 4 checkpoints are served
by vLLM's own class, untouched. Importing this package imports neither torch nor vLLM.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from compress.vllm_plugin.widths import ARCHITECTURE, FlapConfigError, flap_widths, is_flap_pruned

ENTRY_POINT_GROUP = "vllm.general_plugins"
PLUGIN_NAME = "flap_gemma4"  # the entry point's name: what VLLM_PLUGINS must list when it is set
_MODEL_CLASS = "compress.vllm_plugin.model:FlapGemma4ForConditionalGeneration"
_STOCK_ARCHITECTURE = "Gemma4ForConditionalGeneration"

__all__ = [
    "ARCHITECTURE", "ENTRY_POINT_GROUP", "FlapConfigError", "PLUGIN_NAME", "entry_point_installed",
    "flap_widths", "is_flap_pruned", "plugin_allowed", "register",
]


def register() -> None:
    """Adds FlapGemma4ForConditionalGeneration to vLLM's model registry (idempotent).

    The class is registered as a lazy "module:Class" string: the model code (and torch)
    loads only in a process that builds a pruned model. vLLM's per-architecture config hook
    for Gemma 4 (attention backend choice for its mixed head sizes on GPU) is reused too.
    """
    from vllm import ModelRegistry
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    ModelRegistry.register_model(ARCHITECTURE, _MODEL_CLASS)
    if _STOCK_ARCHITECTURE in MODELS_CONFIG_MAP:
        MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, MODELS_CONFIG_MAP[_STOCK_ARCHITECTURE])


def entry_point_installed() -> bool:
    """Whether this environment's metadata declares the plugin's vLLM entry point."""
    from importlib.metadata import entry_points

    return any(ep.name == PLUGIN_NAME and ep.value.startswith(__name__)
               for ep in entry_points(group=ENTRY_POINT_GROUP))


def plugin_allowed(env: Mapping[str, str] | None = None) -> bool:
    """Whether VLLM_PLUGINS in ``env`` (default: this process's) lets vLLM load the plugin.

    vLLM loads every installed general plugin when VLLM_PLUGINS is unset, and only the
    comma-separated names it lists when it is set (compared as vLLM does: no spaces stripped,
    an empty value lists none).
    """
    value = (os.environ if env is None else env).get("VLLM_PLUGINS")
    return value is None or PLUGIN_NAME in value.split(",")
