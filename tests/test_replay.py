"""Replaying suite samples against the real tiny server gives complete per-request records."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import statistics
import threading

import pytest

from harness.config.schema import compose
from harness.replay.client import _arrival_offsets_s, chat_messages, replay, request_body
from harness.replay.workloads.base import load_samples
from harness.serve.generation import ServerDefaults
from harness.serve.vllm import ServerTarget


@pytest.fixture(scope="module")
def samples():
    return load_samples(seed=0, split="test", limit=8)


def _workload(**changes):
    return dataclasses.replace(compose([]).workload, **changes)


def _sampling(**changes):
    return dataclasses.replace(compose([]).sampling, **{"max_tokens": 16, **changes})


def test_image_goes_before_text(samples) -> None:
    [message] = chat_messages(samples[0])
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["image_url", "text"]
    assert message["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert message["content"][1]["text"] == samples[0].prompt


@pytest.mark.server
def test_sequential_replay_records_every_request(served_tiny, samples) -> None:
    result = replay(served_tiny.target, samples[:4], _workload(mode="sequential"), _sampling(),
                    chat_template_kwargs={"enable_thinking": False}, show_progress=False, warmup=samples[4:5])
    assert [r.id for r in result.records] == [s.id for s in samples[:4]]
    assert len(result.warmup) == 1 and result.warmup[0].end_s <= result.start_s
    assert result.warmup[0].id == samples[4].id  # warm-up is not a measured sample
    for r in result.records:
        assert r.error is None
        assert r.prompt_tokens > 0 and 0 < r.output_tokens <= 16
        assert 0 < r.ttft_ms <= r.latency_ms
        assert r.output_text.strip() != ""
        assert r.finish_reason in ("stop", "length")
        assert result.start_s <= r.start_s < r.end_s <= result.end_s
        assert len(r.itl_ms) <= r.output_tokens - 1
    # sequential: each request starts after the previous one ended
    assert all(a.end_s <= b.start_s for a, b in zip(result.records, result.records[1:]))


@pytest.mark.server
def test_concurrent_replay_overlaps_requests(served_tiny, samples) -> None:
    result = replay(served_tiny.target, samples, _workload(mode="concurrent", concurrency=4, warmup_requests=0),
                    _sampling(), show_progress=False)
    assert result.errors == 0 and len(result.records) == len(samples)
    first_end = min(r.end_s for r in result.records)
    assert sum(r.start_s < first_end for r in result.records) == 4


@pytest.mark.server
def test_seeded_requests_repeat_their_answers(served_tiny, samples) -> None:
    args = (served_tiny.target, samples[:3], _workload(warmup_requests=0), _sampling(seed=7))
    first = replay(*args, show_progress=False)
    second = replay(*args, show_progress=False)
    assert [r.output_text for r in first.records] == [r.output_text for r in second.records]


@pytest.mark.server
def test_bad_request_becomes_an_error_record(served_tiny, samples) -> None:
    result = replay(served_tiny.target, samples[:2], _workload(warmup_requests=0),
                    _sampling(max_tokens=10**7), show_progress=False)
    assert result.errors == 2
    for r in result.records:
        assert "BadRequestError" in r.error and r.output_tokens == 0 and r.ttft_ms is None


@contextlib.contextmanager
def _loopback(handle):
    """A real TCP endpoint on 127.0.0.1 that gives each accepted connection to ``handle``
    (on a thread); yields its port and stops the thread and the socket on exit."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            handle(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        listener.close()


@pytest.fixture
def held_server():
    """A real HTTP endpoint on loopback that accepts each request and never answers it.

    A held request times out however fast the machine is; a real server's answer may not.
    """
    held: list[socket.socket] = []  # read nothing back, answer nothing
    try:
        with _loopback(held.append) as port:
            yield ServerTarget(f"http://127.0.0.1:{port}/v1", "held-key", "held-model")
    finally:
        for conn in held:
            conn.close()


def test_timeout_becomes_an_error_record(held_server, samples) -> None:
    result = replay(held_server, samples[:2], _workload(warmup_requests=0, request_timeout_s=0.5),
                    _sampling(), show_progress=False)
    assert [r.id for r in result.records] == [s.id for s in samples[:2]]
    for record in result.records:
        assert "Timeout" in record.error and record.output_tokens == 0 and record.ttft_ms is None


@pytest.mark.server
def test_poisson_replay_sends_nothing_before_its_arrival_time(served_tiny, samples) -> None:
    workload = _workload(mode="poisson", rate_rps=8.0, seed=5, concurrency=4, warmup_requests=0)
    result = replay(served_tiny.target, samples, workload, _sampling(), show_progress=False)
    assert result.errors == 0 and [r.id for r in result.records] == [s.id for s in samples]
    offsets = _arrival_offsets_s(len(samples), workload)
    # Each request leaves no earlier than its seeded arrival time after the window opened.
    for record, offset in zip(result.records, offsets):
        assert record.start_s >= result.start_s + offset - 1e-3
    assert all(r.output_tokens > 0 for r in result.records)


