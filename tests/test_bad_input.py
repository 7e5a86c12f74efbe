"""Bad input: malformed configs and checkpoints are refused before any build or server, in one line."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from harness.config.schema import compose
from harness.errors import HarnessError
from harness.preflight import preflight
from tests.procs import run_cli

REPO = Path(__file__).resolve().parents[1]
SHARD = "model.safetensors"


def _preflight(tmp: Path, *overrides: str):
    run = compose(["+variant=bf16", f"results_dir={tmp / 'results'}", f"cache_dir={tmp / 'cache'}", *overrides])
    return preflight(run)


def _refusal(tmp: Path, *overrides: str) -> str:
    """The one-line message preflight (or composition) refuses ``overrides`` with."""
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is checked below, by name as the CLI does
        _preflight(tmp, *overrides)
    message = str(info.value)
    assert isinstance(info.value, HarnessError), f"{type(info.value).__name__}: {message}"
    assert "\n" not in message.strip(), message
    assert not (tmp / "results").exists() and not (tmp / "cache").exists()
    return message


# (overrides, words the message must hold: the key or problem, and the fix)
BAD_CONFIGS = [
    (["workload.limit=-5"], ["workload.limit", "> 0"]),
    (["workload.concurrency=0"], ["workload.concurrency", "> 0"]),
    (["energy.idle_s=-1"], ["energy.idle_s", ">= 0"]),
    (["sampling.temperature=-0.5"], ["sampling.temperature", ">= 0"]),
    (["sampling.top_p=0"], ["sampling.top_p", "(0, 1]"]),
    (["sampling.top_p=1.5"], ["sampling.top_p", "(0, 1]"]),
    (["sampling.top_k=-7"], ["sampling.top_k", "positive"]),
    (["sampling.max_tokens=0"], ["sampling.max_tokens", "> 0"]),
    (["serve.max_model_len=100"], ["serve.max_model_len", "raise serve.max_model_len to >= 128"]),
    (["serve.max_model_len=400", "serve.max_soft_tokens=560", "model=gemma4_e4b"], ["serve.max_model_len", ">= 624"]),
    (["serve.port=70000"], ["serve.port", "65535"]),
    (["serve.max_num_seqs=0"], ["serve.max_num_seqs", ">= 1"]),
    (["serve.gpu_memory_utilization=1.5"], ["serve.gpu_memory_utilization", "(0, 1]"]),
    (["serve.max_soft_tokens=100"], ["serve.max_soft_tokens", "70"]),
    (["serve.limit_mm_per_prompt.image=0"], ["limit_mm_per_prompt.image", ">= 1"]),
    (["energy.cpu_active_w=5"], ["energy.cpu_active_w", "energy.cpu_idle_w"]),
    (["quality.threshold=0"], ["quality.threshold", "(0, 1]"]),
    (["quality.confidence=1"], ["quality.confidence", "(0, 1)"]),
    (["workload.max_error_rate=2"], ["workload.max_error_rate", "[0, 1]"]),
    (["workload.mode=burst"], ["workload.mode", "sequential"]),
    (["serve.kv_cache_dtype=int3"], ["serve.kv_cache_dtype", "fp8"]),
    (["+serve.bogus=1"], ["bogus", "accepts"]),
    (["workload.limit=many"], ["workload.limit", "int"]),
    (["model.path=/nonexistent/model"], ["does not exist", "set model.path"]),
    (["sampling.send=all"], ["sampling.send", "explicit, messages"]),
    (["sampling.send=messages", "sampling.ignore_eos=true"], ["sampling.ignore_eos", "sampling.send=explicit"]),
    (["serve.chat_template=/nonexistent/t.jinja"], ["serve.chat_template", "no such file", "brevity"]),
    (["+serve.generation_config.seed=1"], ["serve.generation_config.seed", "remove the key"]),
    (["+serve.generation_config.max_new_tokens=-1"], ["max_new_tokens=-1", "positive integer"]),
]


@pytest.mark.parametrize(("overrides", "words"), BAD_CONFIGS, ids=[" ".join(o) for o, _ in BAD_CONFIGS])
def test_bad_config_is_refused_in_one_line(tmp_path, overrides, words):
    message = _refusal(tmp_path, *overrides)
    assert all(w in message for w in words), message


# ---- malformed checkpoint folders, made from the tiny model ----

def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_config(folder: Path, change) -> None:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def _truncate(folder: Path, keep_bytes: int) -> None:
    with (folder / SHARD).open("r+b") as handle:
        handle.truncate(keep_bytes)


def _overwrite(folder: Path, offset: int, data: bytes) -> None:
    with (folder / SHARD).open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)


def _header_length(folder: Path) -> int:
    with (folder / SHARD).open("rb") as handle:
        return struct.unpack("<Q", handle.read(8))[0]


def _drop_tensor(folder: Path, suffix: str) -> None:
    """Rewrites the shard without the first tensor whose name ends with ``suffix``."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / SHARD)
    victim = next(n for n in sorted(tensors) if n.endswith(suffix))
    del tensors[victim]
    save_file(tensors, folder / SHARD, metadata={"format": "pt"})


