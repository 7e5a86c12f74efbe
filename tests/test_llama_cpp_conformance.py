"""Conformance of llama.cpp with transformers on the tiny model's GGUFs, on the real llama-server.

The prompt a GGUF model receives must be the HF tokenizer's and chat template's, token for
token; gguf_bf16's greedy answers must be transformers'; the quantized GGUFs must keep a
measured quality floor. What llama.cpp does differently by design (its image budget rule, its
image attention on text widths other than Gemma 4 E2B/E4B) is named where it is tested:
harness/serve/llama_cpp_conformance.py. Measurements: bench/records/gguf_quality.txt.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from harness.build.calibration import suite_source
from harness.config.schema import compose
from harness.replay.client import chat_messages
from harness.replay.workloads import load_workload
from harness.score.quality import score
from harness.serve.llama_cpp import LlamaServer
from harness.serve.llama_cpp_conformance import (
    budget_options,
    hf_image_attention,
    hf_image_tokens,
    hf_prompt,
    hf_text_tokens,
    llama_cpp_image_attention,
    llama_image_tokens,
    llama_text_tokens,
    prompt_tokens,
    replay_greedy,
    transformers_greedy,
)

pytestmark = pytest.mark.server

GREEDY_ITEMS = 100  # suite items whose greedy answers are compared (25 per family)
QUALITY_ITEMS = 200
# Largest drop of suite quality (macro over 4 families of 50: one answer is 0.005) each quantized
# GGUF may show against gguf_bf16 served the same way. Measured (bench/records/gguf_quality.txt):
# Q8_0 0.000, Q4_K_M -0.005..+0.005, Q4_0 0.000..0.015; the floors leave 6 (Q8_0) and 10 (Q4) answers of margin.
MAX_DROP = {"gguf_q8_0": 0.03, "gguf_q4_k_m": 0.05, "gguf_q4_0": 0.05}
SCHEMES = ("gguf_bf16", *MAX_DROP)


def _run(limit: int, *overrides: str):
    return compose(["+variant=gguf_bf16", "sampling=greedy", "sampling.top_k=1", f"workload.limit={limit}",
                    *overrides])


@contextmanager
def _serve(folder: Path, run_dir: Path, llama_config: dict[str, int] | None = None) -> Iterator[LlamaServer]:
    """llama-server on a GGUF folder, the judges' launch plus ``llama_config`` (llama-server options)."""
    options = [f"+engine.llama_config.{name}={value}" for name, value in (llama_config or {}).items()]
    run = _run(1, *options)
    with LlamaServer(folder, run.serve, run.engine, run_dir, served_model_name="judged", probe=False) as server:
        yield server


@pytest.fixture(scope="module")
def ggufs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scheme -> GGUF variant folder of the tiny model, made once by `compress`."""
    from compress import compress_checkpoint
    from compress.configs import config_from_name

    root = tmp_path_factory.mktemp("gguf")
    return {s: compress_checkpoint(tiny_model_dir, root / s, config_from_name(s), suite_source()) for s in SCHEMES}


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def hf_config(tiny_model_dir: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def judged(ggufs, tmp_path_factory) -> Iterator[LlamaServer]:
    """gguf_bf16 on llama-server launched as the judges launch the submission: the model files and its llama config."""
    with _serve(ggufs["gguf_bf16"], tmp_path_factory.mktemp("judged")) as server:
        yield server


@pytest.fixture(scope="module")
def matched(ggufs, processor, hf_config, tmp_path_factory) -> Iterator[LlamaServer]:
    """gguf_bf16 on llama-server with the image bounds that give the HF processor's soft-token count."""
    sample = load_workload(_run(1).workload)[0]
    budget = processor.image_processor.max_soft_tokens
    count = hf_image_tokens(processor, sample.image, hf_config.image_token_id)
    with _serve(ggufs["gguf_bf16"], tmp_path_factory.mktemp("matched"), budget_options(count, budget)) as server:
        yield server


def test_the_prompt_text_is_the_hf_tokenizers_token_for_token(judged, processor, hf_config):
    # One item per family: the BOS, the turn tokens, the question and the generation prompt, around the image.
    for sample in load_workload(_run(4).workload):
        hf = hf_text_tokens(processor, hf_prompt(processor, sample), hf_config.image_token_id)
        assert llama_text_tokens(judged.target, chat_messages(sample)) == hf, sample.id


