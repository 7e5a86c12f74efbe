"""Faults during a run: a server that dies mid-replay, and a replay with too many failed requests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.energy.clock import now
from harness.errors import RunFailed

# How often the watchdog asks whether the server process is still there; bounds the time
# from a server death to the replay being cancelled.
WATCH_INTERVAL_S = 0.5
# A replay that ended with failed requests may have been cut by a server that is dying: its
# sockets close (the client sees "connection reset") a moment before the process can be
# reaped. The watchdog gives the process this long to show whether it exited.
DEATH_GRACE_S = 2.0


@dataclass(frozen=True)
class GuardedReplay:
    """What a watched replay produced.

    ``played`` is a ReplayResult. When the server died, it holds only the measured requests
    that completed without error before the death; its window opens at the first of them and closes at
    ``failed_at_s``, when (harness.energy.clock.now()) the watchdog saw the server gone.
    ``failure`` is then the ServerError (with the server log tail), else None.
    """

    played: Any
    failure: Exception | None
    failed_at_s: float | None


def guarded_replay(server: Any, samples: Sequence[Any], workload: Any, sampling: Any, *,
                   chat_template_kwargs: Mapping[str, Any] | None, log_path: Path | None = None) -> GuardedReplay:
    """Replays ``samples`` while a watchdog checks ``server.check_alive()`` every WATCH_INTERVAL_S.

    If the server dies the replay is cancelled at once (no request goes to the dead port
    after the next check) and the completed requests are kept. Each completed request is
    also appended to ``log_path`` as one JSON line as it finishes, so even a harness crash
    loses none of them.
    """
    return asyncio.run(_watch(server, samples, workload, sampling, chat_template_kwargs, log_path))


async def _watch(server, samples, workload, sampling, chat_template_kwargs, log_path) -> GuardedReplay:
    from harness.errors import ServerError
    from harness.replay.client import replay_async

    done: list[Any] = []
    sink = log_path.open("a", encoding="utf-8") if log_path is not None else None

    def keep(record: Any) -> None:
        done.append(record)
        if sink is not None:
            sink.write(json.dumps(asdict(record)) + "\n")
            sink.flush()

    task = asyncio.create_task(replay_async(server.target, samples, workload, sampling,
                                            chat_template_kwargs=chat_template_kwargs, on_record=keep))
    try:
        while True:
            finished, _ = await asyncio.wait({task}, timeout=WATCH_INTERVAL_S)
            try:
                server.check_alive()  # also once the replay ends: requests to a dead port fail fast
                if finished and task.result().errors:
                    await _confirm_alive(server)
            except ServerError as err:
                failed_at_s = now()
                await _cancel(task)
                return _cut_short(done, err, failed_at_s)
            if finished:
                return GuardedReplay(task.result(), None, None)
    finally:
        if not task.done():  # interrupted (Ctrl-C): stop sending before the server goes
            await _cancel(task)
        if sink is not None:
            sink.close()


async def _confirm_alive(server: Any) -> None:
    """Raises the server's ServerError if it exits within DEATH_GRACE_S; returns once that time has passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEATH_GRACE_S
    while loop.time() < deadline:
        await asyncio.sleep(0.05)
        server.check_alive()


def _cut_short(done: Sequence[Any], err: Exception, failed_at_s: float) -> GuardedReplay:
    """The replay of a server that died: only requests that completed without error are kept
    (those in flight or sent after the death failed because of it, and will be replayed)."""
    from harness.replay.client import ReplayResult

    kept = tuple(r for r in done if r.error is None)
    start_s = min((r.start_s for r in kept), default=failed_at_s)
    return GuardedReplay(ReplayResult(kept, (), start_s, failed_at_s), err, failed_at_s)


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


def error_rate_failure(records: Sequence[Any], max_error_rate: float) -> RunFailed | None:
    """A RunFailed when more than ``max_error_rate`` (a share, 0..1) of ``records`` errored, else None."""
    if not records:
        return None
    errors = [r for r in records if r.error is not None]
    rate = len(errors) / len(records)
    if rate <= max_error_rate:
        return None
    example = errors[0].error
    return RunFailed(
        f"{len(errors)} of {len(records)} requests failed ({rate:.0%} > workload.max_error_rate="
        f"{max_error_rate:g}); first error: {example}. Check server.log, or raise "
        f"workload.request_timeout_s / workload.max_error_rate if the errors are expected"
    )
