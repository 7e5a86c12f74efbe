"""What a GGUF model receives from llama-server, set against what transformers gives the same checkpoint.

Shared by tests/test_llama_cpp_conformance.py and bench/gguf_quality.py. Three things can differ
between the engines for one chat message, and each has its probe here:

- the text tokens: llama-server renders the chat template itself (/apply-template, the image as a
  random media marker) and tokenizes each text piece around the marker (/tokenize);
- the image's soft-token count: llama.cpp's gemma4v preprocessing picks its own image size (at least
  70 and at most 1120 soft tokens, sides rounded up to 32 px; ``--image-min-tokens`` /
  ``--image-max-tokens`` move the bounds) instead of the processor's ``max_soft_tokens``; the server
  reports it only inside ``usage.prompt_tokens``, so it is the prompt count with the image minus
  the count without it, minus the two markers around the soft tokens;
- the attention over the image: llama.cpp decodes a Gemma 4 image non-causally unless the text
  model is 1536 or 2560 wide (E2B, E4B): ``mtmd_decode_use_non_causal`` in tools/mtmd/mtmd.cpp of
  llama.cpp@0c1e57098 reads the width, not the checkpoint's ``use_bidirectional_attention`` (which
  the GGUF does not carry). Transformers does the same as llama.cpp when that field is "vision".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from harness.replay.client import chat_messages, replay
from harness.score.offline import generate_records, load_model
from harness.serve.vllm import ServerTarget

# llama-server's stand-in for a media part in the rendered prompt (mtmd's default marker plus a random tail).
MEDIA_MARKER = re.compile(r"<__media_\w*__>")
# Text widths for which llama.cpp's gemma4v decodes image tokens causally (Gemma 4 E2B and E4B).
LLAMA_CPP_CAUSAL_IMAGE_WIDTHS = (1536, 2560)
MARKERS_AROUND_IMAGE = 2  # <|image> and <image|>


def hf_image_attention(text_config: Any) -> str:
    """How transformers attends over image tokens for this text config: "bidirectional" or "causal"."""
    return "bidirectional" if getattr(text_config, "use_bidirectional_attention", None) == "vision" else "causal"


def llama_cpp_image_attention(hidden_size: int) -> str:
    """How llama.cpp@0c1e57098 attends over a Gemma 4 image for a text model this wide."""
    return "causal" if hidden_size in LLAMA_CPP_CAUSAL_IMAGE_WIDTHS else "bidirectional"


def _post(target: ServerTarget, route: str, body: dict[str, Any]) -> dict[str, Any]:
    import httpx  # lazy: comes with the openai client

    root = target.base_url.removesuffix("/v1")
    answer = httpx.post(f"{root}{route}", json=body, timeout=60.0,
                        headers={"Authorization": f"Bearer {target.api_key}"})
    answer.raise_for_status()
    return answer.json()


def llama_text_tokens(target: ServerTarget, messages: list[dict[str, Any]]) -> list[list[int]]:
    """Token ids of the text llama-server puts around each media part of ``messages``, in order.

    The template is rendered by the server (/apply-template) and each text piece tokenized as the
    server does it for a chat request: special tokens parsed, BOS added to the first piece only.
    """
    prompt = _post(target, "/apply-template", {"messages": messages})["prompt"]
    pieces = MEDIA_MARKER.split(prompt)
    return [_post(target, "/tokenize", {"content": piece, "add_special": i == 0, "parse_special": True})["tokens"]
            for i, piece in enumerate(pieces)]


def hf_text_tokens(processor: Any, prompt_text: str, image_token_id: int) -> list[list[int]]:
    """Token ids of the HF-rendered prompt, cut where the template put an image placeholder."""
    ids = processor.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    pieces: list[list[int]] = [[]]
    for token in ids:
        if token == image_token_id:
            pieces.append([])
        else:
            pieces[-1].append(token)
    return pieces


def hf_prompt(processor: Any, sample: Any) -> str:
    """The chat template rendered by transformers for one suite message (image then question)."""
    content = [{"type": "image"}, {"type": "text", "text": sample.prompt}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                         tokenize=False)


def prompt_tokens(target: ServerTarget, messages: list[dict[str, Any]]) -> int:
    """usage.prompt_tokens of a one-token, uncached chat request (image soft tokens included)."""
    body = {"model": target.model_name, "messages": messages, "max_tokens": 1, "temperature": 0,
            "cache_prompt": False}
    return int(_post(target, "/v1/chat/completions", body)["usage"]["prompt_tokens"])


def llama_image_tokens(target: ServerTarget, sample: Any) -> int:
    """Soft tokens llama-server inserts for the sample's image (see the module docstring)."""
    with_image = chat_messages(sample)
    text_only = [{"role": "user", "content": [{"type": "text", "text": sample.prompt}]}]
    return prompt_tokens(target, with_image) - prompt_tokens(target, text_only) - MARKERS_AROUND_IMAGE


def hf_image_tokens(processor: Any, image: Any, image_token_id: int, budget: int | None = None) -> int:
    """Soft tokens the HF processor expands one image to, at ``budget`` (None: its own max_soft_tokens)."""
    sized = {} if budget is None else {"max_soft_tokens": budget}
    ids = processor(text=[processor.image_token], images=[[image]], **sized)["input_ids"][0]
    return sum(1 for token in ids if token == image_token_id)


def budget_options(soft_tokens: int, budget: int) -> dict[str, int]:
    """The llama config that makes llama-server render an image at the HF processor's size.

    llama.cpp grows an image to its minimum and shrinks it to its maximum; with the minimum at the
    processor's count and the maximum at its budget, a small image is grown to exactly that count.
    """
    return {"image-min-tokens": soft_tokens, "image-max-tokens": budget}


def transformers_greedy(model_dir: Any, samples: Sequence[Any], max_tokens: int, *,
                        image_attention: str | None = None, dtype: str = "float32") -> list[Any]:
    """Greedy transformers answers (harness.score.offline records).

    ``image_attention``: "bidirectional" runs the model as llama.cpp does on a width it does not
    know (use_bidirectional_attention="vision"), "causal" with that field unset; None keeps the
    checkpoint's own setting.
    """
    model, processor = load_model(model_dir, dtype)
    if image_attention is not None:
        model.config.get_text_config().use_bidirectional_attention = (
            "vision" if image_attention == "bidirectional" else None)
    return generate_records(model, processor, samples, max_tokens)


def replay_greedy(target: ServerTarget, samples: Sequence[Any], run: Any) -> list[Any]:
    """Records of one sequential replay of ``samples`` with ``run``'s sampling (a connection the server
    dropped before answering is resent by the replay client itself)."""
    return list(replay(target, samples, run.workload, run.sampling, show_progress=False,
                       chat_template_kwargs=run.serve.chat_template_kwargs).records)