def _remove_vision(c):
    c.pop("vision_config")


def _text_only_arch(c):
    c["architectures"] = ["Gemma4ForCausalLM"]


def _wider_hidden(c):
    c["text_config"]["hidden_size"] *= 2


def _more_layers(c):
    c["text_config"]["num_hidden_layers"] += 1


DENSE_MUTATIONS = {
    "no config.json": (lambda f: (f / "config.json").unlink(), "no config.json"),
    "config.json not JSON": (lambda f: (f / "config.json").write_text("{not json"), "not valid JSON"),
    "no vision_config": (lambda f: _edit_config(f, _remove_vision), "not a vision-language model"),
    "text-only architecture": (lambda f: _edit_config(f, _text_only_arch), "not a vision-language model"),
    "no weights": (lambda f: (f / SHARD).unlink(), "has no weights"),
    "only .bin weights": (lambda f: (f / SHARD).rename(f / "pytorch_model.bin"), "safe_serialization"),
    "truncated data": (lambda f: _truncate(f, (f / SHARD).stat().st_size - 1000), "is truncated"),
    "truncated to 4 bytes": (lambda f: _truncate(f, 4), "is truncated"),
    "garbage header length": (lambda f: _overwrite(f, 0, b"\xff" * 8), "corrupt safetensors header"),
    "garbage header text": (lambda f: _overwrite(f, 8, b"\x00\xfe{{"), "garbage safetensors header"),
    "trailing junk": (lambda f: (f / SHARD).open("ab").write(b"junk"), "longer than its header says"),
    "hidden_size contradicts tensors": (lambda f: _edit_config(f, _wider_hidden), "hidden_size"),
    "num_hidden_layers contradicts tensors": (lambda f: _edit_config(f, _more_layers), "num_hidden_layers"),
    "index names a missing shard": (
        lambda f: (f / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {"a.weight": "gone.safetensors"}})),
        "lacks the shard gone.safetensors"),
}


@pytest.mark.parametrize("name", list(DENSE_MUTATIONS))
def test_malformed_checkpoint_is_refused_before_any_build(tmp_path, tiny_model_dir, name):
    mutate, words = DENSE_MUTATIONS[name]
    folder = _copy_model(tiny_model_dir, tmp_path / "model")
    mutate(folder)
    message = _refusal(tmp_path, f"model.path={folder}")
    assert words in message and str(folder) in message, message
    fixes = ("re-export", "set model.path", "point model.path", "safe_serialization")
    assert any(fix in message for fix in fixes), message


@pytest.mark.parametrize("seed", range(12))
def test_randomly_damaged_shard_is_refused(tmp_path, tiny_model_dir, seed):
    """Seeded random damage: a cut anywhere, random bytes over the length prefix, or junk appended."""
    rng = random.Random(seed)
    folder = _copy_model(tiny_model_dir, tmp_path / "model")
    size = (folder / SHARD).stat().st_size
    kind = ("cut", "prefix", "append")[seed % 3]
    if kind == "cut":
        _truncate(folder, rng.randrange(0, size))
    elif kind == "prefix":
        _overwrite(folder, 0, bytes(rng.randrange(256) for _ in range(8)))
    else:
        (folder / SHARD).open("ab").write(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))))
    message = _refusal(tmp_path, f"model.path={folder}")
    assert SHARD in message and "re-export" in message, message


