"""The test suite's own process hygiene: default signals in children, whole trees killed, survivors found."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.procs import alive, leftovers, spawn

SLEEPER = [sys.executable, "-c", "import time; time.sleep(600)"]
# Starts a sleeper in a session of its own (as the harness starts vLLM), prints its pid, then
# either waits (the sleeper stays its child) or exits at once (the sleeper is orphaned).
STARTER = ("import subprocess, sys, time\n"
           f"p = subprocess.Popen({SLEEPER!r}, start_new_session=True)\n"
           "print(p.pid, flush=True)\n"
           "time.sleep(600 if sys.argv[1] == 'wait' else 0)\n")


def test_spawn_kills_a_descendant_in_another_session():
    with spawn([sys.executable, "-c", STARTER, "wait"], stdout=subprocess.PIPE, text=True) as proc:
        sleeper = int(proc.stdout.readline())
        assert alive(sleeper) and os.getpgid(sleeper) != os.getpgid(proc.pid)
    assert not alive(sleeper)


def test_an_orphan_is_handed_to_the_session_and_found_as_a_leftover():
    with spawn([sys.executable, "-c", STARTER, "exit"], stdout=subprocess.PIPE, text=True) as proc:
        sleeper = int(proc.stdout.readline())
        proc.wait()  # its parent is gone: the sleeper is an orphan in a session of its own
        assert alive(sleeper) and sleeper in {pid for pid, _ in leftovers()}
        os.kill(sleeper, signal.SIGKILL)


def test_spawned_child_sees_ctrl_c_even_when_its_parent_ignores_it():
    code = "import signal; print(signal.getsignal(signal.SIGINT))"
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under `cmd &` in a non-interactive shell
    try:
        ignored = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        with spawn([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as proc:
            handled = proc.communicate(timeout=120)[0]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "default_int_handler" not in ignored.stdout  # what a plain subprocess would inherit
    assert "default_int_handler" in handled


def test_a_process_started_without_spawn_is_found_as_a_leftover():
    """Found by descent, not by name or environment (vLLM's engines overwrite both with a title)."""
    proc = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        assert proc.pid in {pid for pid, _ in leftovers()}
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in {pid for pid, _ in leftovers()}
