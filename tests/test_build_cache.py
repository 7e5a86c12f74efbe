"""The build cache: real fp8_dynamic builds of the tiny model, reused, rebuilt and recovered."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.build.headers import check_headers
from harness.build.variant import build_variant
from harness.config.schema import compose

REPO = Path(__file__).resolve().parents[1]
Q_PROJ = "model.language_model.layers.0.self_attn.q_proj.weight"

torch.set_num_threads(1)


def _run(cache: Path, *overrides: str):
    return compose(["+variant=fp8_dynamic", f"cache_dir={cache}", *overrides])


def _build(cache: Path, *overrides: str, logs: list[str] | None = None) -> Path:
    return build_variant(_run(cache, *overrides), log=(logs if logs is not None else []).append)


def _state(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Inode, modification time and size of the folder and each file in it."""
    entries = [folder, *sorted(folder.iterdir())]
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in entries}


def _builds(cache: Path) -> list[str]:
    """Names of the folders in the cache (checkpoints and partial ones; files such as memos left out)."""
    return sorted(p.name for p in cache.iterdir() if p.is_dir())


def _recipe(folder: Path) -> dict:
    return json.loads((folder / "recipe.json").read_text())


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_a_second_build_with_the_same_config_reuses_the_cached_folder(tmp_path):
    cache, logs = tmp_path / "cache", []
    first = _build(cache, logs=logs)
    before = _state(first)
    second = _build(cache, logs=logs)  # composed afresh: an equal config, not the same object
    assert second == first
    assert _state(second) == before  # same folder and files: nothing was rewritten
    assert logs[0].startswith("build: compressing") and logs[1] == f"build: cached fp8_dynamic checkpoint {first}"
    assert _builds(cache) == [first.name]


def test_changing_a_compress_parameter_builds_a_new_variant_and_keeps_the_old(tmp_path):
    cache = tmp_path / "cache"
    default = _build(cache)
    before = _state(default)
    dense_qkv = _build(cache, "compress.include_qkv=false")
    assert dense_qkv != default and dense_qkv.parent == default.parent
    assert check_headers(default)[Q_PROJ].dtype == "F8_E4M3"
    assert check_headers(dense_qkv)[Q_PROJ].dtype != "F8_E4M3"  # built with the new parameter
    assert _recipe(dense_qkv)["steps"][-1]["config"]["include_qkv"] is False
    assert _state(default) == before
    assert _build(cache) == default and _state(default) == before  # going back reuses the first build


def test_a_different_base_model_builds_anew(tmp_path, tiny_model_dir):
    from compress.lineage import checkpoint_hash
    from harness.tiny.build import TinySpec, build_random_tiny

    cache = tmp_path / "cache"
    narrower = build_random_tiny(tmp_path / "narrow-tiny", seed=0, spec=TinySpec(intermediate=192))
    committed = _build(cache, f"model.path={tiny_model_dir}")
    other = _build(cache, f"model.path={narrower}")
    assert other != committed
    assert _recipe(committed)["base_model"]["sha256"] == checkpoint_hash(tiny_model_dir)
    assert _recipe(other)["base_model"]["sha256"] == checkpoint_hash(narrower)


def test_a_base_model_with_other_weights_of_the_same_shape_builds_anew(tmp_path, tiny_model_dir):
    from compress.lineage import checkpoint_hash
    from harness.tiny.build import build_random_tiny

    cache = tmp_path / "cache"
    untrained = build_random_tiny(tmp_path / "untrained-tiny", seed=1)
    assert checkpoint_hash(untrained) != checkpoint_hash(tiny_model_dir)  # really another model
    committed = _build(cache, f"model.path={tiny_model_dir}")
    other = _build(cache, f"model.path={untrained}")
    assert _recipe(other)["base_model"]["sha256"] == checkpoint_hash(untrained)
    assert other != committed


def test_a_change_to_the_compress_code_builds_anew(tmp_path, monkeypatch):
    import harness.build.variant

    cache = tmp_path / "cache"
    first = _build(cache)
    changed = tmp_path / "compress"
    shutil.copytree(harness.build.variant.COMPRESS_SRC, changed, ignore=shutil.ignore_patterns("__pycache__"))
    with (changed / "fp8.py").open("a") as handle:
        handle.write("\n# a change to the FP8 code\n")
    monkeypatch.setattr(harness.build.variant, "COMPRESS_SRC", changed)
    second = _build(cache)
    assert second != first and check_headers(second)
    assert _builds(cache) == sorted([first.name, second.name])


# A build process that dies (SIGKILL, power loss) at the call of `function` in compress/`module`.
_KILLED_BUILD = """
import os, signal, sys
from harness.build.variant import build_variant
from harness.config.schema import compose

cache, module, function = sys.argv[1:]
run = compose(["+variant=fp8_dynamic", f"cache_dir={cache}"])

def die_at(frame, event, arg):
    code = frame.f_code
    if event == "call" and code.co_name == function and code.co_filename.endswith(os.path.join("compress", module)):
        os.kill(os.getpid(), signal.SIGKILL)

sys.setprofile(die_at)
build_variant(run, log=print)
"""


@pytest.mark.parametrize(("module", "function"), [("export.py", "write_config"), ("lineage.py", "write_recipe")],
                         ids=["weights-written", "all-but-recipe"])
def test_a_build_killed_midway_is_redone_on_the_next_build(tmp_path, module, function):
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLED_BUILD, str(cache), module, function], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    (partial,) = [cache / name for name in _builds(cache)]  # what the killed build left: its partial folder
    assert partial.name.endswith(".partial") and any(partial.glob("*.safetensors"))

    logs: list[str] = []
    folder = _build(cache, logs=logs)
    assert folder.name + ".partial" == partial.name  # the same variant, built this time
    assert logs[0].startswith("build: compressing")
    assert not partial.exists() and _builds(cache) == [folder.name]
    assert check_headers(folder)[Q_PROJ].dtype == "F8_E4M3"
    assert _recipe(folder)["steps"][-1]["config"]["scheme"] == "fp8_dynamic"

    clean = _build(tmp_path / "clean-cache")
    ours, theirs = _tensors(folder), _tensors(clean)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # the same checkpoint as an uninterrupted build


def test_the_key_of_a_calibrated_build_covers_its_calibration_data(tiny_model_dir):
    from harness.build.variant import cache_key

    params = {"scheme": "w4a16_gptq", "num_samples": 8}
    assert cache_key(tiny_model_dir, params, calibration="suite-v1") == cache_key(tiny_model_dir, params,
                                                                                    calibration="suite-v1")
    assert cache_key(tiny_model_dir, params, calibration="suite-v1") != cache_key(tiny_model_dir, params,
                                                                                    calibration="suite-v2")


def test_a_large_weight_file_is_fingerprinted_by_samples_that_see_a_retrain(tmp_path):
    """Past FULL_HASH_BYTES only samples are read (a 16 GB model is checked at every run); a
    retrain changes bytes everywhere, so any sample sees it."""
    from harness.build.variant import FULL_HASH_BYTES, _weights_digest

    size = FULL_HASH_BYTES + 2**20
    paths = [tmp_path / f"{name}.safetensors" for name in ("a", "b", "c")]
    for path in paths:
        with path.open("wb") as f:
            f.truncate(size)  # sparse zeros
    with paths[2].open("r+b") as f:  # "retrained": other bytes in the middle
        f.seek(size // 2)
        f.write(b"\x01" * 2**20)
    assert _weights_digest(paths[0]) == _weights_digest(paths[1])
    assert _weights_digest(paths[0]) != _weights_digest(paths[2])