@pytest.fixture(scope="module")
def int4_checkpoint(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real w4a16_rtn (pack-quantized) checkpoint of the tiny model."""
    import torch

    from compress import compress_checkpoint
    from compress.configs import config_from_name

    torch.set_num_threads(1)
    return compress_checkpoint(tiny_model_dir, tmp_path_factory.mktemp("ct") / "w4a16_rtn",
                               config_from_name("w4a16_rtn"))


def _set_format(fmt: str):
    def change(c):
        c["quantization_config"]["format"] = fmt
    return change


COMPRESSED_MUTATIONS = {
    "weight_packed missing": (lambda f: _drop_tensor(f, ".weight_packed"), "weight_packed"),
    "weight_scale missing": (lambda f: _drop_tensor(f, ".weight_scale"), "has no weight_scale"),
    "weight_shape missing": (lambda f: _drop_tensor(f, ".weight_shape"), "no weight_shape"),
    "format says fp8, tensors are int4": (lambda f: _edit_config(f, _set_format("float-quantized")), "F8_E4M3"),
}


@pytest.mark.parametrize("name", list(COMPRESSED_MUTATIONS))
def test_mismatched_compressed_checkpoint_is_refused(tmp_path, int4_checkpoint, name):
    mutate, words = COMPRESSED_MUTATIONS[name]
    folder = _copy_model(int4_checkpoint, tmp_path / "model")
    mutate(folder)
    message = _refusal(tmp_path, f"model.path={folder}")
    assert words in message and "re-export" in message, message


def test_quantization_config_on_dense_weights_is_refused(tmp_path, tiny_model_dir, int4_checkpoint):
    folder = _copy_model(tiny_model_dir, tmp_path / "model")
    qc = json.loads((int4_checkpoint / "config.json").read_text())["quantization_config"]
    _edit_config(folder, lambda c: c.update(quantization_config=qc))
    assert "no tensor has a weight_scale" in _refusal(tmp_path, f"model.path={folder}")


def test_intact_checkpoints_pass(tmp_path, tiny_model_dir, int4_checkpoint):
    from harness.build.headers import check_headers

    assert len(check_headers(tiny_model_dir)) > 50
    assert any(n.endswith(".weight_packed") for n in check_headers(int4_checkpoint))


# ---- the CLI: exit 2, one line, no traceback, results untouched ----

def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture()
def existing_results(tmp_path: Path) -> Path:
    """A results folder that already holds a run, which no refused command may touch."""
    results = tmp_path / "results"
    (results / "runs" / "20260101T000000Z-bf16").mkdir(parents=True)
    (results / "runs" / "20260101T000000Z-bf16" / "result.json").write_text('{"status": "ok"}\n')
    (results / "runs.jsonl").write_text('{"run_id": "20260101T000000Z-bf16", "status": "ok"}\n')
    return results


def _cli(results: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli([sys.executable, "-m", "harness", *args, f"results_dir={results}",
                    f"cache_dir={results.parent / 'cache'}", f"hydra.run.dir={results.parent / 'hydra'}"],
                   cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300)


def _truncated_copy(src: Path, dst: Path) -> Path:
    folder = _copy_model(src, dst)
    _truncate(folder, 1000)
    return folder


@pytest.mark.parametrize("case", ["unknown variant", "top_p", "truncated checkpoint", "port in use"])
def test_cli_refuses_in_one_line_and_leaves_results_alone(tmp_path, tiny_model_dir, existing_results, case):
    before = _tree(existing_results)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        args = {"unknown variant": ["+variant=fp9"], "top_p": ["+variant=bf16", "sampling.top_p=2"],
                "truncated checkpoint": ["+variant=fp8_dynamic",
                                         f"model.path={_truncated_copy(tiny_model_dir, tmp_path / 'model')}"],
                "port in use": ["+variant=bf16", f"serve.port={listener.getsockname()[1]}"]}[case]
        proc = _cli(existing_results, *args)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, output
    assert "Traceback" not in output and len(output.splitlines()) == 1 and output.startswith("error:"), output
    assert _tree(existing_results) == before
    assert not (tmp_path / "cache").exists()

