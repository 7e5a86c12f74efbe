"""Trials: each variant replays the whole suite N times, interleaved with its baseline's.

A trial is one replay of the measured suite from the same starting state, as the judges run
it once on a fresh server. ``trial_server=fresh`` starts a new server for every trial;
``trial_server=shared`` keeps one server per variant up for the session and, before every
trial, empties its prefix, multimodal and encoder caches, then checks from vLLM's own
counters that the trial hit the caches no more than the first one did (flagged when it did).
Each server is warmed up with samples outside the suite, then measured idle, before its
first trial. Trials alternate between baseline and variant (``trial_order``): "abba" runs
B V V B B V ... so that a linear drift over the session falls on both sides alike;
"alternate" runs B V B V ...

A variant served by llama.cpp (engine llama_cpp) runs every trial on a fresh llama-server,
whatever the mode of its vLLM baseline: llama-server has no route that empties its prompt cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from harness.energy import make_meter, steady_window
from harness.energy.attribution import per_request_energy_j
from harness.energy.base import MeterError, Window
from harness.energy.clock import now
from harness.energy.nvml import gpu_snapshot
from harness.energy.steady import FLAG_SHORT_STEADY, saturated_window, steady_min_s
from harness.replay.client import ReplayResult, replay
from harness.replay.tokens import tokens_between
from harness.replay.watchdog import guarded_replay
from harness.serve.cache import DEV_MODE_ENV, CacheCounters, read_metrics, reset_caches, warmer_than_first
from harness.serve.llama_cpp import LlamaServer
from harness.serve.vllm import VllmServer

SERVED_NAME = "model"
ORDERS = ("abba", "alternate")
SERVERS = ("shared", "fresh")
FLAG_WARM_CACHE = "cache_warmer_than_first_trial"  # a trial hit vLLM's caches more than a cold pass


@dataclass(frozen=True)
class Trial:
    """One replay of the suite: its requests, its energy windows and what it hit in the caches.

    ``suite`` covers the first measured request's send to the last one's end; ``steady`` the
    part under full load (harness.energy.steady); ``idle`` the idle window of the server it
    ran on (measured after warm-up, before the first trial); ``cache`` the prefix and
    multimodal cache lookups and hits during the trial (None when not read).
    """

    index: int  # 1-based, per variant
    position: int  # 0-based place in the session's order (both variants)
    played: ReplayResult
    suite: Window | None
    steady: Window | None
    idle: Window | None
    cache: CacheCounters | None
    failure: BaseException | None = None
    steady_tokens: int | None = None  # output tokens generated inside the steady window (server usage)
    steady_note: str | None = None  # why there is no steady window, when there is none


@dataclass
class Arm:
    """One variant's side of a session: what it serves and everything measured so far."""

    name: str
    run_cfg: Any
    check: Any  # PlatformCheck
    root: Path  # its run directory
    samples: tuple[Any, ...]  # what each trial replays (a resume: only the missing ones)
    warmup: tuple[Any, ...]  # warm-up samples, outside the suite
    suite: tuple[Any, ...] = ()  # the whole measured suite, for scoring
    reused: tuple[Any, ...] = ()  # a resumed run's records taken from the run it resumes
    resumed_from: str | None = None
    started: datetime | None = None
    model_dir: Path | None = None
    trials: list[Trial] = field(default_factory=list)
    lm_eval: Any = None
    per_request_j: dict[str, float] = field(default_factory=dict)
    gpu: dict[str, Any] | None = None
    source: str | None = None
    meter_kind: str | None = None
    cache_config: dict[str, str] = field(default_factory=dict)
    engine: dict[str, Any] = field(default_factory=dict)  # what its server reported using (llama.cpp: read back)
    live: dict[str, Any] = field(default_factory=dict)  # server, meter, idle window while serving

    @property
    def failure(self) -> BaseException | None:
        return next((t.failure for t in self.trials if t.failure is not None), None)


