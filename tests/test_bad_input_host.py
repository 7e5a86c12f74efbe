"""Bad input from the machine and the model folder: port in use, disk space, shipped code, secrets, cache."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import sys
from pathlib import Path

import pytest

from harness.config.schema import compose
from tests.test_bad_input import _copy_model, _edit_config, _preflight, _refusal, int4_checkpoint  # noqa: F401


def test_port_in_use_is_refused(tmp_path):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        message = _refusal(tmp_path, f"serve.port={port}")
    assert f"serve.port={port}" in message and "already in use" in message and "serve.port=0" in message
    _preflight(tmp_path, f"serve.port={port}")  # free again: accepted


def test_checkpoint_estimate_matches_real_builds(tiny_model_dir, int4_checkpoint):
    from compress.configs import config_from_name
    from harness.build.disk import SIDE_FILES_MARGIN_BYTES, estimate_checkpoint_bytes

    estimate = estimate_checkpoint_bytes(tiny_model_dir, config_from_name("w4a16_rtn")) - SIDE_FILES_MARGIN_BYTES
    actual = sum(p.stat().st_size for p in int4_checkpoint.glob("*.safetensors"))
    assert estimate == pytest.approx(actual, rel=0.02)


def test_no_disk_space_for_the_checkpoint_is_refused(tmp_path, tiny_model_dir):
    """A real (sparse) extra shard whose tensor is twice the free space of the cache disk."""
    folder = _copy_model(tiny_model_dir, tmp_path / "model")
    numel = shutil.disk_usage(tmp_path).free // 2  # F32: 4 bytes each, so 2x the free space
    header = json.dumps({"extra.weight": {"dtype": "F32", "shape": [numel], "data_offsets": [0, numel * 4]}}).encode()
    with (folder / "model-extra.safetensors").open("wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + numel * 4)  # sparse: no block is written
    message = _refusal(tmp_path, "compress=fp8_dynamic", f"model.path={folder}")
    assert "GiB free" in message and "set cache_dir" in message


def _with_plugin(src: Path, dst: Path) -> Path:
    folder = _copy_model(src, dst)
    (folder / "plugin").mkdir()
    (folder / "plugin" / "__init__.py").write_text("raise SystemExit('model-folder code was imported')\n")
    return folder


def test_code_in_model_folder_on_pythonpath_is_refused_without_opt_in(tmp_path, tiny_model_dir):
    folder = _with_plugin(tiny_model_dir, tmp_path / "model")
    message = _refusal(tmp_path, f"model.path={folder}", f"+serve.env.PYTHONPATH={folder}/plugin")
    assert "plugin/__init__.py" in message and "serve.trust_remote_code=true" in message
    _preflight(tmp_path, f"model.path={folder}", f"+serve.env.PYTHONPATH={folder}/plugin",
               "serve.trust_remote_code=true")  # opted in by name: accepted


def test_code_in_model_folder_is_named_and_left_unimported(tmp_path, tiny_model_dir, caplog):
    folder = _with_plugin(tiny_model_dir, tmp_path / "model")
    _edit_config(folder, lambda c: c.update(auto_map={"AutoConfig": "plugin.Config"}))
    with caplog.at_level("WARNING"):
        _preflight(tmp_path, f"model.path={folder}")
    assert "plugin" not in sys.modules
    (note,) = [r.getMessage() for r in caplog.records if "ships code" in r.getMessage()]
    assert "auto_map" in note and "not imported" in note and "serve.trust_remote_code=true" in note


def test_secrets_are_redacted_from_the_recorded_config():
    from harness.record.result import config_dict

    run = compose(["+variant=bf16", "serve.api_key=sk-do-not-store", "+serve.env.HF_TOKEN=hf_do_not_store",
                   "+serve.env.VLLM_LOGGING_LEVEL=DEBUG"])
    text = json.dumps(config_dict(run))
    assert "do-not-store" not in text and "do_not_store" not in text
    assert config_dict(run)["serve"]["env"]["VLLM_LOGGING_LEVEL"] == "DEBUG"  # ordinary settings kept


def test_damaged_cached_build_is_refused_before_serving(tmp_path, tiny_model_dir):
    from compress import compress_checkpoint
    from compress.configs import config_from_name, config_to_dict
    from harness.build.variant import cache_key

    config = config_from_name("fp8_dynamic")
    key = cache_key(tiny_model_dir, {"scheme": "fp8_dynamic", **config_to_dict(config)})
    cached = tmp_path / "cache" / f"fp8_dynamic-{key}"
    compress_checkpoint(tiny_model_dir, cached, config)
    shard = next(cached.glob("*.safetensors"))
    with shard.open("r+b") as handle:
        handle.truncate(shard.stat().st_size // 2)
    with pytest.raises(Exception) as info:  # noqa: PT011 - checked by name below
        _preflight(tmp_path, "compress=fp8_dynamic")
    assert type(info.value).__name__ == "BuildError"
    message = str(info.value)
    assert str(cached) in message and "truncated" in message and "delete the cached folder" in message
