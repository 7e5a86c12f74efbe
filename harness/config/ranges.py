"""Range checks: values the schema's types allow but no run can use (run by compose, before any work)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.errors import ConfigError

if TYPE_CHECKING:
    from harness.config.schema import RunConfig, SamplingConfig, ServeConfig

# The smallest prompt a suite request can have: Gemma 4's smallest image budget (70) gives
# 64 soft tokens, plus the image delimiters and the question (measured: ~86 with the tiny model).
MIN_PROMPT_TOKENS = 64
# The generation config keys vLLM 0.32 turns into request defaults, from the checkpoint's file or
# --override-generation-config (vllm/config/model.py ModelConfig.get_diff_sampling_param).
GENERATION_KEYS = ("repetition_penalty", "presence_penalty", "frequency_penalty", "temperature", "top_k", "top_p",
                   "min_p", "max_new_tokens")


def check_ranges(run: RunConfig) -> None:
    """Values the schema's types allow but no run can use (called by config.schema._check_values).

    Raises:
        ConfigError: names the key, the value and the accepted range.
    """
    s, serve, e = run.sampling, run.serve, run.energy
    rules = [
        ("sampling.temperature", s.temperature, s.temperature >= 0, ">= 0 (0 is greedy)"),
        ("sampling.top_p", s.top_p, 0 < s.top_p <= 1, "in (0, 1]"),
        ("sampling.top_k", s.top_k, s.top_k >= -1, "-1 or 0 (off) or a positive count"),
        ("serve.port", serve.port, 0 <= serve.port <= 65535, "in [0, 65535] (0 = a free port)"),
        ("serve.max_num_seqs", serve.max_num_seqs,
         serve.max_num_seqs is None or serve.max_num_seqs >= 1, ">= 1 or null"),
        ("serve.max_model_len", serve.max_model_len,
         serve.max_model_len is None or serve.max_model_len > 0, "> 0 or null"),
        ("serve.cpu_kvcache_space_gib", serve.cpu_kvcache_space_gib, serve.cpu_kvcache_space_gib >= 1, ">= 1"),
        ("serve.limit_mm_per_prompt.image", serve.limit_mm_per_prompt.get("image", 0),
         serve.limit_mm_per_prompt.get("image", 0) >= 1, ">= 1 (every suite request carries one image)"),
        ("energy.cpu_idle_w", e.cpu_idle_w, e.cpu_idle_w >= 0, ">= 0"),
        ("energy.cpu_active_w", e.cpu_active_w, e.cpu_active_w >= e.cpu_idle_w,
         f">= energy.cpu_idle_w ({e.cpu_idle_w:g})"),
        ("quality.confidence", run.quality.confidence, 0 < run.quality.confidence < 1, "in (0, 1)"),
    ]
    for key, value, ok, accepted in rules:
        if not ok:
            raise ConfigError(f"{key}={value} is out of range: use a value {accepted}")
    _check_requests(s, serve)
    _check_context(serve, s.max_tokens if s.send == "explicit" else None)


def _check_context(serve: ServeConfig, max_tokens: int | None) -> None:
    """The context must hold an image prompt plus the max_tokens sent (none in messages mode: the server sizes it)."""
    prompt = serve.max_soft_tokens or MIN_PROMPT_TOKENS
    if serve.max_model_len is None or serve.max_model_len >= prompt + (max_tokens or 1):
        return
    if max_tokens is None:
        raise ConfigError(f"serve.max_model_len={serve.max_model_len} cannot hold an image prompt (at least {prompt} "
                          f"tokens) and an answer: raise serve.max_model_len to >= {prompt + 1}")
    raise ConfigError(f"serve.max_model_len={serve.max_model_len} cannot hold sampling.max_tokens={max_tokens} "
                      f"plus an image prompt (at least {prompt} tokens): raise serve.max_model_len to "
                      f">= {prompt + max_tokens} or lower sampling.max_tokens")


def _check_requests(sampling: SamplingConfig, serve: ServeConfig) -> None:
    """What requests carry and what the server fills in must fit together."""
    if sampling.send == "messages" and sampling.ignore_eos:
        raise ConfigError("sampling.ignore_eos=true needs sampling.send=explicit: a messages-only request carries "
                          "no ignore_eos; set one of them back")
    unknown = sorted(set(serve.generation_config) - set(GENERATION_KEYS))
    if unknown:
        raise ConfigError(f"serve.generation_config.{unknown[0]}: vLLM turns only {', '.join(GENERATION_KEYS)} into "
                          "request defaults; remove the key")
    limit = serve.generation_config.get("max_new_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
        raise ConfigError(f"serve.generation_config.max_new_tokens={limit!r} must be a positive integer "
                          "(or null to drop the checkpoint's own)")
