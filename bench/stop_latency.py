"""How fast a run stops: Ctrl-C, SIGTERM, or its server killed, until the harness has exited.

    .venv/bin/python -m bench.stop_latency [--rounds 3]

The tests check that each of these stops the run cleanly, in one line, with nothing left
running; how long it takes depends on the machine, so the figure is measured here instead.
Each round runs `python -m harness +variant=bf16` on the tiny model with every answer forced
to 120 tokens (so the suite is still running when the event comes), waits until two requests
are on disk, then either signals the harness's process group or SIGKILLs the server's. The
time is from the event to the harness's exit (server stop included). Writes
bench/records/stop_latency.txt.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "bench" / "records" / "stop_latency.txt"


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background shell would start us with SIGINT ignored
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _server_pgid(config: Path) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(config).encode() in (proc / "cmdline").read_bytes().split(b"\0"):
                return os.getpgid(int(proc.name))
        except (OSError, ProcessLookupError):
            continue
    return None


def one_round(event: str, root: Path) -> float:
    """Seconds from `event` (SIGINT, SIGTERM or server-kill) to the harness's exit."""
    results = root / event
    cmd = [sys.executable, "-m", "harness", "+variant=bf16", "workload.limit=24", "energy.idle_s=1",
           "sampling.ignore_eos=true", "sampling.max_tokens=120", f"results_dir={results}",
           f"cache_dir={root / 'cache'}", f"hydra.run.dir={results / 'hydra'}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, preexec_fn=_default_signals)
    try:
        while proc.poll() is None:
            runs = list((results / "runs").glob("*")) if (results / "runs").exists() else []
            log = runs[0] / "requests.jsonl" if runs else None
            if log and log.exists() and len(log.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
        if event == "server-kill":
            os.killpg(_server_pgid(runs[0] / "vllm_config.yaml"), signal.SIGKILL)
        else:
            os.killpg(proc.pid, getattr(signal, event))
        sent = time.monotonic()
        proc.wait(timeout=600)
        return time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"SIGINT": [], "SIGTERM": [], "server-kill": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for event in times:  # interleaved, so drift of a shared machine hits every kind alike
                times[event].append(one_round(event, Path(tmp) / f"r{round_}"))
    lines = [f"stop latency, {args.rounds} rounds, {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}"]
    for event, seconds in times.items():
        lines.append(f"{event:12s} median {statistics.median(seconds):5.1f} s  "
                     f"(min {min(seconds):.1f}, max {max(seconds):.1f})")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RECORD.write_text(text)


if __name__ == "__main__":
    main()
