"""vllm_config.yaml holds exactly the serve settings, in keys vLLM's own parser accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.config.schema import compose
from harness.serve.capabilities import Platform, check_platform
from harness.serve.vllm import vllm_args, write_vllm_config

AVX2_CPU = Platform("cpu", frozenset({"avx2"}))
L4 = Platform("cuda", frozenset(), "NVIDIA L4", (8, 9))


@pytest.fixture(scope="module")
def vllm_parser():
    """vLLM's own `vllm serve` / api_server argument parser."""
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return make_arg_parser(FlexibleArgumentParser())


def _written(tmp_path: Path, overrides: list[str], platform: Platform) -> tuple[dict, Path]:
    run = compose(overrides)
    serve = check_platform(run, platform).serve
    args = vllm_args("/models/tiny", serve, served_model_name=run.model.name, dtype=run.model.dtype)
    return args, write_vllm_config(tmp_path / "vllm_config.yaml", args)


def test_fp8_config_round_trips_through_vllm_parser(tmp_path: Path, vllm_parser) -> None:
    _, path = _written(tmp_path, ["+variant=fp8"], L4)
    ns = vllm_parser.parse_args(["--config", str(path)])
    assert ns.model == "/models/tiny"
    assert ns.served_model_name == ["tiny-gemma4"]
    assert ns.dtype == "bfloat16"
    assert (ns.max_model_len, ns.kv_cache_dtype, ns.max_num_seqs) == (4096, "fp8", 32)
    assert ns.enable_chunked_prefill is True and ns.enable_prefix_caching is True
    assert ns.enforce_eager is False
    assert ns.limit_mm_per_prompt == {"image": 1, "audio": 0, "video": 0}
    assert ns.default_chat_template_kwargs == {"enable_thinking": False}
    assert ns.trust_remote_code is False


def test_image_budget_reaches_mm_processor_kwargs(tmp_path: Path, vllm_parser) -> None:
    _, path = _written(tmp_path, ["+variant=w4a16_rtn_b560", "model=gemma4_e4b"], L4)
    ns = vllm_parser.parse_args(["--config", str(path)])
    assert ns.mm_processor_kwargs == {"max_soft_tokens": 560}


def test_cpu_config_is_eager(tmp_path: Path, vllm_parser) -> None:
    _, path = _written(tmp_path, ["+variant=bf16"], AVX2_CPU)
    assert vllm_parser.parse_args(["--config", str(path)]).enforce_eager is True


def test_every_key_is_an_exact_vllm_option(tmp_path: Path, vllm_parser) -> None:
    # argparse accepts unambiguous prefixes; demand the full option name instead.
    for overrides in (["+variant=fp8"], ["+variant=w4a16_rtn", "serve.trust_remote_code=true"]):
        args, _ = _written(tmp_path, overrides, L4)
        missing = [k for k in args if f"--{k}" not in vllm_parser._option_string_actions]
        assert missing == []


def test_secrets_and_machine_settings_stay_out(tmp_path: Path) -> None:
    args, path = _written(tmp_path, ["serve.api_key=sekrit-123", "serve.port=8123"], AVX2_CPU)
    text = path.read_text()
    assert "sekrit-123" not in text and "8123" not in text and "host" not in text
    assert yaml.safe_load(text) == args


def test_trust_remote_code_only_when_opted_in(tmp_path: Path) -> None:
    args, _ = _written(tmp_path, [], AVX2_CPU)
    assert "trust-remote-code" not in args
    args, _ = _written(tmp_path, ["serve.trust_remote_code=true"], AVX2_CPU)
    assert args["trust-remote-code"] is True


def test_length_levers_reach_vllm_as_chat_template_and_generation_override(tmp_path: Path, vllm_parser) -> None:
    from harness.config.schema import TEMPLATES_DIR

    _, path = _written(tmp_path, ["+variant=bf16_max_new16", "serve.chat_template=brevity"], L4)
    ns = vllm_parser.parse_args(["--config", str(path)])
    assert ns.chat_template == str(TEMPLATES_DIR / "brevity.jinja")  # absolute: the server runs in the run dir
    assert ns.override_generation_config == {"max_new_tokens": 16}
    args, _ = _written(tmp_path, ["+variant=bf16"], L4)
    assert "chat-template" not in args and "override-generation-config" not in args  # the checkpoint's own


def test_cuda_server_env_binds_the_gpu_by_uuid_and_needs_no_compiler() -> None:
    from harness.serve.vllm import server_env

    gpu = "GPU-bbbbbbbb-0000-0000-0000-000000000000"
    platform = Platform("cuda", frozenset(), "NVIDIA L4", (8, 9), gpus=(gpu,))
    env = server_env(compose([]).serve, platform, environ={"CUDA_VISIBLE_DEVICES": "1", "PATH": "/usr/bin"})
    assert env["CUDA_VISIBLE_DEVICES"] == gpu and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["VLLM_USE_FLASHINFER_SAMPLER"] == "0"  # no FlashInfer JIT (nvcc, ninja) at engine warm-up
    assert env["PATH"] == "/usr/bin" and "VLLM_CPU_KVCACHE_SPACE" not in env
    mine = compose(["+serve.env.VLLM_USE_FLASHINFER_SAMPLER=1"]).serve
    assert server_env(mine, platform, environ={})["VLLM_USE_FLASHINFER_SAMPLER"] == "1"  # serve.env wins


def test_cpu_server_env_sets_no_cuda_variables() -> None:
    from harness.serve.vllm import server_env

    env = server_env(compose([]).serve, AVX2_CPU, environ={})
    assert env == {"VLLM_CPU_KVCACHE_SPACE": "1"}
