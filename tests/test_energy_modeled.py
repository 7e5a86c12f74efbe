"""Modeled energy of a real process tree that burns about one CPU-second."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest

from harness.energy import MeterError
from harness.energy.modeled import ModeledMeter

BUSY_CORE_W = 10.0
IDLE_W = 2.0

# The busy work runs in a grandchild, so the meter must follow the tree below the root.
_SPIN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0:\n    pass\n"
_ROOT = (
    "import subprocess, sys\n"
    f"subprocess.run([sys.executable, '-c', {_SPIN!r}], check=True)\n"
    "print('done', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_modeled_energy_follows_the_cpu_time_of_the_tree() -> None:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    root = subprocess.Popen([sys.executable, "-c", _ROOT], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        with ModeledMeter(pid=root.pid, busy_core_w=BUSY_CORE_W, idle_w=IDLE_W) as meter:
            meter.begin_window("spin")
            assert root.stdout.readline().strip() == "done"
            window = meter.end_window("spin")
    finally:
        root.communicate(timeout=30)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert cpu_s >= 1.0
    expected_j = IDLE_W * window.duration_s + BUSY_CORE_W * cpu_s
    # Slack: start-up CPU before the first sample, ticks, the last <=100 ms of the grandchild.
    assert window.energy_j == pytest.approx(expected_j, abs=BUSY_CORE_W * 0.2)
    assert window.source == "modeled"
    assert window.device == f"cpu-tree:{root.pid}"
    assert window.flags == ()


def test_idle_process_costs_only_idle_power() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)  # let its start-up CPU pass
        with ModeledMeter(pid=sleeper.pid, busy_core_w=BUSY_CORE_W, idle_w=IDLE_W) as meter:
            meter.begin_window("idle")
            time.sleep(0.5)
            window = meter.end_window("idle")
    finally:
        sleeper.kill()
        sleeper.wait()
    assert window.energy_j == pytest.approx(IDLE_W * window.duration_s, abs=BUSY_CORE_W * 0.02)


def test_missing_process_is_explained() -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(MeterError, match="start the server first"):
        ModeledMeter(pid=gone.pid)
