"""Gemma 4's thinking, read from the answers: is there a thought block, and how many tokens is it?

Gemma 4 thinks only when the system turn carries ``<|think|>``, which its chat template adds for
``enable_thinking: true``. A thought comes first in the model's turn, as
``<|channel>thought\\n ... <channel|>`` followed by the answer. The judges count every generated
token, so a thought the team did not mean to pay for is energy, and an answer scored with its
thought in front of it is scored wrongly. The checks here:

- thinking off: no answer may hold a thought block (a template that ignores the kwarg, or a
  model that thinks anyway, is flagged in the result);
- thinking on: the thought tokens are counted, per request and in total, beside the answer length.

A server that strips special tokens (vLLM's default ``skip_special_tokens``) leaves ``thought\\n``
at the start of the text without the closing delimiter: the block is then detected, but its end
(and so its token count) is unknown, and reported as such.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

OPEN, CLOSE = "<|channel>", "<channel|>"
_DELIMITED = re.compile(re.escape(OPEN) + r"thought\n?(.*?)" + re.escape(CLOSE), re.DOTALL)
_STRIPPED = re.compile(r"\s*thought\n")
FLAG_THOUGHT_WHILE_OFF = "thought_block_while_thinking_off"


def thought_of(text: str) -> tuple[str | None, bool]:
    """(the thought's text, found): the text between the delimiters when they are there; (None, True)
    when only the stripped form's ``thought\\n`` opening is; (None, False) when there is no thought."""
    if (match := _DELIMITED.search(text)) is not None:
        return match.group(1), True
    if text.lstrip().startswith(OPEN) or _STRIPPED.match(text):
        return None, True
    return None, False


def answer_without_thought(text: str) -> str:
    """The answer a user sees: the text after a delimited thought block (the text itself otherwise)."""
    match = _DELIMITED.search(text)
    return text[match.end():].lstrip() if match else text


def thinking_summary(texts: Sequence[str], enabled: bool,
                     count_tokens: Callable[[str], int] | None = None) -> dict[str, Any]:
    """What result.json records under ``thinking``.

    ``count_tokens`` turns a thought's text into tokens (the model's tokenizer, without special
    tokens; the two delimiters are added). Thoughts whose end is unknown are counted in
    ``answers_with_thought`` but not in ``thought_tokens``, and ``thought_tokens_complete`` says so.
    """
    found = [thought_of(t) for t in texts]
    with_thought = [thought for thought, present in found if present]
    known = [t for t in with_thought if t is not None]
    tokens = sum(count_tokens(t) + 2 for t in known) if count_tokens is not None else None
    summary: dict[str, Any] = {
        "enabled": bool(enabled),
        "answers": len(texts),
        "answers_with_thought": len(with_thought),
        "thought_tokens": tokens,
        "thought_tokens_complete": tokens is not None and len(known) == len(with_thought),
        "flags": [],
    }
    if not enabled and with_thought:
        summary["flags"].append(FLAG_THOUGHT_WHILE_OFF)
    return summary


def thinking_warning(summary: dict[str, Any]) -> str | None:
    """One line for the console when thinking is off and answers still hold thoughts, else None."""
    if FLAG_THOUGHT_WHILE_OFF not in summary.get("flags", ()):
        return None
    return (f"{summary['answers_with_thought']} of {summary['answers']} answers begin with a thought block although "
            "thinking is off: the chat template ignores serve.chat_template_kwargs.enable_thinking, and the judges "
            "will pay for those tokens")


def tokenizer_counter(model_dir: str) -> Callable[[str], int]:
    """Counts tokens of a text with ``model_dir``'s tokenizer (loaded on the first call: most runs never need it)."""
    loaded: list[Any] = []

    def count(text: str) -> int:
        if not loaded:
            from transformers import AutoTokenizer

            loaded.append(AutoTokenizer.from_pretrained(model_dir))
        return len(loaded[0](text, add_special_tokens=False)["input_ids"])

    return count
