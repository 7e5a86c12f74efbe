"""A submission is built for the judges' GPU, not for the CPU host that measured it, and checked for that GPU's vLLM.

The CPU-made run is recorded as the pipeline records it (the harness's own writers, its platform
check on an AVX2 CPU, the build it serves there, a real modeled meter), so these tests need no
server: a CPU host cannot serve per-tensor FP8 weights, so the folder is validated statically.
tests/test_submit_fp8_run.py makes the same submission from a run served by real vLLM.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import time
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml

from compress.schemes import LayerSpec
from harness.build.headers import read_tensors
from harness.build.variant import build_variant
from harness.config.schema import compose, group_options
from harness.energy.modeled import ModeledMeter
from harness.record.provenance import collect
from harness.record.redact import redact_serve
from harness.record.result import (
    RunResult,
    append_row,
    config_dict,
    flat_row,
    jsonable,
    new_run_dir,
    write_jsonl_atomic,
    write_result,
)
from harness.replay.client import RequestRecord
from harness.replay.stats import summarize_requests
from harness.serve.capabilities import Platform, check_platform, detect_platform
from harness.serve.vllm import vllm_args, write_vllm_config
from harness.submit.check import HOST_ONLY, check_folder
from harness.submit.launch import cli_flags
from harness.submit.target import host_launch, load_target
from tests.procs import run_cli
from tests.real_runs import REPO

AVX2_CPU = Platform("cpu", frozenset({"avx2", "fma", "sse4_2"}))
AVX512_CPU = Platform("cpu", frozenset({"avx2", "avx512f", "avx512bw"}))
L4 = Platform("cuda", frozenset(), "NVIDIA L4", (8, 9))
A100 = Platform("cuda", frozenset(), "NVIDIA A100-SXM4-80GB", (8, 0))
# The tiny model's decoder linears (4 layers; the KV-shared last layer has no k/v projections).
QUANTIZED_MODULES = 26
GPU_HOST = detect_platform().device == "cuda"


def _record_cpu_run(results: Path, overrides: list[str], platform: Platform) -> Path:
    """One ok run of the variant recorded as the pipeline records it, served as `platform` would serve it."""
    run_cfg = compose(overrides)
    check = check_platform(run_cfg, platform)
    model_dir = build_variant(run_cfg, check.compress, log=lambda _: None)
    started = datetime.now(timezone.utc)
    paths = new_run_dir(results, run_cfg.name, started)
    write_vllm_config(paths.root / "vllm_config.yaml",
                      vllm_args(model_dir, check.serve, served_model_name="model", dtype=run_cfg.model.dtype))
    with ModeledMeter(hz=50) as meter:
        times = []
        for _ in range(4):
            time.sleep(0.01)  # spaces the samples so each has a power reading; no timing is asserted
            times.append(meter.sample_now())
        records = [RequestRecord(id=str(i), task="colour", prompt_tokens=20, output_tokens=2, ttft_ms=5.0,
                                 latency_ms=10.0, itl_ms=(1.0,), output_text="red", finish_reason="stop", error=None,
                                 start_s=times[i + 1], end_s=times[i + 2]) for i in range(2)]
        idle, suite = meter.energy_between(times[0], times[1], name="idle"), meter.energy_between(
            times[1], times[-1], name="suite")
    write_jsonl_atomic(paths.requests, [asdict(r) for r in records])
    latency, throughput, counts = summarize_requests(records, suite.duration_s)
    serve = {"effective": redact_serve(jsonable(asdict(check.serve))), "platform": platform.describe(),
             "fallbacks": [asdict(f) for f in check.fallbacks], "model_dir": str(model_dir)}
    result = RunResult(run_id=paths.root.name, variant=run_cfg.name, status="ok", started_at=started.isoformat(),
                       ended_at=(started + timedelta(seconds=5)).isoformat(), config=config_dict(run_cfg),
                       provenance=collect(), serve=serve, energy={"source": meter.source,
                                                                  "windows": [idle.to_dict(), suite.to_dict()]},
                       quality={"metric": "exact", "overall": 1.0, "overall_micro": 1.0, "per_task": {"colour": 1.0}},
                       latency=latency, throughput=throughput, counts=counts)
    write_result(paths.root, result)
    append_row(results / "runs.jsonl", flat_row(result))
    return paths.root


@pytest.fixture(scope="module")
def cpu_fp8(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """An fp8 run recorded on an AVX2 CPU (per-channel FP8 weights with dynamic activations, eager, KV cache
    auto), and the CLI's submission of it: (results folder, submission folder, overrides)."""
    results = tmp_path_factory.mktemp("results")
    overrides = ["+variant=fp8", f"results_dir={results}", f"cache_dir={results / 'cache'}"]
    _record_cpu_run(results, overrides, AVX2_CPU)
    return results, results / "submission", overrides


