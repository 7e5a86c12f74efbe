"""The embedded default: the synthetic suite and the trained tiny Gemma 4, as a user relies on them."""

from __future__ import annotations

import json

import pytest

from harness.replay.workloads.base import build_dataset, load_samples
from harness.replay.workloads.synthetic import FAMILIES
from harness.tiny import DEFAULT_MODEL_DIR


def test_suite_is_deterministic_balanced_and_splits_are_disjoint():
    a, b = load_samples(7, "test", 40), load_samples(7, "test", 40)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    assert [s.reference for s in a] == [s.reference for s in b]
    assert {s.task: sum(x.task == s.task for x in a) for s in a} == {t: 10 for t in FAMILIES}
    train = {s.image.tobytes() for s in load_samples(7, "train", 200)}
    assert not train & {s.image.tobytes() for s in load_samples(7, "test", 200)}
    assert all(s.reference in FAMILIES[s.task].answers for s in a)


def test_suite_is_a_hugging_face_dataset_with_train_and_test():
    ds = build_dataset(seed=0, n_train=8, n_test=4)
    assert set(ds) == {"train", "test"} and ds["test"].num_rows == 4
    row = ds["test"][0]
    assert row["image"].size == (192, 192) and row["answer"] in FAMILIES[row["task"]].answers
    assert row["chance"] == pytest.approx(FAMILIES[row["task"]].chance)


def test_unknown_split_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="train, test"):
        load_samples(0, "validation", 4)


def test_tiny_model_has_e4b_structure():
    cfg = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    text = cfg["text_config"]
    assert {"sliding_attention", "full_attention"} <= set(text["layer_types"])
    assert text["num_kv_shared_layers"] >= 1 and text["hidden_size_per_layer_input"] > 0
    assert cfg["tie_word_embeddings"] and cfg["vision_config"]["default_output_length"] == 70
    from safetensors import safe_open

    with safe_open(str(DEFAULT_MODEL_DIR / "model.safetensors"), "pt") as f:
        names = list(f.keys())
        decoder = [n for n in names if ".language_model.layers." in n and n.endswith("proj.weight")]
        assert decoder and all(f.get_slice(n).get_shape()[1] % 128 == 0 for n in decoder)
    assert any("per_layer_input_gate" in n for n in names) and any("vision_tower" in n for n in names)
    last = text["num_hidden_layers"] - 1
    assert not any(f"layers.{last}.self_attn.k_proj" in n for n in names)  # KV-shared: no own k/v


def test_tiny_model_is_shaped_the_way_llama_cpp_converts_and_serves_gemma_4():
    """What llama.cpp's Gemma 4 converter and KV sharing require (README, "The tiny default model")."""
    from harness.tiny import trained_budgets

    text = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())["text_config"]
    types, shared = text["layer_types"], text["num_kv_shared_layers"]
    owners = types[: len(types) - shared]  # the layers that keep their own KV cache
    assert owners[-1] == "full_attention" and owners[-2] == "sliding_attention"
    tokenizer = json.loads((DEFAULT_MODEL_DIR / "tokenizer.json").read_text())
    assert tokenizer["model"]["type"] == "BPE" and tokenizer["model"]["byte_fallback"] is True
    assert tokenizer["decoder"]["type"] == "Sequence"
    assert {f"<0x{b:02X}>" for b in range(256)} <= tokenizer["model"]["vocab"].keys()
    assert set(trained_budgets()) >= {70, 140, 280}


@pytest.mark.server
def test_served_tiny_model_answers_suite_items(served_tiny):
    from harness.config.schema import compose
    from harness.replay.client import replay
    from harness.score.quality import score

    run = compose(["sampling=greedy", "sampling.max_tokens=8", "workload.warmup_requests=0"])
    samples = load_samples(0, "test", 16)
    played = replay(served_tiny.target, samples, run.workload, run.sampling, show_progress=False)
    report = score(samples, played.records)
    # Measured on 400 test items: greedy accuracy 0.99 (bench/tiny_accuracy.py).
    assert report.overall >= 0.85, report.per_task
    assert all(acc >= 0.5 for acc in report.per_task.values()), report.per_task
