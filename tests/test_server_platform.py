"""The capability check refuses what a platform cannot serve, or falls back when allowed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from harness.config.schema import compose
from harness.errors import PlatformError
from harness.serve.capabilities import Platform, check_platform, detect_platform

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