@pytest.fixture(scope="module")
def submitted(cpu_fp8):
    if GPU_HOST:
        pytest.skip("a GPU host serves the folder (a launch): tests/test_submit_fp8_run.py covers it")
    results, out, overrides = cpu_fp8
    proc = run_cli([sys.executable, "-m", "harness.submit", *overrides, "--out", str(out)], cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_fp8_from_a_cpu_run_has_per_tensor_fp8_weights(submitted):
    out, _ = submitted
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    (group,) = qc["config_groups"].values()
    assert (group["weights"]["type"], group["weights"]["strategy"], group["input_activations"]) == (
        "float", "tensor", None)
    tensors = read_tensors(out)
    scales = {n: t for n, t in tensors.items() if n.endswith(".weight_scale")}
    assert len(scales) == QUANTIZED_MODULES
    for name, scale in scales.items():
        assert scale.shape == (1,), name  # one scale per tensor, not one per output channel
        assert tensors[name.replace("weight_scale", "weight")].dtype == "F8_E4M3"
    assert not any(n.endswith(".input_scale") for n in tensors)


def test_fp8_from_a_cpu_run_serves_with_the_targets_settings(cpu_fp8, submitted):
    results, _, _ = cpu_fp8
    out, _ = submitted
    run_cfg = yaml.safe_load(next((results / "runs").glob("*-fp8/vllm_config.yaml")).read_text())
    assert run_cfg["enforce-eager"] is True and run_cfg["kv-cache-dtype"] == "auto"  # what the CPU served
    cfg = yaml.safe_load((out / "vllm_config.yaml").read_text())
    assert cfg.get("enforce-eager") in (None, False)  # CUDA graphs on
    assert cfg["kv-cache-dtype"] == "fp8" and cfg["model"] == "." and cfg["max-model-len"] == 4096
    assert set(cfg) <= load_target().keys


def test_card_says_which_validation_ran_and_that_the_weights_were_not_measured(submitted):
    out, stdout = submitted
    card = (out / "README.md").read_text()
    validation = card.split("## Validation")[1].split("## Measured results")[0]
    assert "static, for NVIDIA L4 (sm_89) with vLLM 0.33.0 (CUDA)" in validation
    assert "bench/records/vllm_0.33.0_serve_keys.json" in validation
    assert f"of {QUANTIZED_MODULES} quantized modules checked" in validation
    assert "not launched on this host" in validation and "per-tensor" in validation
    built = card.split("## Built for")[1].split("## Validation")[0]
    assert "the measured run served fp8_dynamic" in built and "not measured on this host" in built
    assert '`enforce-eager: true`' in built and '`kv-cache-dtype: "auto"`' in built
    assert "ready to upload" in stdout and "validation: static, for NVIDIA L4" in stdout


@pytest.mark.parametrize("key", sorted(HOST_ONLY))
def test_a_host_only_setting_in_vllm_config_is_refused(submitted, tmp_path, key):
    folder = _copy_with(submitted[0], tmp_path, {key: HOST_ONLY[key][0]})
    problems = check_folder(folder, launch=False).problems
    assert [p.file for p in problems] == ["vllm_config.yaml"]
    assert f"`{key}: " in problems[0].message and "build host" in problems[0].message


def test_a_key_the_gpu_vllm_does_not_accept_is_refused(submitted, tmp_path):
    folder = _copy_with(submitted[0], tmp_path, {"device": "cpu", "max_num_seqs": 8})  # vLLM reads max_num_seqs
    problems = check_folder(folder, launch=False).problems
    assert [p.message.split(" is not")[0] for p in problems] == ["key 'device'"]
    assert "vLLM 0.33.0" in problems[0].message and "vllm_0.33.0_serve_keys.json" in problems[0].message


def test_the_cpu_fallback_checkpoint_is_refused_as_not_the_variants_weights(cpu_fp8, submitted, tmp_path):
    results, _, _ = cpu_fp8
    folder = tmp_path / "fallback"
    shutil.copytree(submitted[0], folder)
    fallback = next((results / "cache").glob("fp8_dynamic-*"))
    for name in ("config.json", "model.safetensors"):
        shutil.copy(fallback / name, folder / name)
    problems = check_folder(folder, launch=False, expect=LayerSpec("fp8_tensor")).problems
    assert [p.file for p in problems] == ["config.json"]
    message = problems[0].message
    assert "holds per-channel FP8 weights" in message and "not the variant's per-tensor FP8 weights" in message


def test_a_scheme_without_a_kernel_on_the_target_gpu_is_refused(cpu_fp8, submitted, tmp_path):
    results, _, _ = cpu_fp8
    folder = tmp_path / "w8a8"
    shutil.copytree(submitted[0], folder)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(next((results / "cache").glob("fp8_dynamic-*")) / name, folder / name)
    assert check_folder(folder, launch=False).problems == ()  # the L4 has FP8 W8A8 kernels
    a100 = dataclasses.replace(load_target(), platform=A100)
    problems = check_folder(folder, launch=False, target=a100).problems
    assert [p.file for p in problems] == ["config.json"] and "compute capability >= 8.9" in problems[0].message


def test_scales_that_do_not_match_the_scheme_are_refused(submitted, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "scales"
    shutil.copytree(submitted[0], folder)
    tensors = load_file(folder / "model.safetensors")
    name = next(n for n in sorted(tensors) if n.endswith("mlp.down_proj.weight_scale"))
    rows = tensors[name.replace("weight_scale", "weight")].shape[0]
    tensors[name] = tensors[name].expand(rows).reshape(rows, 1).clone()  # per-channel scales, per-tensor config
    save_file(tensors, folder / "model.safetensors")
    problems = check_folder(folder, launch=False).problems
    assert [p.file for p in problems] == ["*.safetensors"]
    assert name in problems[0].message and f"[{rows}, 1]" in problems[0].message and "[1]" in problems[0].message


@pytest.mark.parametrize("variant", group_options("variant"))
def test_every_variant_is_written_with_keys_the_gpu_vllm_accepts(variant):
    check = check_platform(compose([f"+variant={variant}", "model=gemma4_e4b"]), L4)  # a model with every budget
    keys = set(vllm_args(".", check.serve, served_model_name="model"))
    assert keys <= load_target().keys, keys - load_target().keys
    assert check.serve.enforce_eager is False


def test_host_flags_are_this_hosts_settings_only():
    bf16, fp8 = compose(["+variant=bf16"]), compose(["+variant=fp8"])
    assert host_launch(bf16, check_platform(bf16, L4), AVX512_CPU).flags == {"enforce-eager": True}
    assert host_launch(bf16, check_platform(bf16, L4), L4).flags == {}
    assert (host_launch(fp8, check_platform(fp8, L4), L4).flags, host_launch(fp8, check_platform(fp8, L4), L4).reason) \
        == ({}, None)
    for cpu in (AVX2_CPU, AVX512_CPU):  # no CPU kernel for per-tensor FP8 weights: nothing to launch
        plan = host_launch(fp8, check_platform(fp8, L4), cpu)
        assert plan.reason and "per-tensor" in plan.reason and plan.flags == {}
    assert cli_flags({"enforce-eager": True, "kv-cache-dtype": "auto", "enable-prefix-caching": False,
                      "limit-mm-per-prompt": {"image": 1}}) == [
        "--enforce-eager", "--kv-cache-dtype", "auto", "--no-enable-prefix-caching",
        "--limit-mm-per-prompt", '{"image": 1}']


def _copy_with(folder: Path, tmp_path: Path, settings: dict) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    cfg = yaml.safe_load((copy / "vllm_config.yaml").read_text())
    (copy / "vllm_config.yaml").write_text(yaml.safe_dump({**cfg, **settings}, sort_keys=False))
    return copy


def test_a_chat_template_file_of_this_machine_travels_in_the_folder(tmp_path):
    """The judges run `vllm serve` inside the folder: the template is copied there and named relative to it."""
    from harness.submit.prepare import place_chat_template

    run = compose(["+variant=bf16_brevity"])
    cfg = vllm_args(".", check_platform(run, L4).serve, served_model_name="model")
    assert Path(cfg["chat-template"]).is_absolute()
    place_chat_template(cfg, tmp_path)
    assert cfg["chat-template"] == "brevity.jinja"
    assert (tmp_path / "brevity.jinja").read_text() == Path(run.serve.chat_template).read_text()


def test_card_flags_a_generation_config_that_differs_from_the_base_model(submitted, tmp_path):
    from harness.submit.prepare import changes_for_judges

    out, _ = submitted
    card = (out / "README.md").read_text()
    section = card.split("## Generation config and chat template against the base model")[1].split("\n## ")[0]
    assert "Unchanged" in section  # fp8 keeps the base model's generation config and template
    folder = tmp_path / "changed"
    shutil.copytree(out, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**gen, "max_new_tokens": 16}))
    changes = changes_for_judges(compose(["+variant=fp8"]), folder, yaml.safe_load(
        (folder / "vllm_config.yaml").read_text()))
    assert len(changes) == 1 and "max_new_tokens" in changes[0] and "16" in changes[0]
