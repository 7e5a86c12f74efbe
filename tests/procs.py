"""Processes the tests start: default signal handling, whole-tree cleanup, and the leftover check.

Every process a test starts (a harness run, a server, a helper script) goes through
:func:`spawn` or :func:`run_cli`, which

- start it in a new session with SIGINT and SIGTERM at their default dispositions, so a test
  that sends Ctrl-C behaves the same whether pytest ran in a terminal or in the background of a
  non-interactive shell (where POSIX starts children with SIGINT ignored), and
- kill, when the test is done with it (pass, fail or timeout), its process group and the group
  of every descendant: a harness starts its vLLM server in a session of its own, so killing the
  harness's group alone would leave the server running.

The test session makes itself a child subreaper (:func:`become_subreaper`): a process whose
parent dies is handed to pytest instead of init, so everything the suite started and that is
still alive is a descendant of pytest, whatever session or process title it gave itself
(vLLM's engine processes overwrite their environment with their title, so no environment mark
can find them). :func:`leftovers` lists them.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_PROC = Path("/proc")
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Orphans of this process's descendants are reparented to it (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process of process group `pgid` exists."""
    for proc in _PROC.iterdir():
        if proc.name.isdigit():
            stat = _stat(int(proc.name))
            if stat is not None and stat[2] == pgid and stat[0] != "Z":
                return True
    return False


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of `pid`, or None once it is gone."""
    try:
        fields = _PROC.joinpath(str(pid), "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[2])


def default_signals() -> None:
    """Runs in the child before exec: Ctrl-C and SIGTERM reach it whatever pytest inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def descendants(pid: int) -> list[int]:
    """Every descendant of `pid` (children first), read from /proc; zombies included."""
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for task in _PROC.joinpath(str(parent), "task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found.extend(children)
            queue.extend(children)
    return found


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (dead, not yet reaped)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def command_line(pid: int) -> str:
    try:
        return _PROC.joinpath(str(pid), "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_tree(pid: int) -> None:
    """SIGKILLs the process group of `pid` and of each of its descendants, then waits for them."""
    members = [pid, *descendants(pid)]
    groups = set()
    for member in members:
        try:
            groups.add(os.getpgid(member))
        except ProcessLookupError:
            continue
    own = os.getpgid(0)
    for pgid in groups - {own}:  # never the test session's own group...
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for member in members:  # ...but any member of it this tree holds
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 30
    while any(alive(m) for m in members) and time.monotonic() < deadline:
        time.sleep(0.05)


def reap_orphans() -> None:
    """Collects dead orphans handed to this (subreaper) process.

    Only zombie children in another process's group: this process's own subprocesses (in its
    group, or leading their own) are waited for by whoever started them, and taking their exit
    status here would hide it from them. Orphans are members of a server's group (vLLM's engine
    and worker once the API server is gone).
    """
    own_group = os.getpgid(0)
    for task in _PROC.joinpath(str(os.getpid()), "task").glob("*"):
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for child in children:
            stat = _stat(child)
            if stat is not None and stat[0] == "Z" and stat[2] not in (child, own_group):
                try:
                    os.waitpid(child, os.WNOHANG)
                except ChildProcessError:
                    pass


@contextmanager
def spawn(command: Sequence[str], **popen_kwargs) -> Iterator[subprocess.Popen]:
    """Popen in a new session with default signal handling; its whole tree is killed on exit.

    A descendant that was orphaned meanwhile (its parent exited first) has been handed to this
    process, so it is found and killed at the end of the session (:func:`leftovers`).
    """
    proc = subprocess.Popen(list(command), start_new_session=True, preexec_fn=default_signals, **popen_kwargs)
    try:
        yield proc
    finally:
        kill_tree(proc.pid)
        proc.wait()
        reap_orphans()
        for stream in (proc.stdout, proc.stderr, proc.stdin):
            if stream is not None:
                stream.close()


def run_cli(command: Sequence[str], *, timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(capture_output=True, text=True)``, but through :func:`spawn`.

    On a timeout the whole tree (servers included) is killed before TimeoutExpired propagates.
    """
    with spawn(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
               **popen_kwargs) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(list(command), proc.returncode, out, err)


def leftovers() -> list[tuple[int, str]]:
    """(pid, command line) of every live descendant of this process: what the suite left running."""
    return [(pid, command_line(pid)) for pid in descendants(os.getpid()) if alive(pid)]


def kill_leftovers() -> list[tuple[int, str]]:
    """Kills every live descendant of this process (with its group) and returns what it found."""
    found = leftovers()
    for pid, _ in found:
        kill_tree(pid)
    reap_orphans()
    return found


class EngineWatch(threading.Thread):
    """Notes every vLLM engine this session starts (server or offline) and the test it started under.

    vLLM names its engine-core process ``VLLM::EngineCore``; the watch samples this process's
    descendants twice a second, which no engine start can slip between (loading one takes seconds).
    It also reaps the orphans handed to the session (:func:`reap_orphans`), so that a stopped
    server's group is gone as it would be under init.
    """

    def __init__(self, period_s: float = 0.5) -> None:
        super().__init__(daemon=True, name="engine-watch")
        self.period_s = period_s
        self.started: dict[int, str] = {}  # engine pid -> PYTEST_CURRENT_TEST when first seen
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.period_s):
            self.poll()

    def poll(self) -> None:
        reap_orphans()
        for pid in descendants(os.getpid()):
            if pid not in self.started and command_line(pid).startswith("VLLM::EngineCore"):
                self.started[pid] = os.environ.get("PYTEST_CURRENT_TEST", "")

    def started_under(self, nodeid: str) -> int:
        """Engines first seen while the test `nodeid` was being set up, run or torn down."""
        return sum(current.rsplit(" ", 1)[0] == nodeid for current in self.started.values())

    def stop(self) -> None:
        self._halt.set()
        self.join()
