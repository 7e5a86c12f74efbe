"""A small byte-level BPE tokenizer with Gemma 4's special tokens and a Gemma-style chat template."""

from __future__ import annotations

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


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512):
    """Trains a byte-level BPE on `corpus` and wraps it as a transformers fast tokenizer.

    Args:
        corpus: texts the model will see (questions, answers, template words); with a small
            vocabulary every frequent word, and so every answer word, becomes one token.
        vocab_size: target size including the special tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus), trainer=trainer)
    named = {k: v for k, v in SPECIAL.items() if k not in ("video_token", "sot_token", "eot_token")}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named)
    fast.add_special_tokens(
        {"additional_special_tokens": [SPECIAL["video_token"], SPECIAL["sot_token"], SPECIAL["eot_token"]]}
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast
