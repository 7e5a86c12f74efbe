"""Gemma 4 thought blocks found in answers: none allowed when thinking is off, counted when on."""

from __future__ import annotations

from harness.score.thinking import (
    FLAG_THOUGHT_WHILE_OFF,
    answer_without_thought,
    thinking_summary,
    thinking_warning,
    thought_of,
)

# Answers in Gemma 4's format: a thought in the channel delimiters, then the answer.
THOUGHT = "<|channel>thought\nThe image shows a red square on the left.<channel|>A red square."
STRIPPED = "thought\nThe image shows a red square on the left.A red square."  # special tokens skipped
PLAIN = "A red square on the left."


def words(text: str) -> int:
    return len(text.split())


def test_a_delimited_thought_is_found_and_the_answer_is_what_follows_it():
    assert thought_of(THOUGHT) == ("The image shows a red square on the left.", True)
    assert answer_without_thought(THOUGHT) == "A red square."
    assert thought_of(PLAIN) == (None, False) and answer_without_thought(PLAIN) == PLAIN


def test_a_thought_whose_delimiters_were_stripped_is_found_but_not_measured():
    assert thought_of(STRIPPED) == (None, True)
    summary = thinking_summary([STRIPPED, PLAIN], enabled=True, count_tokens=words)
    assert summary["answers_with_thought"] == 1 and summary["thought_tokens"] == 0
    assert summary["thought_tokens_complete"] is False


def test_thinking_off_with_no_thought_is_clean():
    summary = thinking_summary([PLAIN, "Two circles."], enabled=False, count_tokens=words)
    assert summary["answers_with_thought"] == 0 and summary["flags"] == []
    assert thinking_warning(summary) is None


def test_thinking_off_with_a_thought_is_flagged_in_one_line():
    summary = thinking_summary([THOUGHT, PLAIN], enabled=False, count_tokens=words)
    assert summary["flags"] == [FLAG_THOUGHT_WHILE_OFF]
    line = thinking_warning(summary)
    assert "1 of 2 answers" in line and "enable_thinking" in line and "\n" not in line


def test_thinking_on_counts_thought_tokens_with_both_delimiters():
    summary = thinking_summary([THOUGHT, THOUGHT, PLAIN], enabled=True, count_tokens=words)
    per_thought = words("The image shows a red square on the left.") + 2
    assert summary["answers_with_thought"] == 2 and summary["thought_tokens"] == 2 * per_thought
    assert summary["thought_tokens_complete"] is True and summary["flags"] == []
