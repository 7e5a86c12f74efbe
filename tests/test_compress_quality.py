"""The tiny model's compressed variants: vLLM serves their layers with the intended kernels, and
quality floors (served accuracy, output KL vs dense) hold."""

from __future__ import annotations

import re

import pytest
import torch

from harness.replay.workloads.base import load_samples

N_SAMPLES = 40  # ten per task family
SERVED = ("fp8_dynamic", "w8a8_int8")  # the schemes CPU vLLM has kernels for
ALL_SCHEMES = ("fp8_dynamic", "w8a8_int8", "w4a16_rtn", "w4a16_gptq")
ACCURACY_SLACK = 0.05  # "a few points": two answers of forty
# The compressed-tensors scheme vLLM must pick for every quantized layer (its DEBUG log names it).
EXPECTED_SCHEME = {"fp8_dynamic": "CompressedTensorsW8A8Fp8", "w8a8_int8": "CompressedTensorsW8A8Int8"}


@pytest.fixture(scope="module")
def samples():
    return load_samples(0, "test", N_SAMPLES)


def _replay_greedy(target, samples):
    from harness.config.schema import compose
    from harness.replay.client import replay

    run = compose(["sampling=greedy"])
    return replay(target, samples, run.workload, run.sampling, show_progress=False).records


@pytest.fixture(scope="module")
def served_records(served_tiny, checkpoints, samples, tmp_path_factory):
    """Scheme ("bf16" for the dense model) -> greedy replay records through real vLLM.

    The dense model is the session's shared server; each compressed variant gets one
    server start here, served with the same settings and dtype as the dense one, at DEBUG
    log level so that ``served_logs`` can show which kernel served each layer.
    """
    from harness.config.schema import compose
    from harness.serve.vllm import VllmServer

    run = compose(["serve.startup_timeout_s=300", "+serve.env.VLLM_LOGGING_LEVEL=DEBUG"])
    records = {"bf16": _replay_greedy(served_tiny.target, samples)}
    for scheme in SERVED:
        with VllmServer(checkpoints[scheme], run.serve, tmp_path_factory.mktemp(f"served-{scheme}"),
                        served_model_name=run.model.name, dtype=run.model.dtype) as server:
            records[scheme] = _replay_greedy(server.target, samples)
        records[f"{scheme}.log"] = server.log_path.read_text(errors="replace")
    return records


@pytest.mark.server
@pytest.mark.parametrize("scheme", SERVED)
def test_vllm_serves_every_quantized_layer_with_the_scheme_kernel(served_records, checkpoints, scheme):
    log = served_records[f"{scheme}.log"]
    served = set(re.findall(rf"Using scheme: {EXPECTED_SCHEME[scheme]} for \S+\.layers\.(\d+\.\S+)", log))
    assert served == _fused_names(checkpoints[scheme])


def _fused_names(folder) -> set[str]:
    """'<layer>.<module>' of each quantized linear as vLLM names it after fusing shards."""
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = {k.split(".layers.", 1)[1].rsplit(".", 1)[0] for k in f.keys() if k.endswith(".weight_scale")}
    return {_vllm_name(n, names) for n in names}


def _vllm_name(name: str, names: set[str]) -> str:
    parent, leaf = name.rsplit(".", 1)
    # q/k/v fuse into qkv_proj; a KV-shared layer has q_proj alone, which stays q_proj.
    if leaf in ("q_proj", "k_proj", "v_proj") and f"{parent}.k_proj" in names:
        return f"{parent}.qkv_proj"
    if leaf in ("gate_proj", "up_proj"):
        return f"{parent}.gate_up_proj"
    return name


@pytest.mark.server
@pytest.mark.parametrize("scheme", SERVED)
def test_served_variant_accuracy_is_within_a_few_points_of_bf16(served_records, samples, scheme):
    from harness.score.quality import score

    dense, variant = score(samples, served_records["bf16"]), score(samples, served_records[scheme])
    assert variant.counts["error"] == 0 and variant.counts["truncated"] == 0
    assert variant.overall >= dense.overall - ACCURACY_SLACK, (variant.per_task, dense.per_task)


@pytest.mark.server
def test_offline_dense_answers_match_vllm_greedy_answers(served_records, tiny_model_dir, samples):
    from harness.score.offline import generate_records, load_model

    offline = generate_records(*load_model(tiny_model_dir, "bfloat16"), samples)
    served = {r.id: r.output_text.strip() for r in served_records["bf16"]}
    agree = sum(served[r.id] == r.output_text.strip() for r in offline)
    assert agree >= N_SAMPLES - 2, [(r.id, r.output_text, served[r.id]) for r in offline
                                    if served[r.id] != r.output_text.strip()]


@pytest.fixture(scope="module")
def kl_by_scheme(tiny_model_dir, checkpoints, samples):
    """Scheme -> mean KL(dense || variant) in nats over the suite prompts' text positions."""
    from harness.score.offline import kl_per_position, load_model, next_token_log_probs

    dense = next_token_log_probs(*load_model(tiny_model_dir), samples)
    out = {}
    for scheme, folder in checkpoints.items():
        variant = next_token_log_probs(*load_model(folder), samples)
        out[scheme] = torch.cat([kl_per_position(p, q) for p, q in zip(dense, variant)]).mean().item()
    return out


@pytest.mark.parametrize("scheme", ALL_SCHEMES)
def test_every_scheme_changes_outputs_but_stays_close_to_dense(kl_by_scheme, scheme):
    # A zero would mean the checkpoint was loaded dense; 0.1 nats per token is far above
    # what an 8- or 4-bit scheme costs a working model (int4 RTN here: about 0.05).
    assert 0.0 < kl_by_scheme[scheme] < 0.1, kl_by_scheme


def test_gptq_output_kl_is_below_rtn(kl_by_scheme):
    assert kl_by_scheme["w4a16_gptq"] < kl_by_scheme["w4a16_rtn"], kl_by_scheme


@pytest.mark.parametrize("scheme", ["fp8_dynamic", "w8a8_int8"])
def test_eight_bit_schemes_stay_closer_to_dense_than_int4_rtn(kl_by_scheme, scheme):
    assert kl_by_scheme[scheme] < kl_by_scheme["w4a16_rtn"], kl_by_scheme
