"""The capability check refuses what a platform cannot serve, or falls back when allowed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config.schema import compose
from harness.errors import PlatformError
from harness.serve.capabilities import Platform, check_cuda_driver, check_platform, detect_platform

AVX2_CPU = Platform("cpu", frozenset({"avx2", "fma", "sse4_2"}))
AVX512_CPU = Platform("cpu", frozenset({"avx2", "avx512f", "avx512bw"}))
AMX_CPU = Platform("cpu", frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}))
L4 = Platform("cuda", frozenset(), "NVIDIA L4", (8, 9))
A100 = Platform("cuda", frozenset(), "NVIDIA A100-SXM4-80GB", (8, 0))
T4 = Platform("cuda", frozenset(), "Tesla T4", (7, 5))


def test_bf16_on_avx2_cpu_runs_eager_without_fallbacks() -> None:
    check = check_platform(compose(["+variant=bf16"]), AVX2_CPU)
    assert check.fallbacks == ()
    assert check.serve.enforce_eager is True


def test_bf16_on_gpu_keeps_cuda_graphs() -> None:
    assert check_platform(compose(["+variant=bf16"]), L4).serve.enforce_eager is False


def test_fp8_kv_cache_on_avx2_falls_back_with_reason() -> None:
    check = check_platform(compose(["+variant=fp8"]), AVX2_CPU)
    assert check.serve.kv_cache_dtype == "auto"
    fallback = {f.setting: f for f in check.fallbacks}["kv_cache_dtype"]
    assert (fallback.requested, fallback.effective) == ("fp8", "auto")
    assert "AVX-512" in fallback.reason


def test_fp8_kv_cache_without_fallback_refuses_in_one_sentence() -> None:
    run = compose(["+variant=fp8", "serve.allow_fallback=[weights]"])
    with pytest.raises(PlatformError) as err:
        check_platform(run, AVX2_CPU)
    message = str(err.value)
    assert "kv_cache_dtype" in message and "AVX-512 or AMX" in message and "allow_fallback" in message
    assert message.count(". ") == 0 and message.endswith(".")


@pytest.mark.parametrize("platform", [AVX512_CPU, AMX_CPU, L4])
def test_fp8_kv_cache_kept_where_supported(platform: Platform) -> None:
    check = check_platform(compose(["+variant=fp8"]), platform)
    assert check.serve.kv_cache_dtype == "fp8"
    assert "kv_cache_dtype" not in {f.setting for f in check.fallbacks}


@pytest.mark.parametrize("platform", [AVX2_CPU, AVX512_CPU])
def test_fp8_per_tensor_weights_on_cpu_are_built_per_channel_and_say_so(platform: Platform) -> None:
    check = check_platform(compose(["+variant=fp8"]), platform)
    assert check.compress.scheme == "fp8_dynamic"
    weights = {f.setting: f for f in check.fallbacks}["weights"]
    assert weights.requested.startswith("fp8 ") and weights.effective.startswith("fp8_dynamic ")


def test_fp8_per_tensor_weights_on_cpu_without_fallback_refuse_naming_the_fix() -> None:
    with pytest.raises(PlatformError, match=r"fp8_dynamic.*allow_fallback"):
        check_platform(compose(["+variant=fp8", "serve.allow_fallback=[kv_cache_dtype]"]), AVX2_CPU)


def test_fp8_per_tensor_weights_kept_on_gpu() -> None:
    check = check_platform(compose(["+variant=fp8"]), L4)
    assert check.compress.scheme == "fp8" and check.fallbacks == ()


@pytest.mark.parametrize("variant", ["w4a16_rtn", "w4a16_gptq", "prune_distill_w4a16"])
def test_int4_marked_unservable_on_avx2_cpu(variant: str) -> None:
    check = check_platform(compose([f"+variant={variant}"]), AVX2_CPU)
    assert "cpu_gemm_wna16" in check.unservable and "AVX-512" in check.unservable


def test_int4_accepted_on_avx512_cpu_and_ampere() -> None:
    for platform in (AVX512_CPU, A100):
        for variant in ("w4a16_rtn", "prune_distill_w4a16"):
            check = check_platform(compose([f"+variant={variant}"]), platform)
            assert check.fallbacks == () and check.unservable is None


def test_fp8_weights_need_ada_or_newer_gpu() -> None:
    with pytest.raises(PlatformError, match=r"compute capability >= 8\.9.*A100.*sm_80"):
        check_platform(compose(["+variant=fp8_dynamic"]), A100)
    check_platform(compose(["+variant=fp8_dynamic"]), L4)


def test_int8_accepted_on_cpu_and_turing() -> None:
    for platform in (AVX2_CPU, T4):
        check_platform(compose(["+variant=w8a8_int8"]), platform)


def test_cuda_graphs_on_cpu_refused_unless_fallback_allowed() -> None:
    with pytest.raises(PlatformError, match="enforce_eager"):
        check_platform(compose(["serve.enforce_eager=false"]), AVX2_CPU)
    check = check_platform(compose(["serve.enforce_eager=false", "serve.allow_fallback=[enforce_eager]"]), AVX2_CPU)
    assert check.serve.enforce_eager is True
    assert [f.setting for f in check.fallbacks] == ["enforce_eager"]


def test_check_leaves_the_requested_config_untouched() -> None:
    run = compose(["+variant=fp8"])
    check_platform(run, AVX2_CPU)
    assert run.serve.kv_cache_dtype == "fp8" and run.serve.enforce_eager is None
    assert dataclasses.is_dataclass(run)


def test_detects_this_machine_from_cpuinfo() -> None:
    platform = detect_platform()
    flags = next(
        line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
        if line.startswith("flags")
    )
    assert platform.cpu_flags == frozenset(flags)
    assert platform.avx512 == ("avx512f" in flags)


def test_fp8_weight_only_runs_on_ampere_but_not_turing() -> None:
    check_platform(compose(["+variant=fp8"]), A100)
    with pytest.raises(PlatformError, match=r"FP8 weight-only.*8\.0.*T4"):
        check_platform(compose(["+variant=fp8"]), T4)


H100 = Platform("cuda", frozenset(), "NVIDIA H100 80GB HBM3", (9, 0))


def test_fp8_kv_cache_below_sm89_falls_back_with_reason() -> None:
    check = check_platform(compose(["+variant=fp8"]), A100)  # fp8 allows the kv_cache_dtype fallback
    assert check.serve.kv_cache_dtype == "auto"
    fallback = {f.setting: f for f in check.fallbacks}["kv_cache_dtype"]
    assert (fallback.requested, fallback.effective) == ("fp8", "auto")
    assert "8.9" in fallback.reason and "sm_80" in fallback.reason


def test_fp8_kv_cache_below_sm89_without_fallback_refuses_in_one_sentence() -> None:
    with pytest.raises(PlatformError) as err:
        check_platform(compose(["+variant=fp8", "serve.allow_fallback=[weights]"]), A100)
    message = str(err.value)
    assert "serve.kv_cache_dtype=fp8" in message and "sm_80" in message and "allow_fallback" in message
    assert message.count(". ") == 0 and message.endswith(".")


@pytest.mark.parametrize("platform", [L4, H100])
def test_fp8_kv_cache_kept_from_sm89(platform: Platform) -> None:
    check = check_platform(compose(["+variant=fp8", "serve.allow_fallback=[]"]), platform)
    assert check.serve.kv_cache_dtype == "fp8" and check.fallbacks == ()


def _fake_host(driver: str = "580.65.06", cuda: int = 13000):
    from tests.fakes.fake_nvml import FakeGpu, FakeNvml, load_trace

    return FakeNvml([FakeGpu(load_trace(), name="NVIDIA A100-SXM4-80GB", capability=(8, 0),
                             uuid="GPU-aaaaaaaa-0000-0000-0000-000000000000"),
                     FakeGpu(load_trace(), name="NVIDIA L4", capability=(8, 9),
                             uuid="GPU-bbbbbbbb-0000-0000-0000-000000000000")],
                    driver_version=driver, cuda_driver_version=cuda)


@pytest.mark.parametrize(("visible", "name", "uuid"), [
    (None, "NVIDIA A100-SXM4-80GB", "GPU-aaaaaaaa-0000-0000-0000-000000000000"),  # unset: GPU 0, tensor-parallel 1
    ("1", "NVIDIA L4", "GPU-bbbbbbbb-0000-0000-0000-000000000000"),  # an index is NVML's (PCI bus order)
    ("GPU-bbbbbbbb-0000-0000-0000-000000000000", "NVIDIA L4", "GPU-bbbbbbbb-0000-0000-0000-000000000000"),
])
def test_platform_is_the_gpu_the_server_will_use_named_by_uuid(monkeypatch: pytest.MonkeyPatch, visible, name,
                                                               uuid) -> None:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    fake = _fake_host()
    platform = detect_platform(nvml=fake)
    assert (platform.device, platform.gpu_name, platform.gpus) == ("cuda", name, (uuid,))
    assert platform.compute_capability == ((8, 0) if "A100" in name else (8, 9))
    assert (platform.driver, platform.driver_cuda) == ("580.65.06", (13, 0))
    assert fake.inits == 0


@pytest.mark.parametrize("visible", ["", "-1"])
def test_hidden_gpus_leave_a_cpu_platform(monkeypatch: pytest.MonkeyPatch, visible: str) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert detect_platform(nvml=_fake_host()).device == "cpu"


def test_torch_for_a_newer_cuda_than_the_driver_is_refused_naming_the_driver_branch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    old_driver = detect_platform(nvml=_fake_host(driver="560.35.03", cuda=12060))
    with pytest.raises(PlatformError) as err:
        check_cuda_driver(old_driver, torch_cuda="13.0")
    message = str(err.value)
    assert "CUDA 13.0" in message and "560.35.03" in message and "12.6" in message and "R580 or newer" in message
    assert message.count(". ") == 0 and message.endswith(".")
    check_cuda_driver(old_driver, torch_cuda="12.8")  # minor version compatibility: 12.x runs on a 12.6 driver
    check_cuda_driver(detect_platform(nvml=_fake_host()), torch_cuda="13.0")  # R580 supports CUDA 13.0
    check_cuda_driver(AVX2_CPU, torch_cuda="13.0")  # a CPU server has no driver to check


def test_preflight_platform_check_runs_the_driver_check_first(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.serve.capabilities as capabilities

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(capabilities, "torch_cuda_version", lambda: "13.0")
    with pytest.raises(PlatformError, match="R580"):
        check_platform(compose(["+variant=bf16"]), detect_platform(nvml=_fake_host(driver="535.104.05", cuda=12020)))


def test_torch_cuda_version_is_read_without_importing_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from harness.serve.capabilities import torch_cuda_version as v; "
            "print(repr(v()), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import torch

    assert out.stdout.split() == [repr(torch.version.cuda), "False"]
