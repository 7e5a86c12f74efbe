"""Offline (transformers, decompressed) evaluation of compressed checkpoints of the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress import config_from_name
from harness.replay.workloads.base import load_samples
from harness.score.offline import OfflineEvalError, evaluate_offline, load_model

N_SAMPLES = 40  # ten per task family
LAYER = "model.language_model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def samples():
    return load_samples(0, "test", N_SAMPLES)


@pytest.fixture(scope="module")
def dense_report(tiny_model_dir, samples):
    return evaluate_offline(tiny_model_dir, samples)


@pytest.mark.parametrize("scheme", ["w4a16_rtn", "w8a8_int8"])
def test_loaded_weights_are_the_checkpoints_dequantized_values(checkpoints, tiny_model_dir, scheme):
    from safetensors.torch import load_file

    from compress.codecs import decode
    from compress.plan import resolve

    model, _ = load_model(checkpoints[scheme])
    dense, _ = load_model(tiny_model_dir)
    stored = load_file(str(checkpoints[scheme] / "model.safetensors"))
    tensors = {k[len(LAYER) + 1:]: v for k, v in stored.items() if k.startswith(LAYER + ".")}
    expected = decode(tensors, resolve(LAYER, config_from_name(scheme)), torch.float32)
    loaded = model.get_submodule(LAYER).weight
    assert torch.equal(loaded, expected)
    assert not torch.equal(loaded, dense.get_submodule(LAYER).weight)


def test_dense_tiny_model_answers_the_suite_offline(dense_report):
    assert dense_report.counts["scored"] == N_SAMPLES
    assert dense_report.overall >= 0.9  # the committed model is trained to ~0.99 greedy


@pytest.mark.parametrize("scheme", ["w4a16_rtn", "w4a16_gptq"])
def test_int4_checkpoints_score_close_to_dense_offline(checkpoints, samples, dense_report, scheme):
    report = evaluate_offline(checkpoints[scheme], samples)
    assert report.counts["truncated"] == 0 and report.counts["empty"] == 0
    assert report.overall >= dense_report.overall - 0.05, (report.per_task, dense_report.per_task)


def test_cli_prints_the_score_and_kl(checkpoints, tiny_model_dir):
    run = subprocess.run([sys.executable, "-m", "harness.offline_eval", str(checkpoints["w4a16_rtn"]), "--limit", "4",
                          "--reference", str(tiny_model_dir)], capture_output=True, text=True, timeout=300, check=True)
    summary = json.loads(run.stdout[run.stdout.index("{"):])
    assert summary["samples"] == 4 and summary["counts"]["items"] == 4
    assert 0.0 <= summary["overall"] <= 1.0 and summary["mean_token_kl_nats"] > 0.0


def test_folder_without_config_is_refused_before_loading(tmp_path):
    with pytest.raises(OfflineEvalError, match="no config.json"):
        load_model(tmp_path)


def test_other_quantization_formats_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "gptq"}}))
    with pytest.raises(OfflineEvalError, match="only compressed-tensors"):
        load_model(Path(tmp_path))
