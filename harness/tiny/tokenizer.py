"""A small Gemma-style tokenizer: byte-fallback BPE over "▁"-marked spaces, Gemma 4's special tokens, its chat turns.

Gemma's own tokenizer.json is a BPE with ``byte_fallback`` (any character outside the
vocabulary becomes its UTF-8 bytes, tokens ``<0x00>``..``<0xFF>``), a normalizer that
turns every space into "▁", no word splitting, and a ``Sequence`` decoder (▁ back to
space, bytes fused back to text). llama.cpp's converter reads exactly that shape
(``gguf.LlamaHfVocab``; its Gemma 4 pre-tokenizer splits on newlines only), so the tiny
model's vocabulary converts to GGUF like the real model's. The only departure: this
one's merges are learned from the synthetic suite's few words.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

# Gemma 4's control tokens, by role. The ids of these (and of pad/eos/bos/unk, which come
# first so they get ids 0-3 as in Gemma) are written into the model config.
SPECIAL = {
    "pad_token": "<pad>",
    "eos_token": "<eos>",
    "bos_token": "<bos>",
    "unk_token": "<unk>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
    "video_token": "<|video|>",
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
}

# Gemma-style turns; image parts render as the image token, which the processor (and vLLM)
# expands to <|image> + N soft tokens + <image|>. `enable_thinking` is accepted and ignored:
# the tiny model never thinks, but the real one's template takes the same kwarg.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] in ('image', 'image_url') %}{{ '<|image|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<turn|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|turn>model\n' }}{% endif %}"
)


# The byte tokens byte fallback spells unknown characters with, in Gemma's spelling.
BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """Trains a Gemma-style byte-fallback BPE on `corpus` as a transformers fast tokenizer.

    Ids: the special tokens first (pad 0, eos 1, bos 2, unk 3, as in Gemma), then the 256
    byte tokens, then the learned characters and merges.

    Args:
        corpus: texts the model will see (questions, answers, template words); with a small
            vocabulary every frequent word, and so every answer word, becomes one token.
        vocab_size: total size: special tokens, byte tokens and learned tokens.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    fixed = [*SPECIAL.values(), *BYTE_TOKENS]
    if vocab_size <= len(fixed):
        raise ValueError(f"vocab_size {vocab_size} leaves no room beyond {len(fixed)} special and byte tokens")
    normalizer = normalizers.Replace(" ", "▁")
    pre_tokenizer = pre_tokenizers.Split(Regex("\n+"), behavior="isolated")  # llama.cpp's Gemma 4 split
    learner = Tokenizer(models.BPE())
    learner.normalizer, learner.pre_tokenizer = normalizer, pre_tokenizer
    learner.train_from_iterator(list(corpus), trainer=trainers.BpeTrainer(
        vocab_size=vocab_size - len(fixed), show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    vocab: dict[str, int] = {}
    for token in [*fixed, *sorted(learned["vocab"], key=learned["vocab"].get)]:
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=SPECIAL["unk_token"], byte_fallback=True))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    named = {k: v for k, v in SPECIAL.items() if k not in ("video_token", "sot_token", "eot_token")}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.add_special_tokens(
        {"additional_special_tokens": [SPECIAL["video_token"], SPECIAL["sot_token"], SPECIAL["eot_token"]]}
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
