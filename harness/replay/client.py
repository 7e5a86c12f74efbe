"""Replays suite samples against an OpenAI-compatible server and records each request's timing."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import io
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from harness.config.schema import SamplingConfig, WorkloadConfig
from harness.energy.clock import now
from harness.replay.tokens import STREAM_OPTIONS, usage_tokens
from harness.serve.generation import ServerDefaults
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

    ``max_tokens`` and ``sampling`` are what the server decoded the request with, derived as
    vLLM 0.32 derives them (harness.serve.generation: the field the request sent, else the
    served checkpoint's generation config, else vLLM's default; max_tokens also bounded by the
    context left after the prompt), since vLLM echoes neither. ``max_tokens_from`` names what
    set the limit: "request", "generation_config", "override_generation_config" or
    "max_model_len". None when the server's defaults or the prompt length are unknown.
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
    max_tokens: int | None = None
    max_tokens_from: str | None = None
    sampling: Mapping[str, Any] | None = None


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
    import aiohttp  # lazy: keeps `import harness` light

    extra: dict[str, Any] = {}
    if sampling.ignore_eos:
        extra["ignore_eos"] = True
    if chat_template_kwargs:
        extra["chat_template_kwargs"] = dict(chat_template_kwargs)

    # Every request body is built, images encoded and JSON serialised, before the clock starts:
    # PNG + base64 + dumping a long data URL is client CPU work that would otherwise compete
    # with the server inside the measured window (2 cores here).
    bodies = [request_body(target.model_name, s, sampling, extra, target.defaults) for s in samples]
    url = target.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {target.api_key}", "Content-Type": "application/json",
               "Accept": "text/event-stream"}
    timeout = aiohttp.ClientTimeout(total=workload.request_timeout_s)
    # No connection cap of the connector's own: the schedule's semaphore is the only limit.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=None)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:

        async def send(index: int, sample: Any) -> RequestRecord:
            return await _send(session, url, sample, bodies[index])

        warm = [await _send(session, url, s, request_body(target.model_name, s, sampling, extra, target.defaults))
                for s in warmup]
        # Everything alive now (imported libraries, the suite, the bodies) is set aside from the
        # garbage collector for the window: a full collection would otherwise walk all of it
        # in the middle of the stream, a pause of the client the server would wait through.
        gc.freeze()
        try:
            with _Progress(len(samples), show_progress) as advance:
                start_s = now()
                records = await _schedule(samples, workload, send, advance, on_record)
                end_s = max([start_s, *(r.end_s for r in records)])
        finally:
            gc.unfreeze()
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
        if delays[index]:
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


def request_body(model: str, sample: Any, sampling: SamplingConfig, extra: Mapping[str, Any],
                 defaults: ServerDefaults | None = None) -> _Body:
    """One streamed chat completion request for ``sample``, serialised, with what the server will decode it with.

    ``sampling.send`` "explicit": the sampling fields, a seed derived from the sample id and
    ``extra`` (ignore_eos, chat_template_kwargs); "messages": model, messages and stream options
    only, as the judges may send them (the server's defaults, ``defaults``, fill the rest).
    """
    body = {"model": model, "messages": chat_messages(sample), "stream": True, "stream_options": STREAM_OPTIONS}
    sent: dict[str, Any] = {}
    if sampling.send == "explicit":
        sent = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                "max_tokens": sampling.max_tokens, "seed": sample_seed(sampling.seed, sample.id)}
        body.update(sent, **extra)
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return _Body(data, sent.get("seed"), sent.get("max_tokens"), defaults and defaults.effective(sent), defaults)


@dataclass(frozen=True)
class _Body:
    """A serialised request, the seed and max_tokens it sent, and the sampling it will be decoded with."""

    data: bytes
    seed: int | None
    max_tokens: int | None = None
    sampling: Mapping[str, Any] | None = None
    defaults: ServerDefaults | None = None

    def limit(self, prompt_tokens: int) -> tuple[int | None, str | None]:
        """(effective max_tokens, what set it), once the server has told the prompt's length."""
        return self.defaults.max_tokens(self.max_tokens, prompt_tokens) if self.defaults else (None, None)


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


# What a failed request's error says, by HTTP status, in the names the OpenAI SDK gives them.
_STATUS_ERRORS = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                  404: "NotFoundError", 409: "ConflictError", 422: "UnprocessableEntityError",
                  429: "RateLimitError"}


class StreamError(Exception):
    """The server reported an error inside an otherwise successful stream."""


async def _send(session: Any, url: str, sample: Any, body: _Body) -> RequestRecord:
    """Streams one chat completion; any failure is caught into the record's ``error``.

    Server-sent events are parsed by hand into plain dicts: the client takes whatever bytes
    the socket has, splits them into lines and ``json.loads`` each ``data:`` line, as vLLM's
    own benchmark client does, so the load generator never paces the server it measures.
    """
    import aiohttp

    for attempt in (1, 2):
        state = _StreamState(now(), time.perf_counter(), body)
        answered = False
        try:
            async with session.post(url, data=body.data) as response:
                answered = True
                if response.status != 200:
                    raise StreamError(_http_error(response.status, await response.read()))
                await _read_events(response.content, state)
            error = None if state.usage_seen else "stream ended without a usage chunk"
        except StreamError as err:
            error = str(err)
        except aiohttp.ServerDisconnectedError as err:
            # A kept-alive connection the server closed as the request went out (llama-server does so
            # under load): the request never reached it, so it is sent once more on a new connection.
            if not answered and attempt == 1:
                continue
            error = f"{type(err).__name__}: {err}"
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError, AttributeError, TypeError) as err:
            error = f"{type(err).__name__}: {err}"
        return state.record(sample, error)
    raise AssertionError("unreachable: the second attempt always returns")


