"""Builds the tiny Gemma 4 vision-language model: config, random weights, tokenizer, processor.

The structure is E4B's, scaled down: sliding and full attention layers (full layers last,
with a larger head size, as E4B's 256/512), KV sharing in the last layer, per-layer
embeddings (PLE) with per_layer_input_gate / per_layer_projection, a vision tower with 2D
pooling, and tied embeddings. Every decoder linear has in-features a multiple of 128 so int4
group-128 and FP8 schemes apply to all of them, PLE linears included.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness.replay.workloads.synthetic import FAMILIES, INSTRUCTION
from harness.tiny.tokenizer import SPECIAL, build_tokenizer

MAX_SOFT_TOKENS = 70  # the default image budget (Gemma 4's smallest): 384x384 pixels, 64 soft tokens
# The budgets the tiny model is trained at (Gemma 4's 70, 140 and 280): a budget sweep on the
# embedded default then shows the real trade-off instead of an untrained input size.
TRAINED_BUDGETS = (70, 140, 280)
# Gemma 4's own generation_config.json sampling (the competition's settings): a request that
# leaves sampling out (sampling.send=messages) is decoded the way the real model's would be.
GENERATION_DEFAULTS = {"do_sample": True, "temperature": 1.0, "top_p": 0.95, "top_k": 64}


@dataclass(frozen=True)
class TinySpec:
    """Sizes of the tiny model (see the module docstring for what mirrors E4B)."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 1
    head_dim: int = 32
    global_head_dim: int = 64
    intermediate: int = 256
    ple_dim: int = 128
    kv_shared_layers: int = 1
    sliding_window: int = 64
    vocab: int = 512
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 256
    max_position: int = 4096
    # E4B pools 3x3 patches (630 patches at the 70-token budget); 2x2 pooling gives the same
    # 64 soft tokens from 256 patches, which makes training on 2 CPU cores about twice as fast.
    pooling: int = 2


def corpus() -> list[str]:
    """Texts the tokenizer is trained on: every question, answer and template word."""
    texts = [f"{f.question} {INSTRUCTION}" for f in FAMILIES.values()]
    texts += [a for f in FAMILIES.values() for a in f.answers] * 20
    texts += ["user\n", "model\n", "system\n", "You are a helpful assistant."]
    return texts


def build_config(spec: TinySpec, tokenizer):
    """Gemma4Config for `spec`, with token ids taken from `tokenizer`."""
    from transformers import Gemma4Config

    ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in SPECIAL.items()}
    # Full attention in the last two layers, sliding before: with the last layer sharing KV, the
    # last layer that owns its KV is full and the one before it sliding, the layout llama.cpp's
    # Gemma 4 KV sharing needs (E4B's own 5:1 pattern satisfies it too).
    layer_types = ["sliding_attention"] * (spec.layers - 2) + ["full_attention"] * 2
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        head_dim=spec.head_dim,
        global_head_dim=spec.global_head_dim,
        layer_types=layer_types,
        sliding_window=spec.sliding_window,
        num_kv_shared_layers=spec.kv_shared_layers,
        hidden_size_per_layer_input=spec.ple_dim,
        vocab_size_per_layer_input=len(tokenizer),
        max_position_embeddings=spec.max_position,
        pad_token_id=ids["pad_token"],
        eos_token_id=[ids["eos_token"], ids["eot_token"]],
        bos_token_id=ids["bos_token"],
        final_logit_softcapping=30.0,
    )
    vision = dict(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        num_key_value_heads=spec.vision_heads,
        head_dim=spec.vision_hidden // spec.vision_heads,
        position_embedding_size=64,
        pooling_kernel_size=spec.pooling,
        patch_size=16,
    )
    return Gemma4Config(
        text_config=text,
        vision_config=vision,
        audio_config=None,
        boi_token_id=ids["boi_token"],
        eoi_token_id=ids["eoi_token"],
        image_token_id=ids["image_token"],
        video_token_id=ids["video_token"],
        boa_token_id=ids["boa_token"],
        eoa_token_index=ids["eoa_token"],
        audio_token_id=ids["audio_token"],
        tie_word_embeddings=True,
    )


def build_processor(tokenizer, spec: TinySpec):
    """A Gemma4Processor at the smallest image budget, carrying the chat template."""
    from transformers import Gemma4Processor
    from transformers.models.gemma4 import (
        Gemma4AudioFeatureExtractor,
        Gemma4ImageProcessor,
        Gemma4VideoProcessor,
    )

    return Gemma4Processor(
        feature_extractor=Gemma4AudioFeatureExtractor(),
        image_processor=Gemma4ImageProcessor(max_soft_tokens=MAX_SOFT_TOKENS, pooling_kernel_size=spec.pooling),
        tokenizer=tokenizer,
        video_processor=Gemma4VideoProcessor(),
        chat_template=tokenizer.chat_template,
        image_seq_length=MAX_SOFT_TOKENS,
    )


def save_model(model, processor, out_dir: Path) -> Path:
    """Saves weights, tokenizer, processor and the vision budget vLLM reads from config.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config.update(**GENERATION_DEFAULTS)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    _keep_turn_tokens_special(out_dir / "tokenizer_config.json")
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    # vLLM sizes the image token budget from vision_config.default_output_length;
    # transformers' config class has no such field, so it is added to the saved file.
    cfg["vision_config"]["default_output_length"] = MAX_SOFT_TOKENS
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out_dir


def _keep_turn_tokens_special(path: Path) -> None:
    """Lists the turn tokens among the extra special tokens, which Gemma4Processor.save_pretrained
    (transformers 5.19) leaves out: llama.cpp's converter would store them as plain text, and
    llama-server would then split every ``<|turn>`` of the chat template into six pieces."""
    config = json.loads(path.read_text())
    extra = list(config.get("extra_special_tokens") or [])
    extra += [SPECIAL[key] for key in ("sot_token", "eot_token") if SPECIAL[key] not in extra]
    config["extra_special_tokens"] = extra
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def init_model(spec: TinySpec, tokenizer, seed: int):
    """A randomly initialised Gemma4ForConditionalGeneration (float32)."""
    import torch
    from transformers import Gemma4ForConditionalGeneration

    torch.manual_seed(seed)
    model = Gemma4ForConditionalGeneration(build_config(spec, tokenizer)).float()
    return model


def build_random_tiny(out_dir: Path, seed: int = 0, spec: TinySpec = TinySpec()) -> Path:
    """Writes an untrained tiny model folder (for tests that need any valid checkpoint)."""
    tokenizer = build_tokenizer(corpus(), spec.vocab)
    processor = build_processor(tokenizer, spec)
    model = init_model(spec, tokenizer, seed)
    return save_model(model, processor, Path(out_dir))
