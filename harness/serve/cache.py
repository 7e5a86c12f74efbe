"""vLLM's prefix and multimodal caches: reset them between trials, and read from /metrics how much they hit.

A trial on a server that already served the suite must start as cold as a fresh server:
otherwise trial 2 finds every prompt's KV blocks and image features cached and does less work.
The reset endpoints exist when the server runs with VLLM_SERVER_DEV_MODE=1 (loopback only
here, behind the run's API key); the counters come from vLLM's Prometheus /metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from harness.errors import ServerError

DEV_MODE_ENV = {"VLLM_SERVER_DEV_MODE": "1"}  # registers /reset_prefix_cache, /reset_mm_cache, ...
_RESETS = ("/reset_prefix_cache", "/reset_mm_cache", "/reset_encoder_cache")
_COUNTERS = {
    "vllm:prefix_cache_queries": "prefix_queries",  # prompt tokens looked up in the prefix cache
    "vllm:prefix_cache_hits": "prefix_hits",  # of those, tokens found cached
    "vllm:mm_cache_queries": "mm_queries",  # multimodal items looked up in the processor cache
    "vllm:mm_cache_hits": "mm_hits",
}


@dataclass(frozen=True)
class CacheCounters:
    """vLLM's cumulative cache counters at one instant (summed over engines)."""

    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    mm_queries: float = 0.0
    mm_hits: float = 0.0

    def since(self, before: CacheCounters) -> CacheCounters:
        """The counts between ``before`` and now (what one trial looked up and hit)."""
        return CacheCounters(*(getattr(self, k) - getattr(before, k) for k in self.__dataclass_fields__))

    def to_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _root(target: Any) -> str:
    return target.base_url.removesuffix("/v1")


def _headers(target: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"}


def reset_caches(target: Any, attempts: int = 20) -> None:
    """Empties the server's prefix, multimodal and encoder caches.

    vLLM refuses a prefix-cache reset while blocks are held (a request still finishing); it
    is retried for a few seconds.

    Raises:
        ServerError: an endpoint is missing (the server was started without dev mode) or the
            prefix cache could not be reset.
    """
    import httpx  # lazy: comes with the openai client

    with httpx.Client(timeout=30.0, headers=_headers(target)) as client:
        for path in _RESETS:
            for _ in range(attempts):
                response = client.post(_root(target) + path)
                if response.status_code == 404:
                    raise ServerError(f"the server has no {path} endpoint: start it with VLLM_SERVER_DEV_MODE=1 "
                                      "(trial_server=shared does) or use trial_server=fresh")
                response.raise_for_status()
                ok = path != "/reset_prefix_cache" or response.json().get("success", True)
                if ok:
                    break
                time.sleep(0.25)
            else:
                raise ServerError(f"vLLM did not reset its prefix cache after {attempts} tries; use trial_server=fresh")


def read_metrics(target: Any) -> tuple[CacheCounters, dict[str, str]]:
    """The cache counters and the labels of ``vllm:cache_config_info`` (what the cache really used)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families  # lazy: comes with vLLM

    response = httpx.get(_root(target) + "/metrics", headers=_headers(target), timeout=30.0)
    response.raise_for_status()
    totals = dict.fromkeys(_COUNTERS.values(), 0.0)
    config: dict[str, str] = {}
    for family in text_string_to_metric_families(response.text):
        if family.name in _COUNTERS:
            totals[_COUNTERS[family.name]] += sum(s.value for s in family.samples if s.name.endswith("_total"))
        elif family.name == "vllm:cache_config_info" and family.samples:
            config = dict(family.samples[0].labels)
    return CacheCounters(**totals), config


def warmer_than_first(trial: CacheCounters, first: CacheCounters, slack: float = 0.02) -> bool:
    """Whether a trial hit the caches more than the first trial did (which ran on empty caches).

    The suite shares some prefix with itself (the chat template's opening tokens), so a cold
    pass hits a little; a later trial that hits more than that, plus ``slack`` of its
    lookups, found work left over from an earlier trial.
    """
    prefix_extra = trial.prefix_hits - first.prefix_hits > slack * max(trial.prefix_queries, 1.0)
    mm_extra = trial.mm_hits - first.mm_hits > slack * max(trial.mm_queries, 1.0)
    return prefix_extra or mm_extra