def server_mode(trial_server: str, device: str, engine: str = "vllm") -> str:
    """``trial_server`` resolved: "auto" is shared on a CPU and fresh on a GPU; always fresh for llama.cpp.

    Shared mode relies on vLLM's cache-reset routes and counters; llama-server has no route that
    empties its prompt cache, and starts in well under a second on the tiny model, so each of its
    trials gets a fresh server.
    """
    if trial_server not in (*SERVERS, "auto"):
        raise ValueError(f"trial_server must be auto or one of {SERVERS}, got {trial_server!r}")
    if engine == "llama_cpp":
        if trial_server == "shared":
            raise ValueError("trial_server=shared empties vLLM's caches between trials, and llama-server has no "
                             "route that empties its prompt cache: set trial_server=auto or fresh for engine llama_cpp")
        return "fresh"
    if trial_server != "auto":
        return trial_server
    return "fresh" if device == "cuda" else "shared"


def schedule(n: int, order: str, with_baseline: bool) -> list[tuple[int, int]]:
    """(arm, trial) pairs in running order; arm 0 is the baseline when there is one.

    >>> schedule(3, "abba", True)
    [(0, 1), (1, 1), (1, 2), (0, 2), (0, 3), (1, 3)]
    """
    if order not in ORDERS:
        raise ValueError(f"trial_order must be one of {ORDERS}, got {order!r}")
    if not with_baseline:
        return [(0, k) for k in range(1, n + 1)]
    pairs = []
    for k in range(1, n + 1):
        first_baseline = order == "alternate" or k % 2 == 1
        pairs += [(0, k), (1, k)] if first_baseline else [(1, k), (0, k)]
    return pairs


def run_session(arms: list[Arm], trials: int, order: str, server_mode: str, say) -> None:
    """Runs every arm's trials in ``schedule`` order, filling each Arm; stops at the first failure.

    In shared mode the servers of all arms start first and stay up; in fresh mode each trial
    starts and stops its own. An arm served by llama.cpp is always fresh (``server_mode``).
    lm-eval (quality.engine=lm_eval) runs once per arm, after its trials, on a server of its
    own in fresh mode.
    """
    fresh = [server_mode == "fresh" or arm.run_cfg.engine.name == "llama_cpp" for arm in arms]
    with contextlib.ExitStack() as session:
        for arm, own_servers in zip(arms, fresh):
            if not own_servers:
                session.enter_context(_serving(arm, say, reset=True, trace="power_trace.csv"))
        for position, (arm_index, k) in enumerate(schedule(trials, order, with_baseline=len(arms) > 1)):
            arm = arms[arm_index]
            trace = f"power_trace.trial{k}.csv" if k > 1 else "power_trace.csv"
            with _serving(arm, say, reset=False, trace=trace) if fresh[arm_index] else contextlib.nullcontext():
                say(f"trial {k}/{trials} of {arm.name}")
                _trial(arm, k, position)
            if arm.failure is not None:
                return
        for arm, own_servers in zip(arms, fresh):  # lm-eval, when selected: on the live server, or one of its own
            if not own_servers:
                _after_trials(arm)
            elif arm.run_cfg.quality.engine != "harness":
                with _serving(arm, say, reset=False, trace="power_trace.lm_eval.csv"):
                    _after_trials(arm)


@contextlib.contextmanager
def _serving(arm: Arm, say, reset: bool, trace: str) -> Iterator[None]:
    """Starts the arm's server and meter, warms the server up, measures idle; stops both after.

    ``reset``: start the server with the cache-reset routes and empty its caches after the
    warm-up (shared mode). ``trace``: the file in the run directory the power trace goes to.
    """
    rc = arm.run_cfg
    say(f"starting the {arm.name} server ({rc.engine.name})")
    with _server(arm, reset) as server:
        arm.engine = arm.engine or engine_record(server)
        with make_meter(rc.energy.meter, **meter_settings(rc, server)) as meter:
            arm.source, arm.meter_kind = meter.source, meter.kind
            arm.gpu = arm.gpu or ({"start": _gpu_state(meter)} if meter.kind == "nvml" else None)
            if arm.warmup:
                replay(server.target, arm.warmup, rc.workload, rc.sampling, show_progress=False,
                       chat_template_kwargs=arm.check.serve.chat_template_kwargs)
            if reset:
                reset_caches(server.target)
            if isinstance(server, VllmServer):
                with contextlib.suppress(Exception):  # informative only: a vLLM without the gauge
                    arm.cache_config = read_metrics(server.target)[1]
            idle_t0 = now()
            time.sleep(idle_seconds(rc.energy.idle_s, arm.check.platform.device))  # loaded, warm, no request
            idle = meter.energy_between(idle_t0, now(), name="idle")
            arm.live = {"server": server, "meter": meter, "idle": idle, "reset": reset, "first_cache": None}
            try:
                yield
            finally:
                if arm.gpu is not None:
                    with contextlib.suppress(Exception):
                        arm.gpu["end"] = _gpu_state(meter)
                    seen = arm.gpu.setdefault("warnings", [])  # other processes on the GPU, over all trials
                    seen += [w for w in meter.warnings() if w not in seen]
                with contextlib.suppress(MeterError, OSError, ValueError):
                    meter.write_trace(arm.root / trace)
                arm.live = {}


