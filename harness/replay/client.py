"""Replays suite samples against an OpenAI-compatible server and records each request's timing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.config.schema import SamplingConfig, WorkloadConfig
from harness.energy.clock import now
from harness.replay.tokens import STREAM_OPTIONS, usage_tokens
from harness.serve.vllm import ServerTarget


@dataclass(frozen=True)
class RequestRecord:
    """One request as the client saw it.

    Times: ``start_s``/``end_s`` (harness.energy.clock.now()) are when the request was sent and
    when its stream ended. ``ttft_ms`` is from sending to the first chunk carrying text;
    ``latency_ms`` from sending to the end of the stream; ``itl_ms`` the gaps between
    successive chunks carrying text (vLLM sends one token per chunk, but a token whose bytes
    do not yet decode to text rides with a later one, so there can be fewer gaps than
    output_tokens - 1). Token counts are the server's own usage figures; zero when the
    request failed before usage arrived.
    """

    id: str
    task: str
    prompt_tokens: int
    output_tokens: int
    ttft_ms: float | None
    latency_ms: float
    itl_ms: tuple[float, ...]
    output_text: str
    finish_reason: str | None
    error: str | None
    start_s: float
    end_s: float
    seed: int | None = None  # the sampling seed sent (sample_seed of the sample's id)
    # (ms after sending, completion tokens so far) at each chunk with new tokens, from the server's usage
    usage_ms: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class ReplayResult:
    """Measured records plus the window (start_s..end_s, harness.energy.clock) that holds only them.

    The window opens when the first measured request is sent (after warm-up) and closes when
    the last one ends, so an energy meter can integrate exactly over it.
    """

    records: tuple[RequestRecord, ...]
    warmup: tuple[RequestRecord, ...]
    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def errors(self) -> int:
        return sum(r.error is not None for r in self.records)


def replay(
    target: ServerTarget,
    samples: Sequence[Any],
    workload: WorkloadConfig,
    sampling: SamplingConfig,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    on_record: Callable[[RequestRecord], None] | None = None,
    warmup: Sequence[Any] = (),
) -> ReplayResult:
    """Sends ``samples`` (objects with id, task, image, prompt) the way ``workload`` says.

    ``warmup`` samples (best kept outside the measured suite, see
    harness.replay.workloads.split_warmup) go first, sequentially, and are returned apart.
    Failures become records with ``error`` set.
    ``on_record``, if given, is called with each measured record as soon as it completes
    (so a caller keeps what finished even when the replay is cancelled).
    """
    return asyncio.run(
        replay_async(target, samples, workload, sampling, chat_template_kwargs=chat_template_kwargs,
                     show_progress=show_progress, on_record=on_record, warmup=warmup)
    )


async def replay_async(
    target: ServerTarget,
    samples: Sequence[Any],
    workload: WorkloadConfig,
    sampling: SamplingConfig,
    *,
    chat_template_kwargs: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    on_record: Callable[[RequestRecord], None] | None = None,
    warmup: Sequence[Any] = (),
) -> ReplayResult:
    """The coroutine behind :func:`replay`, for callers already inside an event loop."""
    from openai import AsyncOpenAI  # lazy: keeps `import harness` light

    client = AsyncOpenAI(base_url=target.base_url, api_key=target.api_key,
                         timeout=workload.request_timeout_s, max_retries=0)
    extra: dict[str, Any] = {"top_k": sampling.top_k}
    if sampling.ignore_eos:
        extra["ignore_eos"] = True
    if chat_template_kwargs:
        extra["chat_template_kwargs"] = dict(chat_template_kwargs)

    # Images are encoded before the clock starts: PNG + base64 is client CPU work that would
    # otherwise compete with the server inside the measured window (2 cores here).
    messages = [chat_messages(s) for s in samples]

    async def send(index: int, sample: Any) -> RequestRecord:
        return await _send(client, target.model_name, sample, messages[index], _params(sampling, sample, extra))

    async with client:
        warm = [await _send(client, target.model_name, s, chat_messages(s), _params(sampling, s, extra))
                for s in warmup]
        with _Progress(len(samples), show_progress) as advance:
            start_s = now()
            records = await _schedule(samples, workload, send, advance, on_record)
            end_s = max([start_s, *(r.end_s for r in records)])
    return ReplayResult(tuple(records), tuple(warm), start_s, end_s)


async def _schedule(
    samples: Sequence[Any],
    workload: WorkloadConfig,
    send: Callable[[int, Any], Awaitable[RequestRecord]],
    advance: Callable[[], None],
    on_record: Callable[[RequestRecord], None] | None = None,
) -> list[RequestRecord]:
    """Runs every request under the workload's arrival pattern; returns records in sample order."""
    limit = 1 if workload.mode == "sequential" else workload.concurrency
    gate = asyncio.Semaphore(limit)
    delays = _arrival_offsets_s(len(samples), workload)
    began = time.monotonic()

    async def one(index: int, sample: Any) -> RequestRecord:
        await asyncio.sleep(max(0.0, delays[index] - (time.monotonic() - began)))
        async with gate:
            record = await send(index, sample)
        advance()
        if on_record is not None:
            on_record(record)
        return record

    return list(await asyncio.gather(*(one(i, s) for i, s in enumerate(samples))))


