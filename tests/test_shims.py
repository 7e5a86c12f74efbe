"""The two install-time shims for the CPU build of vLLM do their job in the installed venv."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_torchvision_imports_beside_cpu_torch_and_hook_is_one_shot():
    proc = _python(
        "import sys, _torchvision_cpu_shim as s\n"
        "assert s._HOOK in sys.meta_path, 'the .pth file did not install the hook'\n"
        "import torchvision, torch\n"
        "assert s._HOOK not in sys.meta_path, 'the hook must remove itself'\n"
        "print(torch.ops.torchvision.nms.default._schema)\n"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torchvision::nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor" in proc.stdout


def test_transformers_gemma4_image_processor_imports():
    # The import that breaks vLLM's Gemma 4 path without the shim.
    proc = _python("from transformers.models.gemma4 import Gemma4ImageProcessor; print('ok')")
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_define_missing_schemas_does_nothing_when_compiled_ops_load(monkeypatch):
    import _torchvision_cpu_shim as shim

    monkeypatch.setattr(shim, "_compiled_ops_load", lambda: True)
    assert shim.define_missing_schemas() == []


def test_vllm_cli_finds_its_version():
    from pathlib import Path

    vllm = Path(sys.executable).with_name("vllm")
    if not vllm.exists():
        pytest.skip("no vllm console script in this environment")
    proc = subprocess.run([str(vllm), "--version"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("0.32.0+cpu")