def _server(arm: Arm, reset: bool) -> VllmServer | LlamaServer:
    """The arm's server, by engine; ``reset``: vLLM with its cache-reset routes (shared mode)."""
    rc = arm.run_cfg
    if rc.engine.name == "llama_cpp":
        return LlamaServer(arm.model_dir, arm.check.serve, rc.engine, arm.root, served_model_name=SERVED_NAME,
                           platform=arm.check.platform, probe=not arm.engine)  # the settings, read once per arm
    return VllmServer(arm.model_dir, arm.check.serve, arm.root, served_model_name=SERVED_NAME,
                      dtype=rc.model.dtype, platform=arm.check.platform, env=DEV_MODE_ENV if reset else {})


def engine_record(server: VllmServer | LlamaServer) -> dict[str, Any]:
    """result.json's serve.engine: which engine served, and for llama.cpp every setting read back from it."""
    if isinstance(server, LlamaServer):
        return dict(server.effective)
    return {"name": "vllm"}


# The idle window's length when energy.idle_s is null: long enough on a GPU for its power to
# settle after warm-up (and for a ~1 s averaged power reading to follow); short on a CPU.
IDLE_GPU_S, IDLE_CPU_S = 30.0, 5.0


def idle_seconds(configured: float | None, device: str) -> float:
    """energy.idle_s, or its default for the device when null."""
    if configured is not None:
        return configured
    return IDLE_GPU_S if device == "cuda" else IDLE_CPU_S


def _trial(arm: Arm, k: int, position: int) -> None:
    """One trial on the arm's live server (reset first in shared mode), appended to ``arm.trials``.

    An interruption (Ctrl-C, SIGTERM, a crash) mid-replay still appends the trial, with a
    "suite_partial" window up to that moment, before it propagates.
    """
    server, meter, live = arm.live["server"], arm.live["meter"], arm.live
    rc = arm.run_cfg
    if live["reset"] and k > 1:
        reset_caches(server.target)
    before = _counters(server)
    log = arm.root / ("requests.jsonl" if k == 1 else f"requests.trial{k}.jsonl")
    t0 = now()
    try:
        guarded = guarded_replay(server, arm.samples, rc.workload, rc.sampling, log_path=log,
                                 chat_template_kwargs=arm.check.serve.chat_template_kwargs)
    except BaseException:
        with contextlib.suppress(MeterError, ValueError):
            t1 = now()
            partial = meter.energy_between(t0, t1, name="suite_partial")
            arm.trials.append(Trial(k, position, ReplayResult((), (), t0, t1), partial, None, live["idle"], None,
                                    RuntimeError("interrupted")))
        raise
    played = guarded.played
    if guarded.failure is None:
        server.check_alive()
    name = "suite" if guarded.failure is None else "suite_partial"
    suite = meter.energy_between(played.start_s, played.end_s, name=name) if played.records else None
    cache = None
    if guarded.failure is None and before is not None:
        after = _counters(server)
        cache = after.since(before) if after is not None else None
    steady, steady_tokens, steady_note = None, None, None
    if guarded.failure is None and played.records:
        target, min_s = _target_in_flight(rc), steady_min_s(arm.check.platform.device)
        span = steady_span(rc.workload.mode, played, target, min_s)
        steady = _steady(meter, span, min_s) if span else None
        steady_tokens = tokens_between(played.records, *span) if span else None
        if span is None:
            steady_note = (f"no steady window: the arrivals never kept {target} requests in flight for {min_s:g} s"
                           if rc.workload.mode == "poisson" else
                           f"no steady window: the suite never filled a batch of {target} requests")
    if k == 1 and played.records:
        arm.per_request_j = per_request_energy_j(meter, played.records)  # a breakdown, never a ratio's basis
    if suite is not None and cache is not None:
        first = live["first_cache"] = live["first_cache"] or cache
        if k > 1 and warmer_than_first(cache, first):
            suite = dataclasses.replace(suite, flags=(*suite.flags, FLAG_WARM_CACHE))
    arm.trials.append(Trial(k, position, played, suite, steady, live["idle"], cache, guarded.failure, steady_tokens,
                            steady_note))