def test_poisson_arrivals_are_seeded_with_the_asked_rate() -> None:
    workload = _workload(mode="poisson", rate_rps=4.0, seed=3)
    offsets = _arrival_offsets_s(2000, workload)
    assert offsets == _arrival_offsets_s(2000, workload)
    assert offsets != _arrival_offsets_s(2000, dataclasses.replace(workload, seed=4))
    gaps = [b - a for a, b in zip(offsets, offsets[1:])]
    assert statistics.mean(gaps) == pytest.approx(0.25, rel=0.1)
    assert _arrival_offsets_s(3, _workload(mode="concurrent")) == [0.0, 0.0, 0.0]


def _sse_server(pieces: list[bytes], received: list | None = None):
    """A real loopback HTTP endpoint that answers every request with ``pieces``, sent apart
    (a context manager yielding its port).

    Each piece goes out in its own TCP send after a pause, so an event can straddle two reads
    of the client, as it may from a busy server. ``received`` collects each request's JSON body.
    """
    import time

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(5)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            if received is not None:
                received.append(json.loads(body))
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            for piece in pieces:
                time.sleep(0.02)
                try:
                    conn.sendall(piece)
                except OSError:  # the client stopped reading (after an error event): fine
                    break

    return _loopback(answer)


def _chunk(content: str | None, tokens: int, finish: str | None = None) -> bytes:
    usage = {"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens}
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    return b"data: " + json.dumps({"choices": choices, "usage": usage}).encode() + b"\n\n"


@pytest.mark.parametrize("error_event", [False, True])
def test_events_split_across_reads_and_errors_inside_a_stream(samples, error_event) -> None:
    first, second = _chunk("re", 1), _chunk("d", 2, "stop")
    pieces = [first[:17], first[17:] + second[:9], second[9:]]
    pieces += [b'data: {"error": {"message": "engine died", "code": 500}}\n\n'] if error_event else []
    pieces += [_chunk(None, 2), b"data: [DONE]\n\n"]
    with _sse_server(pieces) as port:
        target = ServerTarget(f"http://127.0.0.1:{port}/v1", "key", "model")
        [record] = replay(target, samples[:1], _workload(warmup_requests=0), _sampling(), show_progress=False).records
    assert record.output_text == "red" and record.finish_reason == "stop"
    assert [n for _, n in record.usage_ms] == [1, 2] and len(record.itl_ms) == 1
    if error_event:
        assert record.error == "StreamError: engine died" and record.output_tokens == 2
    else:
        assert record.error is None and (record.prompt_tokens, record.output_tokens) == (7, 2)


def test_explicit_requests_carry_the_sampling_and_messages_requests_only_the_messages(samples) -> None:
    defaults = ServerDefaults({"max_tokens": 16, "temperature": 0.7}, max_model_len=4096)
    extra = {"chat_template_kwargs": {"enable_thinking": False}}
    explicit = request_body("m", samples[0], _sampling(), extra, defaults)
    sent = json.loads(explicit.data)
    assert {k: sent[k] for k in ("temperature", "top_p", "top_k", "max_tokens")} == {
        "temperature": 1.0, "top_p": 0.95, "top_k": 64, "max_tokens": 16}
    assert sent["seed"] == explicit.seed and sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert explicit.sampling["temperature"] == 1.0 and explicit.limit(90) == (16, "request")
    judged = request_body("m", samples[0], _sampling(send="messages"), extra, defaults)
    assert set(json.loads(judged.data)) == {"model", "messages", "stream", "stream_options"}
    assert judged.seed is None and judged.sampling["temperature"] == 0.7 and judged.sampling["top_k"] == 0
    assert judged.limit(90) == (16, "generation_config")
    assert request_body("m", samples[0], _sampling(send="messages"), {}).limit(90) == (None, None)  # defaults unknown


def test_each_record_says_what_the_server_decoded_it_with(samples) -> None:
    """A real loopback server answers; the limit follows the prompt length the server reported (7 tokens)."""
    received: list = []
    pieces = [_chunk("red", 1, "stop"), _chunk(None, 1), b"data: [DONE]\n\n"]
    with _sse_server(pieces, received) as port:
        defaults = ServerDefaults({"top_p": 0.9}, max_model_len=40)
        target = ServerTarget(f"http://127.0.0.1:{port}/v1", "key", "model", defaults)
        [record] = replay(target, samples[:1], _workload(warmup_requests=0), _sampling(send="messages"),
                          chat_template_kwargs={"enable_thinking": False}, show_progress=False).records
    assert set(received[0]) == {"model", "messages", "stream", "stream_options"}
    assert (record.max_tokens, record.max_tokens_from) == (33, "max_model_len")  # 40 - 7: no max_new_tokens
    assert record.sampling == {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                               "temperature": 1.0, "top_p": 0.9, "top_k": 0, "min_p": 0.0, "seed": None}