def _arrival_offsets_s(count: int, workload: WorkloadConfig) -> list[float]:
    """Seconds after the window opens at which each request may be sent.

    Poisson mode: exponential gaps with mean 1/rate_rps from a generator seeded by
    workload.seed; other modes send as soon as a concurrency slot is free.
    """
    if workload.mode != "poisson":
        return [0.0] * count
    rng = random.Random(workload.seed)
    offsets, now = [], 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.expovariate(workload.rate_rps)
    return offsets


def sample_seed(base: int, sample_id: Any) -> int:
    """The sampling seed of one suite sample: ``base`` plus a stable hash of its id, below 2**31.

    Derived from the id, not the position, so a sample gets the same seed in the baseline and
    the variant, in every trial, and when a resumed run replays only what was left.
    """
    digest = hashlib.sha256(str(sample_id).encode("utf-8")).digest()
    return (base + int.from_bytes(digest[:4], "big")) % 2**31


def _params(sampling: SamplingConfig, sample: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        "seed": sample_seed(sampling.seed, sample.id),
        "extra_body": dict(extra),
    }


def image_data_url(image: Any) -> str:
    """A PIL image as a base64 PNG data URL."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(sample: Any) -> list[dict[str, Any]]:
    """One user turn: the image first, then the prompt text (Gemma's expected order)."""
    return [{
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": image_data_url(sample.image)}},
            {"type": "text", "text": sample.prompt},
        ],
    }]


async def _send(client: Any, model: str, sample: Any, messages: list[dict[str, Any]],
                params: dict[str, Any]) -> RequestRecord:
    """Streams one chat completion; any failure is caught into the record's ``error``."""
    import httpx
    import openai

    state = _StreamState(now(), time.perf_counter(), params.get("seed"))
    try:
        stream = await client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options=STREAM_OPTIONS, **params
        )
        async for chunk in stream:
            state.take(chunk)
        error = None if state.usage_seen else "stream ended without a usage chunk"
    except (openai.OpenAIError, httpx.HTTPError, ValueError, KeyError, AttributeError, TypeError) as err:
        error = f"{type(err).__name__}: {err}"
    return state.record(sample, error)


class _StreamState:
    """Accumulates one streamed response: text, chunk arrival times, usage, finish reason."""

    def __init__(self, wall_start_s: float, start: float, seed: int | None) -> None:
        self.wall_start_s, self.start, self.seed = wall_start_s, start, seed
        self.text: list[str] = []
        self.arrivals: list[float] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = self.output_tokens = 0
        self.usage_seen = False
        self.usage_ms: list[tuple[float, int]] = []

    def take(self, chunk: Any) -> None:
        now = time.perf_counter()
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                self.text.append(choice.delta.content)
                self.arrivals.append(now)
            if choice.finish_reason is not None:
                self.finish_reason = choice.finish_reason
        if chunk.usage is not None:
            if not chunk.choices:  # the final, usage-only chunk (include_usage): the answer is complete
                self.usage_seen = True
            self.prompt_tokens, self.output_tokens = usage_tokens(chunk.usage)  # harness.replay.tokens defines them
            if not self.usage_ms or self.output_tokens > self.usage_ms[-1][1]:
                self.usage_ms.append((round((now - self.start) * 1e3, 3), self.output_tokens))

    def record(self, sample: Any, error: str | None) -> RequestRecord:
        end = time.perf_counter()
        first = self.arrivals[0] if self.arrivals else None
        gaps = tuple((b - a) * 1e3 for a, b in zip(self.arrivals, self.arrivals[1:]))
        return RequestRecord(
            id=str(sample.id), task=str(sample.task), prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            ttft_ms=None if first is None else (first - self.start) * 1e3,
            latency_ms=(end - self.start) * 1e3, itl_ms=gaps, output_text="".join(self.text),
            finish_reason=self.finish_reason, error=error,
            start_s=self.wall_start_s, end_s=self.wall_start_s + (end - self.start), seed=self.seed,
            usage_ms=tuple(self.usage_ms),
        )


class _Progress:
    """A rich progress bar over the measured requests (a no-op when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self._bar = total, enabled, None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        self._bar = Progress(transient=False)
        self._bar.start()
        task = self._bar.add_task("replay", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()