async def _read_events(content: Any, state: _StreamState) -> None:
    """Feeds each ``data:`` event of an SSE body to ``state`` until ``[DONE]`` or the end.

    One read returns whatever arrived (at high concurrency often several events, or part of
    one); a partial last line waits in the buffer for the next read. Other SSE lines (blank
    separators, ``:`` comments, ``event:`` fields) are skipped.
    """
    pending = b""
    async for data in content.iter_any():
        *lines, pending = (pending + data).split(b"\n")
        if _feed(lines, state):
            return
    _feed([pending], state)  # a last event without its newline


def _feed(lines: list[bytes], state: _StreamState) -> bool:
    """Gives each ``data:`` line's JSON to ``state``; True at ``[DONE]``."""
    for line in lines:
        if line.startswith(b"data:"):
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return True
            state.take(json.loads(payload))
    return False


def _http_error(status: int, raw: bytes) -> str:
    """One line for a non-200 answer: the error's name, the status, the server's message."""
    name = _STATUS_ERRORS.get(status, "InternalServerError" if status >= 500 else "APIStatusError")
    try:
        detail = json.loads(raw)
        message = detail.get("error", detail).get("message") or raw.decode("utf-8", "replace")
    except (ValueError, AttributeError):
        message = raw.decode("utf-8", "replace")
    return f"{name}: HTTP {status}: {' '.join(str(message).split())[:500]}"


class _StreamState:
    """Accumulates one streamed response: text, chunk arrival times, usage, finish reason."""

    def __init__(self, wall_start_s: float, start: float, body: _Body) -> None:
        self.wall_start_s, self.start, self.body = wall_start_s, start, body
        self.text: list[str] = []
        self.arrivals: list[float] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = self.output_tokens = 0
        self.usage_seen = False
        self.usage_at: list[tuple[float, int]] = []  # (perf_counter, completion tokens so far)

    def take(self, chunk: dict[str, Any]) -> None:
        """One parsed chunk (a dict straight from the event's JSON).

        Runs once per streamed token, so it only appends: times stay raw perf_counter values
        until :meth:`record` turns them into milliseconds once per request.
        """
        now = time.perf_counter()
        choices = chunk.get("choices")
        if choices:
            for choice in choices:
                delta = choice.get("delta")
                if delta and (content := delta.get("content")):
                    self.text.append(content)
                    self.arrivals.append(now)
                if (reason := choice.get("finish_reason")) is not None:
                    self.finish_reason = reason
        elif "error" in chunk:
            error = chunk["error"]
            raise StreamError(f"StreamError: {error.get('message', error) if isinstance(error, dict) else error}")
        usage = chunk.get("usage")
        if usage is not None:
            if not choices:  # the final, usage-only chunk (include_usage): the answer is complete
                self.usage_seen = True
            prompt, output = usage_tokens(usage)  # harness.replay.tokens defines them
            if output > self.output_tokens or not self.usage_at:
                self.usage_at.append((now, output))
            self.prompt_tokens, self.output_tokens = prompt, output

    def record(self, sample: Any, error: str | None) -> RequestRecord:
        end = time.perf_counter()
        first = self.arrivals[0] if self.arrivals else None
        gaps = tuple((b - a) * 1e3 for a, b in zip(self.arrivals, self.arrivals[1:]))
        body = self.body
        limit, limit_from = body.limit(self.prompt_tokens)
        return RequestRecord(
            id=str(sample.id), task=str(sample.task), prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
            ttft_ms=None if first is None else (first - self.start) * 1e3,
            latency_ms=(end - self.start) * 1e3, itl_ms=gaps, output_text="".join(self.text),
            finish_reason=self.finish_reason, error=error,
            start_s=self.wall_start_s, end_s=self.wall_start_s + (end - self.start), seed=body.seed,
            usage_ms=tuple((round((t - self.start) * 1e3, 3), n) for t, n in self.usage_at),
            max_tokens=limit, max_tokens_from=limit_from, sampling=body.sampling,
        )


class _Progress:
    """A rich progress bar over the measured requests (a no-op when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self._bar = total, enabled, None

    def __enter__(self) -> Callable[[], None]:
        if not self.enabled:
            return lambda: None
        from rich.progress import Progress

        # Redrawn twice a second from rich's own thread: each redraw takes the GIL from the event
        # loop, so a faster refresh would cost client time inside the measured window.
        self._bar = Progress(transient=False, refresh_per_second=2)
        self._bar.start()
        task = self._bar.add_task("replay", total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc_info: object) -> None:
        if self._bar is not None:
            self._bar.stop()