def test_with_the_hf_image_budget_the_whole_prompt_has_the_hf_token_count(matched, processor, hf_config):
    for sample in load_workload(_run(4).workload):
        hf_ids = processor(text=[hf_prompt(processor, sample)], images=[[sample.image]])["input_ids"][0]
        assert llama_image_tokens(matched.target, sample) == hf_image_tokens(
            processor, sample.image, hf_config.image_token_id)
        assert prompt_tokens(matched.target, chat_messages(sample)) == len(hf_ids), sample.id


# llama.cpp's gemma4v preprocessing ignores the processor's max_soft_tokens (the mmproj does not carry it):
# by default it grows an image to at least 70 and shrinks it to at most 1120 soft tokens, sides rounded up
# to 32 px (clip.cpp set_limit_image_tokens(70, 1120)), so the suite's 192 px image would be 288 px = 81
# soft tokens where the processor at max_soft_tokens=70 gives 64 (256 px). The tiny model's GGUFs therefore
# ship --image-min-tokens/--image-max-tokens in their llama config (conf/model/tiny.yaml), and the judges'
# launch of such a submission must see the processor's count.
def test_the_judges_launch_sees_the_image_at_the_hf_processors_budget(judged, processor, hf_config):
    sample = load_workload(_run(1).workload)[0]
    assert llama_image_tokens(judged.target, sample) == hf_image_tokens(
        processor, sample.image, hf_config.image_token_id)


@pytest.fixture(scope="module")
def llama_answers(matched) -> list[str]:
    """gguf_bf16's greedy answers through llama-server at the HF image budget."""
    run = _run(GREEDY_ITEMS)
    records = replay_greedy(matched.target, load_workload(run.workload), run)
    assert [r.error for r in records if r.error] == []
    return [r.output_text.strip() for r in records]


def _transformers_answers(model_dir: Path, image_attention: str | None) -> list[str]:
    run = _run(GREEDY_ITEMS)
    records = transformers_greedy(model_dir, load_workload(run.workload), run.sampling.max_tokens,
                                  image_attention=image_attention)
    return [r.output_text.strip() for r in records]


def _differences(ours: list[str], theirs: list[str]) -> list[tuple[int, str, str]]:
    return [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]


def test_greedy_answers_equal_transformers_attending_as_llama_cpp_does(llama_answers, tiny_model_dir, hf_config):
    # Same weights, prompt, image size and attention: every greedy answer must be the same.
    attention = llama_cpp_image_attention(hf_config.get_text_config().hidden_size)
    assert _differences(llama_answers, _transformers_answers(tiny_model_dir, attention)) == []


def test_greedy_answers_equal_transformers_as_the_checkpoint_configures_it(llama_answers, tiny_model_dir,
                                                                             hf_config, request):
    text = hf_config.get_text_config()
    ours, theirs = llama_cpp_image_attention(text.hidden_size), hf_image_attention(text)
    if ours != theirs:
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            f"llama.cpp attends over a Gemma 4 image {ours}ly for a {text.hidden_size}-wide text model "
            "(mtmd_decode_use_non_causal decides by width: causal only for E2B/E4B's 1536/2560) while this "
            f"checkpoint is {theirs} (use_bidirectional_attention={text.use_bidirectional_attention!r}), "
            "a field the GGUF does not carry")))
    assert _differences(llama_answers, _transformers_answers(tiny_model_dir, None)) == []


def _quality(server: LlamaServer) -> float:
    run = _run(QUALITY_ITEMS)
    samples = load_workload(run.workload)
    records = replay_greedy(server.target, samples, run)
    return score(samples, records, metric=run.workload.metric).overall


def test_quantized_ggufs_stay_within_their_quality_floor_of_gguf_bf16(ggufs, judged, tmp_path):
    # All served the judges' way, so only the quantization differs from gguf_bf16.
    reference = _quality(judged)
    found = {}
    for scheme in MAX_DROP:
        with _serve(ggufs[scheme], tmp_path / scheme) as server:
            found[scheme] = _quality(server)
    assert {s: q for s, q in found.items() if q < reference - MAX_DROP[s]} == {}, (reference, found)