def _after_trials(arm: Arm) -> None:
    """lm-eval's tasks on the arm's server, in their own window (quality.engine=lm_eval only)."""
    from harness.score.lmeval.engine import run_engine

    server, meter = arm.live["server"], arm.live["meter"]
    arm.lm_eval = run_engine(arm.run_cfg, server, meter, arm.root, arm.check.serve.chat_template_kwargs)


def _counters(server) -> CacheCounters | None:
    if not isinstance(server, VllmServer):  # vLLM's /metrics counters; llama-server's trials are cold by design
        return None
    try:
        return read_metrics(server.target)[0]
    except Exception:  # noqa: BLE001 - /metrics missing: the trial runs, its cache use is unknown
        return None


def _target_in_flight(rc) -> int:
    """Requests meant to be in flight: 1 sequential; else the lower of concurrency and max_num_seqs."""
    if rc.workload.mode == "sequential":
        return 1
    cap = rc.serve.max_num_seqs
    return min(rc.workload.concurrency, cap) if cap else rc.workload.concurrency


def steady_span(mode: str, played: ReplayResult, target: int, min_s: float) -> tuple[float, float] | None:
    """The steady-state span of one trial (see harness.energy.steady for the definitions).

    Sequential replay is steady throughout: the whole suite window. Concurrent replay: ML.ENERGY's
    saturated window, from when ``target`` requests have their first token to when the last
    ``target`` remain. Poisson arrivals saturate the server only by chance: the longest span with
    ``target`` requests in flight, and none unless it lasts ``min_s``.
    """
    ok = [r for r in played.records if r.error is None]
    if mode == "sequential":
        return (played.start_s, played.end_s) if ok else None
    if mode == "poisson":
        return steady_window([(r.start_s, r.end_s) for r in ok], target, min_duration_s=min_s)
    firsts = [r.start_s + r.ttft_ms / 1e3 for r in ok if r.ttft_ms is not None]
    return saturated_window(firsts, [r.end_s for r in ok], target)


def _steady(meter, span: tuple[float, float], min_s: float) -> Window:
    """The steady window over ``span``, flagged (not dropped) when shorter than ``min_s``."""
    window = meter.energy_between(*span, name="steady")
    if window.duration_s < min_s:
        window = dataclasses.replace(window, flags=(*window.flags, FLAG_SHORT_STEADY))
    return window


def _gpu_state(meter) -> list[dict] | None:
    """Name, driver, power limit, clocks and temperature of the metered GPUs."""
    return [gpu_snapshot(i) for i in meter.indices]


def meter_settings(run_cfg, server) -> dict[str, Any]:
    """Settings for make_meter: NVML reads the server's GPUs by UUID and flags processes outside its
    process group there; the modeled meter watches the server's process tree."""
    e = run_cfg.energy
    # The config gives package power idle and with every core busy; the model wants watts
    # per busy core-second on top of idle.
    per_core_w = (e.cpu_active_w - e.cpu_idle_w) / (os.cpu_count() or 1)
    return {"hz": e.sample_hz, "pid": server.pgid, "gpus": server.gpus, "busy_core_w": per_core_w,
            "idle_w": e.cpu_idle_w}
